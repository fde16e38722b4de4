"""Bad input and faults (issue: nothing silent, nothing lost): non-finite data, mismatched checkpoints, an earlier
model overwritten, concurrent runs, non-integer labels, another data set's split, a too-short run. Tiny
networks through btcv_seg's bundle where the behaviour is the bundle's."""

import json
import logging
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from mosmos_components.checkpoint import load_segmentation_network, save_network
from mosmos_components.handlers import RunGuard
from mosmos_components.networks import MosmosUNETR
from mosmos_components.transforms import ValidateSegmentationPaird

BTCV = "btcv_seg"


def _chain(exc):
    while exc is not None:
        yield str(exc)
        exc = exc.__cause__ or exc.__context__


def _copy_btcv(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# ----- 1. non-finite data -----


def _pair(image, label=None, name="/data/img0001.nii.gz"):
    d = {"image": MetaTensor(image, meta={"filename_or_obj": name})}
    if label is not None:
        d["label"] = MetaTensor(label, meta={"filename_or_obj": name.replace("img", "label")})
    return d


def test_nan_voxels_are_refused_naming_the_file_or_replaced_on_request():
    img = torch.zeros(1, 4, 4, 4)
    img[0, 1, 1, 1] = float("nan")
    img[0, 2, 2, 2] = float("inf")
    with pytest.raises(ValueError, match=r"img0001\.nii\.gz: 2 NaN/Inf voxel"):
        ValidateSegmentationPaird(in_channels=1)(_pair(img))
    with pytest.warns(UserWarning, match="replaced by 0"):
        out = ValidateSegmentationPaird(in_channels=1, nonfinite="zero")(_pair(img))
    assert torch.isfinite(out["image"]).all() and float(out["image"].abs().sum()) == 0.0


def test_a_nan_volume_stops_training_before_any_model_is_written(btcv_dir, pretrained, tmp_path, bundle_run):
    data = _copy_btcv(btcv_dir, tmp_path / "btcv")
    first = sorted((data / "RawData" / "Training" / "img").glob("*.nii.gz"))[0]
    nii = nib.load(first)
    arr = np.asarray(nii.dataobj).astype(np.float32)
    arr[:4, :4, :4] = np.nan
    nib.save(nib.Nifti1Image(arr, nii.affine), first)
    with pytest.raises(Exception) as info:
        bundle_run(BTCV, ["train.json", "demo.json"], data, tmp_path, pretrained["mosmos-tiny-vit"])
    assert any(first.name in m and "NaN/Inf" in m for m in _chain(info.value))
    assert not (tmp_path / "models" / "model.pt").exists()


def test_a_non_finite_loss_stops_the_step_naming_the_batch_files(tmp_path):
    guard = RunGuard([tmp_path], tmp_path / "model.pt", tmp_path / "checkpoint.pt")
    batch = {"image": MetaTensor(torch.zeros(2, 1, 2, 2, 2), meta={"filename_or_obj": ["a.nii.gz", "b.nii.gz"]})}
    engine = Engine(lambda e, b: [{"loss": torch.tensor(float("nan"))}])
    guard.attach(engine)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss.*a\.nii\.gz, b\.nii\.gz"):
        engine.run([batch], max_epochs=1)
    # the lock went with the failed run: another run may start
    RunGuard([tmp_path], tmp_path / "model.pt", tmp_path / "checkpoint.pt").start(Engine(lambda e, b: None))


def test_non_finite_weights_are_never_written(tmp_path):
    net = torch.nn.Linear(2, 2)
    save_network(net, tmp_path / "model.pt")
    before = (tmp_path / "model.pt").read_bytes()
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="refusing to write"):
        save_network(net, tmp_path / "model.pt")
    assert (tmp_path / "model.pt").read_bytes() == before  # the earlier file is kept


# ----- 2. a checkpoint with other classes -----


