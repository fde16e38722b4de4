import csv
import math

import pytest
import torch

from mosmos_components.evaluation import case_scores, format_table, wilcoxon_paired, wilcoxon_test, write_reports


def _onehot(label, k):
    return torch.nn.functional.one_hot(label.long(), k).permute(3, 0, 1, 2)


def test_dice_and_hd95_in_mm_with_empty_mask_rules():
    gt = torch.zeros(20, 20, 10, dtype=torch.long)
    gt[2:8, 2:8, 2:6] = 1  # class 1 present
    gt[12:16, 12:16, 2:6] = 2  # class 2 present, will be missed
    pred = torch.zeros_like(gt)
    pred[4:10, 2:8, 2:6] = 1  # class 1 shifted by 2 voxels along x
    pred[0:2, 0:2, 0:2] = 3  # class 3 predicted but absent from the ground truth
    rows = case_scores(
        _onehot(pred, 4), _onehot(gt, 4), spacing=(3.0, 1.0, 1.0), channels=[1, 2, 3], names=["a", "b", "c"]
    )
    a, b, c = rows
    assert a["dice"] == pytest.approx(2 * 4 * 6 * 4 / (2 * 6 * 6 * 4))
    assert a["hd95"] == pytest.approx(6.0)  # 2 voxels x 3 mm
    assert b["dice"] == 0.0 and b["hd95"] == pytest.approx(math.sqrt(60**2 + 20**2 + 10**2))  # the diagonal, mm
    assert math.isnan(c["dice"]) and math.isnan(c["hd95"])  # absent from the ground truth: excluded
    perfect = case_scores(_onehot(gt, 4), _onehot(gt, 4), (1, 1, 1), [1, 2], ["a", "b"])
    assert all(r["dice"] == 1.0 and r["hd95"] == 0.0 for r in perfect)


def test_summary_excludes_absent_classes(tmp_path):
    rows = [
        {"case": "x", "class": "a", "dice": 0.5, "hd95": 2.0},
        {"case": "y", "class": "a", "dice": 1.0, "hd95": 0.0},
        {"case": "x", "class": "b", "dice": float("nan"), "hd95": float("nan")},
        {"case": "y", "class": "b", "dice": 0.0, "hd95": 10.0},
    ]
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


def test_wilcoxon_per_case_option_pairs_cases_by_name(tmp_path):
    better = {f"c{i}": 0.8 + 0.01 * i for i in range(10)}
    worse = {f"c{i}": 0.7 + 0.012 * i for i in reversed(range(10))}
    _per_case(tmp_path / "a.csv", better)
    _per_case(tmp_path / "b.csv", worse)
    res = wilcoxon_test(tmp_path / "a.csv", tmp_path / "b.csv", unit="case")
    assert res["n"] == 10 and res["mean_a"] > res["mean_b"] and res["p"] < 0.01 and res["unit"] == "case"
    same = wilcoxon_test(tmp_path / "a.csv", tmp_path / "a.csv", unit="case")
    assert same["p"] == 1.0
    _per_case(tmp_path / "one.csv", {"c0": 0.5})
    with pytest.raises(ValueError, match="at least 2 cases"):
        wilcoxon_test(tmp_path / "a.csv", tmp_path / "one.csv", unit="case")
    # per class (the default) there is one scored class here ("b" is all NaN): too few pairs
    with pytest.raises(ValueError, match="at least 2 classes"):
        wilcoxon_test(tmp_path / "a.csv", tmp_path / "b.csv")


def test_wilcoxon_default_pairs_classes_on_their_test_set_means(tmp_path):
    import numpy as np
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    classes = [f"organ{k}" for k in range(8)]
    for name, shift in (("a", 0.05), ("b", 0.0)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["case", "class", "dice", "hd95"])
            w.writeheader()
            for case in range(5):
                for k, c in enumerate(classes):
                    w.writerow(
                        {
                            "case": f"c{case}",
                            "class": c,
                            "dice": 0.5 + 0.04 * k + shift + rng.normal(0, 0.03),
                            "hd95": 3.0,
                        }
                    )
    res = wilcoxon_test(tmp_path / "a.csv", tmp_path / "b.csv")
    assert res["unit"] == "class" and res["n"] == 8 and res["pairs"] == classes

    def class_means(path):
        with open(path) as fh:
            rows = list(csv.DictReader(fh))
        return [np.mean([float(r["dice"]) for r in rows if r["class"] == c]) for c in classes]

    assert res["p"] == pytest.approx(wilcoxon(class_means(tmp_path / "a.csv"), class_means(tmp_path / "b.csv")).pvalue)


