import csv
import math

import pytest
import torch

from mosmos_components.evaluation import case_scores, format_table, wilcoxon_test, write_reports


def _onehot(label, k):
    return torch.nn.functional.one_hot(label.long(), k).permute(3, 0, 1, 2)


def test_dice_and_hd95_in_mm_with_empty_mask_rules():
    gt = torch.zeros(20, 20, 10, dtype=torch.long)
    gt[2:8, 2:8, 2:6] = 1  # class 1 present
    gt[12:16, 12:16, 2:6] = 2  # class 2 present, will be missed
    pred = torch.zeros_like(gt)
    pred[4:10, 2:8, 2:6] = 1  # class 1 shifted by 2 voxels along x
    pred[0:2, 0:2, 0:2] = 3  # class 3 predicted but absent from the ground truth
    rows = case_scores(_onehot(pred, 4), _onehot(gt, 4), spacing=(3.0, 1.0, 1.0), channels=[1, 2, 3],
                       names=["a", "b", "c"])
    a, b, c = rows
    assert a["dice"] == pytest.approx(2 * 4 * 6 * 4 / (2 * 6 * 6 * 4))
    assert a["hd95"] == pytest.approx(6.0)  # 2 voxels x 3 mm
    assert b["dice"] == 0.0 and b["hd95"] == pytest.approx(math.sqrt(60**2 + 20**2 + 10**2))  # the diagonal, mm
    assert math.isnan(c["dice"]) and math.isnan(c["hd95"])  # absent from the ground truth: excluded
    perfect = case_scores(_onehot(gt, 4), _onehot(gt, 4), (1, 1, 1), [1, 2], ["a", "b"])
    assert all(r["dice"] == 1.0 and r["hd95"] == 0.0 for r in perfect)


def test_summary_excludes_absent_classes(tmp_path):
    rows = [{"case": "x", "class": "a", "dice": 0.5, "hd95": 2.0}, {"case": "y", "class": "a", "dice": 1.0, "hd95": 0.0},
            {"case": "x", "class": "b", "dice": float("nan"), "hd95": float("nan")},
            {"case": "y", "class": "b", "dice": 0.0, "hd95": 10.0}]
    s = write_reports(rows, ["a", "b"], tmp_path)
    assert s[0]["dice"] == pytest.approx(0.75) and s[0]["n"] == 2
    assert s[1]["dice"] == 0.0 and s[1]["n"] == 1
    assert s[2]["class"] == "mean" and s[2]["dice"] == pytest.approx(0.375)
    assert (tmp_path / "per_case.csv").is_file() and (tmp_path / "summary.csv").is_file()
    assert "75.00" in format_table(s)


def _per_case(path, values):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case", "class", "dice", "hd95"])
        w.writeheader()
        for case, v in values.items():
            w.writerow({"case": case, "class": "a", "dice": v, "hd95": 1.0})
            w.writerow({"case": case, "class": "b", "dice": "nan", "hd95": "nan"})


def test_wilcoxon_pairs_cases_by_name(tmp_path):
    better = {f"c{i}": 0.8 + 0.01 * i for i in range(10)}
    worse = {f"c{i}": 0.7 + 0.012 * i for i in reversed(range(10))}
    _per_case(tmp_path / "a.csv", better)
    _per_case(tmp_path / "b.csv", worse)
    res = wilcoxon_test(tmp_path / "a.csv", tmp_path / "b.csv")
    assert res["n"] == 10 and res["mean_a"] > res["mean_b"] and res["p"] < 0.01
    same = wilcoxon_test(tmp_path / "a.csv", tmp_path / "a.csv")
    assert same["p"] == 1.0
    _per_case(tmp_path / "one.csv", {"c0": 0.5})
    with pytest.raises(ValueError, match="at least 2 cases"):
        wilcoxon_test(tmp_path / "a.csv", tmp_path / "one.csv")