def test_a_checkpoint_of_other_classes_is_refused_by_another_bundle(tiny_unetr, tmp_path, bundle_run):
    net = MosmosUNETR(
        1, 14, img_size=(32, 32, 32), use_pta=False, class_names=[f"c{i}" for i in range(14)], **tiny_unetr
    )
    save_network(net, tmp_path / "model.pt", extra={"data": {"pixdim": [1.5, 1.5, 2.0], "modality": "ct"}})
    parser = ConfigParser()
    parser.read_config(bundle_run.files("amos_seg", "train.json", "evaluate.json"))
    expect = parser.get_parsed_content("checkpoint_expect")
    with pytest.raises(ValueError, match=r"trained for other data.*out_channels: checkpoint 14, bundle 16"):
        load_segmentation_network(tmp_path / "model.pt", expect=expect)
    same = {
        "class_names": [f"c{i}" for i in range(14)],
        "in_channels": 1,
        "out_channels": 14,
        "data": {"pixdim": [1.5, 1.5, 2.0], "modality": "ct"},
    }
    load_segmentation_network(tmp_path / "model.pt", expect=same)
    with pytest.raises(ValueError, match=r"data\.pixdim"):
        load_segmentation_network(tmp_path / "model.pt", expect=dict(same, data={"pixdim": [1.0, 1.0, 1.0]}))


def test_weights_and_sidecar_from_different_saves_are_an_error(tiny_unetr, tmp_path):
    net = MosmosUNETR(1, 3, img_size=(32, 32, 32), use_pta=False, class_names=["a", "b", "c"], **tiny_unetr)
    save_network(net, tmp_path / "model.pt")
    side = (tmp_path / "model.json").read_text()
    with torch.no_grad():
        net.out.conv.conv.weight.add_(1.0)
    save_network(net, tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(side)  # as if a writer died between the two renames
    with pytest.raises(RuntimeError, match="not from the same save"):
        load_segmentation_network(tmp_path / "model.pt")


# ----- 3. an earlier model is never silently overwritten; 4. concurrent runs -----


def test_a_fresh_run_never_replaces_an_earlier_model_unless_told(btcv_dir, pretrained, tmp_path, bundle_run):
    ckpt = pretrained["mosmos-tiny-vit"]
    bundle_run(BTCV, ["train.json", "demo.json"], btcv_dir, tmp_path, ckpt)
    model = tmp_path / "models" / "model.pt"
    first = model.read_bytes()
    with pytest.raises(Exception) as info:
        bundle_run(BTCV, ["train.json", "demo.json"], btcv_dir, tmp_path, ckpt, resume=False)
    assert any("holds the model of an earlier run" in m for m in _chain(info.value))
    assert model.read_bytes() == first
    (tmp_path / "models" / ".model.pt.x1y2.tmp").write_bytes(b"half a file")  # a killed writer's leftover
    bundle_run(BTCV, ["train.json", "demo.json"], btcv_dir, tmp_path, ckpt, resume=False, overwrite=True)
    aside = list((tmp_path / "models").glob("previous-*/model.pt"))
    assert len(aside) == 1 and aside[0].read_bytes() == first  # moved aside, not lost
    assert model.is_file() and not list((tmp_path / "models").glob(".*.tmp"))


def test_a_second_run_on_the_same_folders_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mosmos_components.handlers import RunGuard; "
            f"g = RunGuard([{str(tmp_path)!r}], 'm.pt', 'c.pt'); "
            f"g._lock(__import__('pathlib').Path({str(tmp_path)!r})); "
            "print('locked', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=f"in use by another run \\(PID {holder.pid}\\)"):
            RunGuard([tmp_path], tmp_path / "model.pt", tmp_path / "checkpoint.pt").start(Engine(lambda e, b: None))
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    RunGuard([tmp_path], tmp_path / "model.pt", tmp_path / "checkpoint.pt").start(Engine(lambda e, b: None))


def test_a_resumed_run_reporting_other_metrics_keeps_every_value_in_its_column(tmp_path):
    """The metrics history of a run resumed with other metrics (e.g. HD95 turned on) widens its header instead of
    writing values under the wrong names; each row carries its epoch's wall time."""
    from ignite.engine import Events

    from mosmos_components.handlers import MetricsHistory
    from mosmos_components.visualize import read_history

    path = tmp_path / "val_history.csv"

    def run(metrics, epochs, resume_at=0):
        engine = Engine(lambda e, b: time.sleep(0.01))
        engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", resume_at))  # the checkpointer
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(metrics))
        MetricsHistory(str(path)).attach(engine)
        engine.run([0, 1], max_epochs=epochs)

    run({"dice": 0.5}, 2)
    run({"hd95": 12.0, "dice": 0.7}, 3, resume_at=2)  # resumed, it reports one more metric, sorted before the first
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,dice,epoch_s,hd95" and lines[1].startswith("1,0.5,") and lines[1].endswith(",")
    assert lines[3].startswith("3,0.7,") and lines[3].endswith(",12")
    h = read_history(path)
    assert h["dice"] == [0.5, 0.5, 0.7] and np.isnan(h["hd95"][:2]).all() and h["hd95"][2] == 12.0
    assert all(0.015 <= s < 5 for s in h["epoch_s"])  # two 10 ms iterations an epoch


