"""Readers of the real data sets (issue: real evidence): MedPix 2.0 image-caption pairs for pre-training, its tag
statistics, ACDC in the official layout (and from WSL4MIS's HDF5 copy), and acdc_seg on the real sample.
The tests on the shared samples skip where ``../shared`` is absent."""

import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest

from mosmos_components.data.datalist import acdc_pairs, split_pairs
from mosmos_components.data.medpix import detect_layout, load_medpix, load_pairs


def test_medpix_pairs_are_split_by_case_with_captions_and_tags(medpix):
    splits = {s: load_medpix(medpix, s) for s in ("train", "validation", "test")}
    assert sum(len(v) for v in splits.values()) == 40
    cases = {s: {it["case"] for it in v} for s, v in splits.items()}
    assert not (cases["train"] & cases["validation"]) and not (cases["train"] & cases["test"])
    first = json.loads((medpix / "MedPix-2-0" / "Descriptions.json").read_text())[0]
    item = next(it for v in splits.values() for it in v if it["id"] == first["image"])
    assert item["report"] == first["Description"]["Caption"].strip() and item["image"].endswith(".png")
    assert len(item["tags"]) == 20 and item["modality"] == first["Type"]
    assert detect_layout(medpix) == "medpix" and len(load_pairs(medpix, "train")) == len(splits["train"])


def test_medpix_reports_a_missing_image_and_uses_the_datasets_own_split(medpix, tmp_path, caplog):
    root = tmp_path / "MedPix-2-0"
    shutil.copytree(medpix / "MedPix-2-0", root)
    entries = json.loads((root / "Descriptions.json").read_text())
    (root / "images" / f"{entries[0]['image']}.png").unlink()
    own = root / "splitted_dataset"
    own.mkdir()
    (own / "descriptions_train.jsonl").write_text("\n".join(json.dumps(e) for e in entries[:30]))
    (own / "descriptions_dev.jsonl").write_text("\n".join(json.dumps(e) for e in entries[30:35]))
    (own / "descriptions_test.jsonl").write_text("\n".join(json.dumps(e) for e in entries[35:]))
    with caplog.at_level(logging.WARNING):
        train = load_medpix(tmp_path, "train")
    assert len(train) == 29  # the data set's own 30, one missing image
    assert f"{entries[0]['image']}.png (missing)" in caplog.text
    assert [it["id"] for it in load_medpix(tmp_path, "validation")] == [e["image"] for e in entries[30:35]]


def test_tag_statistics_of_a_corpus(medpix, tmp_path):
    from mosmos_components.data.corpus_stats import tag_statistics

    s = tag_statistics(medpix, tmp_path)
    items = [it for sp in ("train", "validation", "test") for it in load_medpix(medpix, sp)]
    assert s["reports"] == 40 and s["reports_without_tag"] == sum(1 for it in items if not any(it["tags"]))
    rows = (tmp_path / "tag_frequencies.csv").read_text().splitlines()
    assert len(rows) == 21 and (tmp_path / "tag_frequencies.png").stat().st_size > 0
    liver = next(r for r in rows if r.startswith("liver,"))
    assert int(liver.split(",")[1]) == sum(it["tags"][5] for it in items)


def test_pretraining_reads_medpix_through_the_bundle(medpix, tmp_path, bundle_run):
    bundle_run("mosmos_pretrain", ["train.json", "demo.json"], medpix, tmp_path, max_epochs=1, batch_size=8)
    assert (tmp_path / "models" / "model.pt").is_file()
    hist = (tmp_path / "eval" / "val_history.csv").read_text().splitlines()
    assert "recall_at_1" in hist[0] and "pointing_acc" not in hist[0]  # real images: no organ masks


def test_acdc_pairs_in_the_official_layout(acdc):
    items = acdc_pairs(acdc)
    assert len(items) == 10 and {it["phase"] for it in items} == {"ED", "ES"}
    assert items[0]["image"].endswith("patient001_frame01.nii.gz") and items[0]["label"].endswith("_gt.nii.gz")
    split = split_pairs(items, (0.6, 0.2, 0.2), 0, group_key="patient")
    patients = {k: {it["patient"] for it in v} for k, v in split.items()}
    assert not (patients["training"] & patients["test"]) and sum(len(p) for p in patients.values()) == 5
    assert all(len(v) % 2 == 0 for v in split.values())  # both frames of a patient together