# Tables 2-3 of the paper, typed in: per-class test-set means of MOSMOS and PubMedCLIP+DenseCLIP
_BTCV_UNET = (
    [94.36, 93.56, 93.81, 73.01, 72.24, 96.11, 81.85, 89.04, 83.72, 60.74, 76.16, 64.95, 61.68],
    [93.09, 90.04, 90.89, 62.67, 69.94, 95.48, 81.25, 90.77, 79.95, 67.27, 69.35, 63.01, 50.47],
)
_BTCV_UNETR = (
    [93.21, 93.68, 93.39, 72.71, 72.96, 96.46, 80.46, 88.84, 82.83, 70.39, 75.00, 66.90, 57.87],
    [93.19, 93.74, 93.28, 61.32, 71.39, 96.50, 79.28, 88.97, 82.61, 69.56, 74.41, 66.52, 58.97],
)
_MMWHS_UNET_DICE = (
    [83.74, 84.99, 93.78, 86.51, 90.89, 74.87, 70.24],
    [81.39, 84.95, 93.48, 85.80, 88.65, 69.13, 65.10],
)
_MMWHS_UNET_HD95 = ([2.00, 3.46, 1.70, 6.76, 3.25, 13.22, 6.81], [2.35, 3.24, 2.16, 9.32, 4.01, 15.59, 10.38])
_MMWHS_UNETR_DICE = (
    [84.65, 87.62, 94.02, 88.61, 93.22, 84.08, 79.49],
    [82.69, 79.35, 92.86, 82.60, 88.75, 79.88, 69.36],
)
_MMWHS_UNETR_HD95 = ([1.77, 3.48, 1.85, 4.62, 2.30, 4.60, 5.60], [2.24, 5.11, 2.58, 8.05, 10.47, 7.69, 8.90])


@pytest.mark.parametrize(
    "rows, printed",
    [
        (_BTCV_UNET, "2.7e-2"),
        (_BTCV_UNETR, "8.0e-2"),
        (_MMWHS_UNET_DICE, "1.6e-2"),
        (_MMWHS_UNET_HD95, "3.1e-2"),
        (_MMWHS_UNETR_DICE, "1.6e-2"),
        (_MMWHS_UNETR_HD95, "1.6e-2"),
    ],
)
def test_per_class_wilcoxon_reproduces_the_papers_p_values(tmp_path, rows, printed):
    mosmos, other = rows
    assert f"{wilcoxon_paired(mosmos, other)['p']:.1e}".replace("e-02", "e-2") == printed
    # the same through the per_case.csv reader: one case, one row per class
    for name, values in (("a", mosmos), ("b", other)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["case", "class", "dice", "hd95"])
            w.writeheader()
            w.writerows({"case": "test", "class": f"c{k:02d}", "dice": v, "hd95": v} for k, v in enumerate(values))
    assert f"{wilcoxon_test(tmp_path / 'a.csv', tmp_path / 'b.csv')['p']:.1e}".replace("e-02", "e-2") == printed


@pytest.mark.parametrize("bundle", ["acdc_seg", "brats_seg"])
def test_bundles_keep_largest_option_removes_fragments_in_validation_and_evaluation(repo, bundle):
    """``--keep_largest true`` on a bundle's train/evaluate run: only the largest piece of each class channel is
    scored (softmax bundles: background left alone; sigmoid ones: every region); off by default."""
    from monai.bundle import ConfigParser

    files = [str(repo / "bundles" / bundle / "configs" / f) for f in ("train.json", "evaluate.json")]
    k = 4 if bundle == "acdc_seg" else 3
    logits = torch.full((k, 12, 12, 4), -5.0)
    organ, fragment = (slice(1, 6), slice(1, 6), slice(0, 3)), (slice(9, 11), slice(9, 11), slice(3, 4))
    for c in range(1, k) if bundle == "acdc_seg" else range(k):
        logits[c][organ] = logits[c][fragment] = 5.0 + c  # the highest channel wins the argmax there
    if bundle == "acdc_seg":
        logits[0] = 0.0
    top = k - 1
    out = {}
    for keep in (False, True):
        parser = ConfigParser()
        parser.read_config(files)
        parser["keep_largest"] = keep
        post = parser.get_parsed_content("validate#postprocessing")
        out[keep] = post({"pred": logits.clone(), "label": torch.zeros(1, 12, 12, 4)})["pred"]
    assert out[False][top][10, 10, 3] == 1 and out[False][top][2, 2, 1] == 1
    assert out[True][top][10, 10, 3] == 0 and out[True][top][2, 2, 1] == 1
    if bundle == "acdc_seg":  # the background channel keeps every voxel it had
        assert torch.equal(out[True][0], out[False][0])
    parser = ConfigParser()
    parser.read_config(files)
    parser["keep_largest"] = "yes"
    with pytest.raises(RuntimeError) as err:  # MONAI's config error, the cause named under it
        parser.get_parsed_content("validate#postprocessing")
    assert "keep_largest must be true or false, got 'yes'" in str(err.value.__cause__)