def test_a_history_keeps_one_row_per_epoch_when_a_lost_run_is_trained_again(tmp_path):
    """A folder that holds the history of a run whose weights are gone (a record copied back, a machine lost) and
    trains again from the start, or resumes from an earlier checkpoint than the history reached, gets the new run's
    rows in place of the old ones past its start — not both under the same epochs — and the old file is kept aside."""
    from ignite.engine import Events

    from mosmos_components.handlers import MetricsHistory
    from mosmos_components.visualize import read_history

    path = tmp_path / "train_history.csv"

    def run(loss, epochs, resume_at=0):
        engine = Engine(lambda e, b: None)
        engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", resume_at))
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(loss=loss))
        MetricsHistory(str(path)).attach(engine)
        engine.run([0], max_epochs=epochs)

    run(3.0, 3)  # the lost run: epochs 1-3
    run(2.0, 1)  # trained again from the start, one epoch so far
    assert read_history(path)["epoch"] == [1] and read_history(path)["loss"] == [2.0]
    kept = list(tmp_path.glob("previous-*/train_history.csv"))
    assert len(kept) == 1 and read_history(kept[0])["loss"] == [3.0, 3.0, 3.0]
    run(1.0, 3, resume_at=1)  # resumed from its epoch-1 checkpoint: nothing to drop, the file continues
    assert read_history(path)["epoch"] == [1, 2, 3] and read_history(path)["loss"] == [2.0, 1.0, 1.0]
    assert len(list(tmp_path.glob("previous-*"))) == 1


def _draws(ckpt, epochs, *, keep_rng=True):
    """A training's random draws per epoch — the data loader's order and its transforms' draws (no worker
    processes), dropout-like draws of ``torch``, ``numpy`` and ``random`` in the step — run to ``epochs`` from
    ``ckpt`` (resumed when it exists)."""
    import random

    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandGaussianNoised, RandSpatialCropd
    from monai.utils import set_determinism

    from mosmos_components.handlers import TrainingCheckpointer

    set_determinism(seed=0)  # what the bundle's configuration does at every start, resumed or not
    data = [{"img": torch.full((1, 8, 8), float(i))} for i in range(6)]
    transform = Compose([RandSpatialCropd("img", (4, 4), random_size=False), RandGaussianNoised("img", prob=1.0)])
    loader = DataLoader(Dataset(data, transform), batch_size=2, shuffle=True, num_workers=0)
    seen = []
    engine = Engine(
        lambda e, b: seen.append((b["img"].sum().item(), torch.rand(1).item(), np.random.rand(), random.random()))
    )
    box = torch.nn.Linear(1, 1)
    TrainingCheckpointer(str(ckpt), {"network": box}).attach(engine)
    if not keep_rng:  # a checkpoint as written before the random streams were kept
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: _drop_rng(ckpt))
    engine.run(loader, max_epochs=epochs)
    return seen


def _drop_rng(ckpt):
    state = torch.load(ckpt, weights_only=True)
    state.pop("rng")
    torch.save(state, ckpt)


def test_a_resumed_training_draws_what_the_uninterrupted_one_would_have_drawn(tmp_path):
    """Restarting from the configuration's seed would replay the first epochs' batches and augmentations after a
    resume; the checkpoint keeps the random streams, so the resumed epochs are the uninterrupted run's."""
    straight = _draws(tmp_path / "a.pt", 3)
    first = _draws(tmp_path / "b.pt", 2)
    resumed = _draws(tmp_path / "b.pt", 3)
    assert first + resumed == straight
    assert resumed != straight[:3]  # not the first epoch again


