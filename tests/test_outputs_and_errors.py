"""Nothing half-done counts as done, nothing written is replaced unasked, and a wrong request is named before
any work: interrupted outputs, misspelt options, edited sidecars, a finished run without its model, names that
would share a file, a report in another language."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_segment import cube_volume, threshold_model

from mosmos_components.inference import segment


def _scan(tmp_path):
    nib.save(nib.Nifti1Image(cube_volume(), np.diag([2.0, 2.0, 3.0, 1])), tmp_path / "a.nii.gz")
    return tmp_path / "a.nii.gz"


def test_an_interrupted_scan_is_completed_not_skipped(tmp_path):
    scan, out = _scan(tmp_path), tmp_path / "out"
    asked = dict(split=True, statistics=True, preview=True, device="cpu", progress=False)
    first = segment(scan, out, threshold_model(), **asked)
    assert len(first["done"][0]["outputs"]) == 4  # bright.nii.gz, statistics .json and .csv, preview
    kept = out / "a" / "bright.nii.gz"
    before = kept.stat().st_mtime_ns
    (out / "a_preview.png").unlink()  # as if the run had been killed before the preview
    (out / "a_statistics.csv").unlink()
    again = segment(scan, out, threshold_model(), **asked)
    assert sorted(p.rsplit("/", 1)[-1] for p in again["done"][0]["outputs"]) == ["a_preview.png", "a_statistics.csv"]
    assert (out / "a_preview.png").is_file() and kept.stat().st_mtime_ns == before  # the rest is not rewritten
    assert segment(scan, out, threshold_model(), **asked)["skipped"]  # now done: skipped
    # asking for more than was written is not "done" either
    more = segment(scan, tmp_path / "out2", threshold_model(), device="cpu", progress=False)
    assert more["done"]
    assert segment(scan, tmp_path / "out2", threshold_model(), device="cpu", progress=False, statistics=True)["done"]


def test_an_empty_roi_subset_is_an_error():
    with pytest.raises(ValueError, match="names no structure"):
        segment("unused.nii.gz", "unused", threshold_model(), roi_subset=",")


def test_split_masks_of_names_that_share_a_slug_get_distinct_files(tmp_path):
    from mosmos_components.inference import file_names, planned_outputs

    names = ["left kidney", "left-kidney", "肝臓", "x" * 300]
    stems = file_names(names)
    assert len(set(stems)) == 4 and all(0 < len(s) <= 69 for s in stems)
    files = planned_outputs("a", tmp_path, names, True, False, False, "nifti")
    assert len({f.name for f in files}) == 4


def test_a_misspelt_option_is_refused_before_any_work(tmp_path):
    from mosmos_components.cli import check_arguments

    with pytest.raises(
        SystemExit, match=r"unknown option --statistcs \(did you mean --statistics\?\); nothing was run"
    ):
        check_arguments(["segment", "scan.nii.gz", str(tmp_path / "out"), "--model", "m", "--statistcs"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match=r"no command 'segmnet' \(did you mean segment\?\)"):
        check_arguments(["segmnet", "scan.nii.gz"])
    for fine in (
        ["segment", "a", "b", "--model=m", "--noamp", "--split", "--roi-subset", "liver"],
        ["export-onnx", "m", "o.onnx", "--opset", "17"],
        ["locate", "a", "liver", "--model", "p"],
        ["segment", "--", "--help"],
        [],
    ):
        check_arguments(fine)


def test_a_removed_option_name_is_refused_naming_its_replacement(tmp_path):
    from mosmos_components.cli import check_arguments

    for argv, new in (
        (["locate", "a", "liver", "--pretrained", "p"], "--model"),
        (["segment", "scan.nii.gz", "--output", str(tmp_path / "out"), "--model", "m"], "--output_dir"),
        (["demo-data", "--out_dir=d"], "--output_dir"),
    ):
        with pytest.raises(SystemExit, match=rf"was renamed {new}.*removed in 0\.8\.0\); nothing was run"):
            check_arguments(argv)
    assert not (tmp_path / "out").exists()


def test_a_bundle_refuses_the_former_ckpt_path_instead_of_running_its_default_model(tmp_path):
    from monai.bundle import ConfigParser

    from mosmos_components.errors import removed_name

    assert removed_name(None, "ckpt_path", "model_path") is None
    bundles = Path(__file__).resolve().parents[1] / "bundles"
    for bundle, config in (
        ("btcv_seg", "inference.json"),
        ("acdc_seg", "evaluate.json"),
        ("mosmos_pretrain", "evaluate.json"),
    ):
        configs = bundles / bundle / "configs"
        parser = ConfigParser()
        parser.read_config([str(configs / "train.json"), str(configs / config)])
        parser.update({"bundle_root": str(configs.parent), "ckpt_dir": str(tmp_path)})
        assert parser.get_parsed_content("model_path") == f"{tmp_path}/model.pt"
        parser.update({"ckpt_path": str(tmp_path / "mine.pt")})
        with pytest.raises(Exception) as caught:  # MONAI's "Failed to evaluate", caused by our message
            parser.get_parsed_content("model_path", lazy=False)
        assert "'ckpt_path' was renamed 'model_path' (removed in 0.8.0)" in str(caught.value.__cause__)


def test_the_command_line_refuses_a_misspelt_option_without_writing(tmp_path):
    import subprocess
    import sys

    scan = _scan(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "mosmos_components.cli", "segment", str(scan), str(tmp_path / "o"), "--model", "x"]
        + ["--statistcs"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and "did you mean --statistics" in out.stderr and not (tmp_path / "o").exists()


def test_an_edited_sidecar_is_refused_naming_what_changed(tmp_path):
    from mosmos_components.checkpoint import read_sidecar, save_network

    net = torch.nn.Linear(2, 2)
    save_network(net, tmp_path / "model.pt", extra={"class_names": ["background", "liver", "spleen"], "x": 1})
    assert read_sidecar(tmp_path / "model.pt")["class_names"] == ["background", "liver", "spleen"]
    side = json.loads((tmp_path / "model.json").read_text())
    side["class_names"] = ["background", "spleen", "liver"]  # reordered by hand
    side["y"] = 2
    (tmp_path / "model.json").write_text(json.dumps(side))
    with pytest.raises(ValueError, match=r"edited after it was written: class_names \(changed\), y \(added\)"):
        read_sidecar(tmp_path / "model.pt")


def test_a_sidecar_without_class_names_is_named(tmp_path):
    from mosmos_components.checkpoint import save_network
    from mosmos_components.inference import load_model

    save_network(torch.nn.Linear(2, 2), tmp_path / "model.pt", extra={"data": {"pixdim": [1, 1, 1]}})
    with pytest.raises(ValueError, match=r"model\.json: the sidecar gives no class_names"):
        load_model(tmp_path / "model.pt")


def test_a_finished_run_whose_best_model_is_gone_refuses_to_pass(tmp_path):
    from ignite.engine import Engine

    from mosmos_components.handlers import BestModelSaver, TrainingCheckpointer

    def make():
        net = torch.nn.Linear(2, 2)
        saver = BestModelSaver(net, str(tmp_path / "model.pt"), "val_mean_dice", mode="max")
        return saver, TrainingCheckpointer(str(tmp_path / "checkpoint.pt"), {"network": net, "best": saver})

    saver, ckpt = make()
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.iteration, engine.state.max_epochs = 2, 2, 2
    engine.state.metrics = {"val_mean_dice": 0.7}
    saver(engine)  # the best model is written
    ckpt.save(engine)
    (tmp_path / "model.pt").unlink()  # ... and lost
    saver, ckpt = make()
    resumed = Engine(lambda e, b: None)
    resumed.state.max_epochs = 2
    with pytest.raises(
        FileNotFoundError, match=r"model\.pt is missing, yet \S*checkpoint\.pt \(epoch 2 of 2\) records"
    ):
        ckpt.load(resumed)
    assert math.isclose(saver.best, 0.7)


def test_locate_gives_every_name_its_own_file_and_a_table(pretrained, tmp_path):
    from mosmos_components.locate import locate

    nib.save(nib.Nifti1Image(cube_volume((30, 28, 7)), np.eye(4)), tmp_path / "scan.nii.gz")
    names = ["left kidney", "left-kidney", "肝臓", "a" * 300]
    # a model folder is taken as segment takes it: its model.pt
    res = locate(tmp_path / "scan.nii.gz", names, pretrained["mosmos-tiny-vit"].parent, tmp_path / "out")
    files = [r["map"] for r in res["names"].values()]
    assert len(set(files)) == 4 and all(len(f.rsplit("/", 1)[-1]) < 100 for f in files)
    table = json.loads((tmp_path / "out" / "scan_locate.json").read_text())
    assert {n: r["map"] for n, r in table["names"].items()} == dict(zip(names, files))


def test_a_report_in_another_language_says_so_once():
    from mosmos_components.tags import TagExtractor

    extract = TagExtractor()
    with pytest.warns(UserWarning, match="probably not in the vocabulary's language"):
        assert extract("Die Leber ist vergrößert, Zyste in der linken Niere.") == []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract("Hígado aumentado de tamaño, quiste en el riñón izquierdo.")  # said once already
        TagExtractor()("The liver is enlarged.")  # English with a tag
        TagExtractor()("CT abdomen")  # too short to tell


def test_the_sidecar_is_read_once_into_a_typed_card(tmp_path):
    from mosmos_components.checkpoint import save_network
    from mosmos_components.inference import ModelCard
    from mosmos_components.transforms import CT_WINDOW

    extra = {
        "class_names": ["background", "liver"],
        "data": {"pixdim": [1, 1, 2], "modality": "ct"},
        "inference": {"roi_size": [32, 32, 16]},
    }
    save_network(torch.nn.Linear(2, 2), tmp_path / "model.pt", extra=extra)
    card = ModelCard.read(tmp_path / "model.pt")
    assert (card.intensity_range, card.overlap, card.axcodes, card.sigmoid) == (list(CT_WINDOW), 0.5, "RAS", False)
    assert (card.pixdim, card.roi_size, card.output_labels) == ([1.0, 1.0, 2.0], [32, 32, 16], None)
    bad = dict(extra, inference={"roi_size": [32, 32, 16], "output_labels": "msd_brats"})
    save_network(torch.nn.Linear(2, 2), tmp_path / "bad.pt", extra=bad)
    with pytest.raises(ValueError, match="'msd_brats' does not fit softmax outputs"):
        ModelCard.read(tmp_path / "bad.pt")
