"""The mosmos_pretrain bundle through MONAI's bundle API, on tiny generated ROCO data."""

import csv
import json
import os
import sys

import pytest
import torch
from monai.bundle import run

from mosmos_components.checkpoint import load_pretrain_network

PRETRAIN = "mosmos_pretrain"
CONFIGS = ("train.json", "demo.json")


def _history(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(roco_dir, tmp_path_factory, bundle_run):
    tmp = tmp_path_factory.mktemp("pretrain")
    bundle_run(PRETRAIN, CONFIGS, roco_dir, tmp, max_epochs=4)
    return tmp


def test_loss_goes_down_and_checkpoint_is_written(trained):
    hist = _history(trained / "eval" / "train_history.csv")
    assert len(hist) == 4
    assert float(hist[-1]["train_loss"]) < float(hist[0]["train_loss"])
    val = _history(trained / "eval" / "val_history.csv")
    assert {
        "val_loss",
        "val_irc",
        "val_mlr",
        "recall_at_1",
        "recall_at_5",
        "recall_at_10",
        "tag_map",
        "pointing_acc",
        "pointing_chance",
        "attention_tag_corr",
        "patch_token_cosine",
    } <= set(val[0])
    assert 0.0 < float(val[0]["pointing_chance"]) < 0.5 and 0.0 <= float(val[0]["pointing_acc"]) <= 1.0
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    side = json.loads((trained / "models" / "model.json").read_text())
    assert side["backbone"] == "mosmos-tiny-vit" and len(side["tags"]) == 20 and side["n_ctx"] == 16
    best = min(float(r["val_loss"]) for r in val)
    assert side["metric"]["val_loss"] == pytest.approx(best, rel=1e-4)  # the lowest validation loss is kept


def test_the_class_queries_at_the_start_of_training_stay_in_every_row(trained):
    """Gate 1 compares the kept checkpoint's class-query separation with the network's before training: measured
    once when the validator is built, before the first step, and written beside each epoch's own."""
    val = _history(trained / "eval" / "val_history.csv")
    for key in ("query_cosine_acdc", "query_cosine_btcv", "query_cosine_right_ventricle_vs_left_ventricle"):
        assert len({r[f"{key}_at_start"] for r in val}) == 1, key
    assert any(r["query_cosine_acdc"] != r["query_cosine_acdc_at_start"] for r in val)  # training moved them


def test_query_separation_at_start_is_measured_on_the_network_as_attached():
    from ignite.engine import Engine

    from mosmos_components.metrics import ClassQuerySeparation
    from mosmos_components.networks import MosmosPretrainNet

    torch.manual_seed(0)
    net = MosmosPretrainNet("mosmos-tiny-vit", _warn_random=False)
    names = {"acdc": ["background", "right ventricle", "myocardium", "left ventricle"]}
    before = ClassQuerySeparation(net, names).measure()
    handler = ClassQuerySeparation(net, names, pairs=[["right ventricle", "left ventricle"]], at_start=True)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    with torch.no_grad():
        net.prompt.ctx.add_(torch.randn_like(net.prompt.ctx))  # "training"
    engine.run([0], max_epochs=1)
    got = engine.state.metrics
    assert got["query_cosine_acdc_at_start"] == pytest.approx(before["query_cosine_acdc"])
    assert got["query_cosine_acdc"] != pytest.approx(before["query_cosine_acdc"])
    assert "query_cosine_right_ventricle_vs_left_ventricle_at_start" in got


def test_reloaded_checkpoint_reproduces_its_validation_loss(trained, roco_dir, bundle_run):
    """A fresh network rebuilt from model.pt + sidecar gives the very validation loss recorded at saving."""
    out = trained / "reeval"
    run(
        config_file=bundle_run.files(PRETRAIN, *CONFIGS, "evaluate.json"),
        **bundle_run.overrides(PRETRAIN, roco_dir, trained, output_dir=str(out), **{"validate#split": "validation"}),
    )
    metrics = dict(row for row in csv.reader(open(out / "metrics.csv")) if len(row) == 2)
    side = json.loads((trained / "models" / "model.json").read_text())
    assert float(metrics["val_loss"]) == pytest.approx(side["metric"]["val_loss"], rel=1e-4)
    assert "pointing_acc" in metrics and "pointing_chance" in metrics  # the pointing game in metrics.csv
    # the held-out figures with their bootstrap intervals and chance levels, the same recall as the metric
    report = json.loads((out / "held_out_report.json").read_text())
    r1 = report["recall_at_1"]
    assert r1["value"] == pytest.approx(float(metrics["recall_at_1"])) and r1["chance"] == 1 / report["n_pairs"]
    assert r1["ci95"][0] <= r1["value"] <= r1["ci95"][1] and float(metrics["recall_at_1_ci_high"]) == r1["ci95"][1]
    assert 0 <= report["tag_map"]["chance"] <= 1 and "query_cosine_acdc" in metrics
    assert not any(k.endswith("_at_start") for k in metrics)  # a loaded checkpoint is not a start
    assert load_pretrain_network(trained / "models" / "model.pt").tags == side["tags"]


def test_resume_continues_from_the_checkpoint(trained, roco_dir, bundle_run):
    bundle_run(PRETRAIN, CONFIGS, roco_dir, trained, max_epochs=5)
    hist = _history(trained / "eval" / "train_history.csv")
    assert [int(r["epoch"]) for r in hist] == [1, 2, 3, 4, 5]  # epoch 5 only: not a restart
    assert json.loads((trained / "models" / "checkpoint.json").read_text())["epoch"] == 5


def test_a_resumed_pre_training_is_the_uninterrupted_one(roco_dir, tmp_path, bundle_run):
    """Two epochs, stopped, resumed to a third: the third epoch's losses are those of three epochs in one go (the
    random streams are kept in the training checkpoint, so the resumed epoch does not replay the first one's batches
    and augmentations)."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    bundle_run(PRETRAIN, CONFIGS, roco_dir, straight, max_epochs=3)
    bundle_run(PRETRAIN, CONFIGS, roco_dir, cut, max_epochs=2)
    bundle_run(PRETRAIN, CONFIGS, roco_dir, cut, max_epochs=3)
    for name, keys in (("train_history.csv", ("train_loss",)), ("val_history.csv", ("val_loss", "tag_map"))):
        a, b = _history(straight / "eval" / name), _history(cut / "eval" / name)
        assert [r["epoch"] for r in b] == ["1", "2", "3"]
        assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b], name


def test_mlflow_tracking(roco_dir, tmp_path, bundle_run):
    import mlflow

    run(
        config_file=bundle_run.files(PRETRAIN, *CONFIGS),
        tracking="mlflow",
        experiment_name="mosmos_test",
        **bundle_run.overrides(PRETRAIN, roco_dir, tmp_path, max_epochs=1),
    )
    db = tmp_path / "eval" / "mlruns.db"
    assert db.is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("mosmos_test")
    runs = client.search_runs([exp.experiment_id])
    keys = set().union(*(r.data.metrics.keys() for r in runs))
    assert {"train_loss", "val_loss", "recall_at_1", "pointing_acc", "pointing_chance"} <= keys
    assert any(r.data.params.get("max_epochs") == "1" for r in runs)  # run parameters are recorded


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_missing_dataset_dir_is_a_clear_error(tmp_path, bundle_run):
    with pytest.raises(Exception) as info:
        bundle_run(PRETRAIN, CONFIGS, tmp_path / "nowhere", tmp_path, max_epochs=1)
    # MONAI wraps config errors; the cause the user reads names the folder
    assert any(isinstance(e, FileNotFoundError) and "nowhere" in str(e) for e in _chain(info.value))


@pytest.mark.parametrize("extra", [[], ["ssl.json"]])  # MOSMOS, and the self-supervised baseline
def test_multi_gpu_config_runs_under_torchrun_on_cpu(roco_dir, tmp_path, extra, repo, torchrun, bundle_run):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    port = 29533 + len(extra)
    over = bundle_run.overrides(PRETRAIN, roco_dir, tmp_path, max_epochs=1, batch_size=8)
    del over["logging_file"]
    run = bundle_run.command(PRETRAIN, [*CONFIGS, "multi_gpu_train.json", *extra], over)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *run]
    res = torchrun(cmd, env=env, timeout=300, cwd=repo)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    if extra:  # the image tower alone, saved in the pre-training format
        assert json.loads((tmp_path / "models" / "model.json").read_text())["mosmos_pretrained"] is False
        load_pretrain_network(tmp_path / "models" / "model.pt")


def test_pointing_game_scores_the_attention_peak_against_the_organ_mask():
    from mosmos_components.metrics import pointing_game

    mask = torch.zeros(8, 8, dtype=torch.uint8)
    mask[0:4, 0:4] = 3  # organ of tag value 3: a quarter of the image
    mask[6:8, 6:8] = 5
    attn = torch.zeros(2, 4, 4)
    attn[0, 0, 0] = 1.0  # tag 0 peaks inside its organ (top-left)
    attn[1, 0, 0] = 1.0  # tag 1 peaks in the top-left too, but its organ is bottom-right
    hits, pairs, chance = pointing_game(attn, mask, {0: 3, 1: 5})
    assert (hits, pairs) == (1, 2) and chance == pytest.approx(16 / 64 + 4 / 64)
    assert pointing_game(attn, mask, {0: 7}) == (0, 0, 0.0)  # an organ not in the image is not scored


def test_tag_map_correlation_tells_shared_maps_from_tag_specific_ones():
    from mosmos_components.metrics import tag_map_correlation

    base = torch.rand(36)
    assert tag_map_correlation(torch.stack([base, base, base])) == pytest.approx(1.0)
    eye = torch.eye(3, 36)  # three maps peaked at three different tokens
    assert tag_map_correlation(eye) < 0


def test_evaluate_runs_in_a_fresh_process(trained, roco_dir, repo, bundle_run):
    """`python -m monai.bundle run` with evaluate.json in a new process (it failed there: the configs used
    mosmos_components.checkpoint without importing it, which only in-process runs had done before)."""
    import subprocess
    import sys

    over = bundle_run.overrides(PRETRAIN, roco_dir, trained, output_dir=str(trained / "fresh_eval"))
    del over["logging_file"], over["batch_size"]  # the bundle's own logging and demo batch, as a user runs it
    cmd = [sys.executable, *bundle_run.command(PRETRAIN, [*CONFIGS, "evaluate.json"], over)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (trained / "fresh_eval" / "metrics.csv").is_file()


@pytest.mark.parametrize("show", [False, True])
def test_caching_the_data_shows_progress_only_when_asked(roco_dir, tmp_path, bundle_run, capfd, show):
    """``show_progress false`` (what the experiment runner passes) keeps the caching bars out of a run's log."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in bundle_run.files(PRETRAIN, *CONFIGS)])
    parser.update(bundle_run.overrides(PRETRAIN, roco_dir, tmp_path, cache_rate=1.0, show_progress=show))
    for split in ("train", "validate"):
        assert len(parser.get_parsed_content(f"{split}#dataset")) > 0
    assert ("Loading dataset" in capfd.readouterr().err) is show