def test_a_resumed_segmentation_training_is_the_uninterrupted_one(btcv_dir, pretrained, tmp_path, bundle_run):
    """The segmentation bundles keep the random streams too: without worker processes, a run stopped after its
    first epoch and started again has the losses and validation of one that ran straight through."""
    from ignite.engine import Events

    from mosmos_components.visualize import read_history

    def train(out, stop_after=None):
        parser = ConfigParser()
        parser.read_config(bundle_run.files(BTCV, "train.json", "demo.json"))
        parser.update(bundle_run.overrides(BTCV, btcv_dir, out, pretrained["mosmos-tiny-vit"], max_epochs=2))
        parser.get_parsed_content("initialize")
        trainer = parser.get_parsed_content("train#trainer")
        if stop_after:  # after the epoch's checkpoint: a run killed between two epochs
            trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda e: e.terminate())
        trainer.run()
        return read_history(out / "eval" / "train_history.csv")["train_loss"]

    straight = train(tmp_path / "straight")
    assert len(train(tmp_path / "cut", stop_after=1)) == 1  # epoch 1
    resumed = train(tmp_path / "cut")
    assert len(straight) == 2 and resumed == straight
    val = [read_history(tmp_path / d / "eval" / "val_history.csv")["val_mean_dice"] for d in ("straight", "cut")]
    assert val[0] == val[1]


def test_a_checkpoint_without_random_states_still_resumes(tmp_path, caplog):
    _draws(tmp_path / "c.pt", 1, keep_rng=False)
    with caplog.at_level(logging.INFO, logger="mosmos_components.handlers"):
        assert len(_draws(tmp_path / "c.pt", 2)) == 3  # the second epoch's three batches
    assert "holds no random states" in caplog.text