def test_patient_split_is_stratified_by_group():
    from collections import Counter

    groups = ["DCM", "HCM", "MINF", "NOR", "RV"]
    items = [
        {"image": f"{i}{ph}", "patient": f"p{i:03d}", "group": groups[i // 20]}
        for i in range(100)
        for ph in ("ED", "ES")
    ]
    split = split_pairs(items, (0.7, 0.1, 0.2), 0, group_key="patient", strata_key="group")
    for name, n in (("training", 140), ("validation", 20), ("test", 40)):
        assert len(split[name]) == n and set(Counter(it["group"] for it in split[name]).values()) == {n // 5}


def test_acdc_from_wsl4mis_h5(tmp_path, repo):
    h5py = pytest.importorskip("h5py")
    import subprocess
    import sys

    src = tmp_path / "h5"
    src.mkdir()
    rng = np.random.default_rng(0)
    for patient, frames in (("patient001", (1, 12)), ("patient045", (1, 9))):
        for f in frames:
            with h5py.File(src / f"{patient}_frame{f:02d}.h5", "w") as h5:
                h5["image"] = rng.random((6, 20, 24)).astype(np.float32)  # (z, y, x)
                h5["label"] = rng.integers(0, 4, (6, 20, 24)).astype(np.uint8)
    res = subprocess.run(
        [sys.executable, str(repo / "scripts" / "acdc_from_h5.py"), str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    items = acdc_pairs(tmp_path / "out")
    assert [(it["patient"], it["phase"], it["group"]) for it in items] == [
        ("patient001", "ED", "DCM"),
        ("patient001", "ES", "DCM"),
        ("patient045", "ED", "MINF"),
        ("patient045", "ES", "MINF"),
    ]
    img = nib.load(items[1]["image"])
    assert img.shape == (24, 20, 6) and np.allclose(img.header.get_zooms(), (1.5625, 1.5625, 10.0))
    with h5py.File(src / "patient001_frame12.h5") as h5:
        expected = h5["label"][()].transpose(2, 1, 0)
    np.testing.assert_array_equal(np.asarray(nib.load(items[1]["label"]).dataobj), expected)
    assert "nominal" in (tmp_path / "out" / "README.md").read_text()


def test_acdc_bundle_trains_evaluates_and_infers_on_the_real_sample(acdc, pretrained, tmp_path, bundle_run):
    from mosmos_components.checkpoint import read_sidecar

    cfg = ["train.json", "demo.json"]
    over = bundle_run("acdc_seg", cfg, acdc, tmp_path, pretrained["mosmos-tiny-vit"], pixdim=[6.25, 6.25, 10.0])
    dl = json.loads((tmp_path / "eval" / "datalist.json").read_text())
    by_split = {k: {it["patient"] for it in v} for k, v in dl.items()}
    assert [len(by_split[k]) for k in ("training", "validation", "test")] == [3, 1, 1]
    assert all(len(v) == 2 * len(by_split[k]) for k, v in dl.items())  # both frames of each patient
    assert read_sidecar(tmp_path / "models" / "model.pt")["class_names"] == [
        "background",
        "right ventricle",
        "myocardium",
        "left ventricle",
    ]
    bundle_run.rerun("acdc_seg", [*cfg, "evaluate.json"], over)
    rows = (tmp_path / "eval" / "report" / "per_case.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3  # the test patient's two frames x three structures
    src = acdc / "database" / "training" / "patient001" / "patient001_frame01.nii.gz"
    bundle_run.rerun("acdc_seg", [*cfg, "inference.json"], dict(over, dataset_dir=str(src)))
    pred = nib.load(next((tmp_path / "eval" / "predictions").glob("*_seg.nii.gz")))
    assert pred.shape[:3] == nib.load(src).shape and np.allclose(pred.affine, nib.load(src).affine, atol=1e-4)


def _field_of_view(net, acdc, tmp_path, repo, *options) -> tuple[list[dict], str]:
    """``net`` saved as a cell and scored by scripts/eval_field_of_view.py on patient001's first frame: the rows
    it writes and its standard output."""
    import subprocess
    import sys

    from mosmos_components.checkpoint import save_network

    (tmp_path / "cell" / "models").mkdir(parents=True, exist_ok=True)
    save_network(net, tmp_path / "cell" / "models" / "model.pt")
    frame = acdc / "database" / "training" / "patient001" / "patient001_frame01"
    item = {"image": f"{frame}.nii.gz", "label": f"{frame}_gt.nii.gz"}
    (tmp_path / "datalist.json").write_text(json.dumps({"test": [item]}))
    script = repo / "scripts" / "eval_field_of_view.py"
    out = tmp_path / "rows.json"
    args = [str(tmp_path / "cell"), str(tmp_path / "datalist.json"), *options, "--json", str(out)]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


def test_field_of_view_script_scores_any_saved_network(acdc, tmp_path, repo):
    """scripts/eval_field_of_view.py reads the class count from the sidecar, so it scores the stock reference
    arm (which has neither a PTA branch nor the U-Net's output block) like the project's networks."""
    import torch

    from mosmos_components.networks import StockUNet

    torch.manual_seed(0)
    names = ["background", "right ventricle", "myocardium", "left ventricle"]
    net = StockUNet(2, 1, 4, channels=(4, 8), strides=(2,), num_res_units=0, class_names=names)
    rows, stdout = _field_of_view(net, acdc, tmp_path, repo)
    assert [r["case"] for r in rows] == ["patient001_frame01_gt.nii.gz"]
    assert all(len(rows[0][k]) == 3 for k in ("whole", "centre", "largest"))
    assert "mean" in stdout


def _left_ventricle_everywhere():
    """A tiny stock UNet with zero weights and a left-ventricle output bias: it calls every pixel the left ventricle."""
    import torch

    from mosmos_components.networks import StockUNet

    names = ["background", "right ventricle", "myocardium", "left ventricle"]
    net = StockUNet(2, 1, 4, channels=(4, 8), strides=(2,), num_res_units=0, class_names=names)
    last = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        last.bias[3] = 1.0
    return net


def test_field_of_view_script_counts_predictions_in_windows_without_a_structure(acdc, tmp_path, repo):
    """--windows: a network that calls every pixel the left ventricle fills the empty windows and the others alike;
    the counts of both kinds add up to the windows of the frame's slices that lie inside the body."""
    net = _left_ventricle_everywhere()
    rows, stdout = _field_of_view(net, acdc, tmp_path, repo, "--windows")
    win = rows[0]["windows"]
    assert win["empty"]["windows"] > 0 and win["holding"]["windows"] > 0
    for kind in ("empty", "holding"):
        assert win[kind]["share"] == pytest.approx([0, 0, 0, 1])
    assert "windows empty" in stdout and "windows holding" in stdout


def test_field_of_view_panel_shows_the_slice_with_the_most_predictions_far_from_the_label(acdc, tmp_path, repo):
    """--panel: a network that calls every pixel the left ventricle predicts it far from the heart on every slice;
    the picture is drawn for the slice where that covers the most pixels, beside a second model's (--compare)."""
    from mosmos_components.checkpoint import save_network
    from mosmos_components.visualize import plt

    net = _left_ventricle_everywhere()
    (tmp_path / "other__x" / "models").mkdir(parents=True)
    save_network(net, tmp_path / "other__x" / "models" / "model.pt")
    panel = tmp_path / "panel.png"
    _, stdout = _field_of_view(
        net, acdc, tmp_path, repo, "--panel", str(panel), "--compare", str(tmp_path / "other__x")
    )
    label = nib.load(acdc / "database" / "training" / "patient001" / "patient001_frame01_gt.nii.gz").get_fdata()
    holding = [z for z in range(label.shape[-1]) if label[..., z].any()]
    smallest = min(holding, key=lambda z: (label[..., z] > 0).sum())  # everything else is far from it
    assert f"slice {smallest}," in stdout and "patient001_frame01_gt" in stdout
    image = plt.imread(panel)
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side: ground truth, the model, the other
    assert np.asarray(image).std() > 0


def test_field_of_view_script_can_normalise_with_the_batch_statistics(acdc, tmp_path, repo):
    """``--norm_stats batch``: batch-norm layers normalise with the statistics of the slices being segmented, not
    with the running statistics of training (here made useless), so the scores change."""
    import torch

    from mosmos_components.networks import MosmosUNet

    torch.manual_seed(0)
    names = ["background", "right ventricle", "myocardium", "left ventricle"]
    net = MosmosUNet(1, 4, "timm_cnn", {"model_name": "efficientnet_lite0"}, use_pta=False, class_names=names)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(1e8)  # every running-statistics activation ~0
    rows = {
        stats: _field_of_view(net, acdc, tmp_path, repo, "--norm_stats", stats)[0][0]["whole"]
        for stats in ("running", "batch")
    }
    assert rows["running"] != rows["batch"]