def test_resuming_with_another_max_epochs_says_the_schedule_keeps_its_length(tmp_path, caplog):
    from monai.optimizers import WarmupCosineSchedule

    from mosmos_components.handlers import TrainingCheckpointer

    def run(epochs):
        net = torch.nn.Linear(1, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        sched = WarmupCosineSchedule(opt, warmup_steps=1, t_total=2 * epochs)
        engine = Engine(lambda e, b: (opt.step(), sched.step()))
        save = {"network": net, "optimizer": opt, "lr_scheduler": sched}
        TrainingCheckpointer(str(tmp_path / "checkpoint.pt"), save).attach(engine)
        engine.run([0, 1], max_epochs=epochs)
        return sched

    run(2)
    with caplog.at_level(logging.WARNING, logger="mosmos_components.handlers"):
        sched = run(4)
    assert "written by a run of max_epochs=2, this one has 4" in caplog.text and "'lr_scheduler'" in caplog.text
    assert sched.t_total == 4  # what the warning says: the restored schedule, planned for 2 epochs of 2 steps


# ----- 5. non-integer labels -----


def test_non_integer_label_values_are_an_error_naming_the_file_and_values():
    lab = torch.zeros(1, 4, 4, 4)
    lab[0, 0, 0, 0], lab[0, 1, 1, 1] = 0.5, 6.6
    with pytest.raises(ValueError, match=r"label0001\.nii\.gz: non-integer label value\(s\) \[0\.5, 6\.6"):
        ValidateSegmentationPaird(in_channels=1, label_values=range(14))(_pair(torch.zeros(1, 4, 4, 4), lab))


# ----- 6. evaluation of another data set with an old split -----


def test_a_split_of_other_data_is_refused(btcv_dir, tmp_path):
    from mosmos_components.data.datalist import btcv_pairs, load_or_create_datalist
    from mosmos_components.data.synthetic import write_btcv

    load_or_create_datalist(btcv_pairs(btcv_dir), tmp_path / "datalist.json")
    other = write_btcv(tmp_path / "other", n=3, seed=5, shape=(24, 24, 12))
    with pytest.raises(ValueError, match="made from other data"):
        load_or_create_datalist(btcv_pairs(other), tmp_path / "datalist.json")


# ----- 11. a run shorter than val_interval still ends with a model -----


def test_max_epochs_below_val_interval_still_validates_and_saves(btcv_dir, pretrained, tmp_path, bundle_run):
    bundle_run(
        BTCV,
        ["train.json", "demo.json"],
        btcv_dir,
        tmp_path,
        pretrained["mosmos-tiny-vit"],
        max_epochs=1,
        val_interval=5,
    )
    assert (tmp_path / "models" / "model.pt").is_file()
    assert json.loads((tmp_path / "models" / "model.json").read_text())["epoch"] == 1


# ----- 8. pre-training images of any mode and bit depth -----


def _write_png(path, kind):
    from PIL import Image

    grad = np.arange(40 * 30).reshape(30, 40) / (40 * 30 - 1)  # 0 .. 1
    if kind == "grey8":
        Image.fromarray((grad * 200).astype(np.uint8)).save(path)
        return 200 / 255
    if kind == "grey16":
        Image.fromarray((grad * 50000).astype(np.uint16)).save(path)
        return 50000 / 65535
    if kind == "palette":
        im = Image.fromarray((grad * 3).round().astype(np.uint8), mode="P")
        im.putpalette([0, 0, 0, 60, 60, 60, 120, 120, 120, 180, 180, 180] + [0] * 756)
        im.save(path)
        return 180 / 255  # the palette's grey, not the index 3
    if kind == "rgba":
        rgba = np.zeros((30, 40, 4), dtype=np.uint8)
        rgba[..., :3] = (grad * 100).astype(np.uint8)[..., None]
        rgba[..., 3] = 255
        Image.fromarray(rgba, mode="RGBA").save(path)
        return 100 / 255
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["grey8", "grey16", "palette", "rgba"])
def test_pretraining_images_are_scaled_by_their_own_bit_depth(tmp_path, kind, repo):
    from monai.transforms import Compose

    path = tmp_path / f"{kind}.png"
    top = _write_png(path, kind)
    parser = ConfigParser()
    root = repo / "bundles" / "mosmos_pretrain" / "configs"
    parser.read_config([str(root / "train.json"), str(root / "demo.json")])
    steps = parser.get_parsed_content("train#deterministic_transforms")
    until_scaled = Compose(
        [t for t in steps if type(t).__name__ in ("LoadImageNamed", "EnsureChannelFirstd", "ToRGBd", "ScaleBitDepthd")]
    )
    img = until_scaled({"image": str(path)})["image"]
    assert img.shape == (3, 40, 30)
    assert float(img.min()) >= 0.0 and float(img.max()) == pytest.approx(top, abs=0.01)


# ----- 9. read errors name the file, and the last line says so -----


def test_a_truncated_volume_is_named_and_summarised_on_the_last_line(btcv_dir, pretrained, tmp_path, bundle_run, repo):
    data = _copy_btcv(btcv_dir, tmp_path / "btcv")
    first = sorted((data / "RawData" / "Training" / "img").glob("*.nii.gz"))[0]
    raw = first.read_bytes()
    first.write_bytes(raw[: len(raw) * 2 // 3])  # header intact, data cut
    over = bundle_run.overrides(BTCV, data, tmp_path, pretrained["mosmos-tiny-vit"])
    del over["logging_file"]  # MONAI's default logging: the summary line as a user without one sees it
    cmd = [sys.executable, *bundle_run.command(BTCV, ["train.json", "demo.json"], over)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("MOSMOS error: OSError:") and first.name in last and "cannot be read" in last


def test_summary_line_prefers_the_error_that_names_the_file():
    from mosmos_components.errors import summary_line
    from mosmos_components.transforms import LoadImageNamed

    try:
        try:
            LoadImageNamed("image")({"image": "/nowhere/missing.nii.gz"})
        except OSError as inner:
            raise RuntimeError("applying transform <LoadImageNamed>") from inner
    except RuntimeError as outer:
        line = summary_line(outer)
    assert line.startswith("MOSMOS error: OSError: /nowhere/missing.nii.gz: cannot be read")


# ----- 10-11. mosmos tags: file, standard input, invalid UTF-8 on the command line -----


def test_tags_command_reads_a_file_and_stdin_and_refuses_undecodable_arguments(tmp_path):
    report = tmp_path / "report.txt"
    report.write_text("Left renal cyst. History of RA.", encoding="utf-8")
    mosmos = [sys.executable, "-c", "from mosmos_components.cli import main; main()", "tags"]
    out = subprocess.run(mosmos + ["--file", str(report)], capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout) == ["left kidney"]
    out = subprocess.run(
        mosmos + ["--stdin"], input="The liver is enlarged.", capture_output=True, text=True, timeout=120
    )
    assert json.loads(out.stdout) == ["liver"]
    bad = subprocess.run(
        mosmos + [b"\xff\xfe liver".decode("utf-8", "surrogateescape")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    )
    assert bad.returncode != 0 and "not valid UTF-8" in bad.stderr.strip().splitlines()[-1]
    (tmp_path / "latin1.txt").write_bytes("Leber: hépatique".encode("latin-1"))
    bad = subprocess.run(mosmos + ["--file", str(tmp_path / "latin1.txt")], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "latin1.txt" in bad.stderr.strip().splitlines()[-1]


# ----- 7. DICOM as scanners write it -----


def test_a_dicom_series_without_suffix_is_recognised_and_read(tmp_path, ct_series):
    from mosmos_components.data.datalist import inference_inputs
    from mosmos_components.transforms import LoadImageNamed

    uid = ct_series(tmp_path / "scan")
    items = inference_inputs(tmp_path / "scan")
    assert [(i["image"], i["series_uid"], len(i["series_files"])) for i in items] == [(str(tmp_path / "scan"), uid, 6)]
    img = LoadImageNamed("image", image_only=True)(items[0])["image"]
    assert tuple(img.shape) == (20, 16, 6)
    np.testing.assert_allclose(img.pixdim[:3].tolist(), [0.8, 0.8, 2.5], atol=1e-4)
    assert inference_inputs(tmp_path) == items  # a folder of series folders


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path, ct_series):
    from mosmos_components.data.datalist import inference_inputs

    ct_series(tmp_path / "scan", n=7, skip=(3,))
    with pytest.raises(ValueError, match=r"not evenly spaced.*5\.00->10\.00 mm"):
        inference_inputs(tmp_path / "scan")


def test_several_series_in_one_folder_are_listed_unless_one_is_chosen(tmp_path, ct_series):
    from mosmos_components.data.datalist import inference_inputs
    from mosmos_components.transforms import LoadImageNamed

    a = ct_series(tmp_path / "scan", n=5, description="soft tissue")
    b = ct_series(tmp_path / "b", n=3, description="lung window", start=100)
    for f in (tmp_path / "b").iterdir():
        f.rename(tmp_path / "scan" / f"B{f.name}")
    with pytest.raises(ValueError, match="holds 2 DICOM series") as info:
        inference_inputs(tmp_path / "scan")
    assert f"{a} (soft tissue, 5 files)" in str(info.value) and f"{b} (lung window, 3 files)" in str(info.value)
    items = inference_inputs(tmp_path / "scan", series_uid=b)
    assert items[0]["series_uid"] == b
    assert LoadImageNamed("image", image_only=True)(items[0])["image"].shape[-1] == 3  # that series only
    with pytest.raises(ValueError, match="no DICOM series 1.2.3"):
        inference_inputs(tmp_path / "scan", series_uid="1.2.3")


def test_inference_on_a_scanner_written_dicom_folder(btcv_dir, pretrained, tmp_path, ct_series, bundle_run):
    ct_series(tmp_path / "dicom" / "scan", n=8)
    bundle_run(BTCV, ["train.json", "demo.json"], btcv_dir, tmp_path, pretrained["mosmos-tiny-vit"])
    over = bundle_run.overrides(BTCV, tmp_path / "dicom", tmp_path, pretrained["mosmos-tiny-vit"])
    bundle_run.rerun(BTCV, ["train.json", "demo.json", "inference.json"], over)
    pred = list((tmp_path / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(pred) == 1 and nib.load(pred[0]).shape[:3] == (20, 16, 8)
