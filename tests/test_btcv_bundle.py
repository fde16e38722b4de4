"""btcv_seg through MONAI's bundle API in a tiny configuration: train -> evaluate -> inference (as the model
zoo's bundle tests do), the 2D U-Net variant, torchrun on CPU, the real CT sample, and bad inputs."""

import csv
import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, run, verify_net_in_out

from mosmos_components.checkpoint import load_segmentation_network, read_sidecar
from mosmos_components.data.datalist import (
    btcv_pairs,
    check_headers,
    inference_inputs,
    label_fraction,
    load_or_create_datalist,
)
from mosmos_components.networks import MosmosUNETR
from mosmos_components.transforms import ValidateSegmentationPaird

BTCV = "btcv_seg"


@pytest.fixture(scope="module")
def trained(btcv_dir, pretrained, tmp_path_factory, bundle_run):
    tmp = tmp_path_factory.mktemp("btcv_run")
    bundle_run(BTCV, ["train.json", "demo.json"], btcv_dir, tmp, pretrained["mosmos-tiny-vit"], max_epochs=2)
    return tmp


def test_train_writes_split_history_and_checkpoint(trained, btcv_dir, pretrained):
    dl = json.loads((trained / "eval" / "datalist.json").read_text())
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [3, 1, 1]  # 70/10/20 of 5 cases
    assert load_or_create_datalist(btcv_pairs(btcv_dir), trained / "eval" / "datalist.json") == dl  # reused
    hist = list(csv.DictReader(open(trained / "eval" / "val_history.csv")))
    assert len(hist) == 2 and "dice_liver" in hist[0] and "val_mean_dice" in hist[0]
    side = read_sidecar(trained / "models" / "model.pt")
    assert side["network"] == "MosmosUNETR" and side["class_names"][1] == "spleen"
    net = load_segmentation_network(trained / "models" / "model.pt")
    assert isinstance(net, MosmosUNETR) and not net.training
    assert bool(net.pta.embeddings_ready)  # class embeddings travel in the checkpoint, no text encoder needed
    with pytest.raises(ValueError, match="not describe a MOSMOS segmentation network"):
        load_segmentation_network(pretrained["mosmos-tiny-vit"])  # a pre-training checkpoint


def test_evaluate_writes_per_case_dice_and_hd95(trained, btcv_dir, pretrained, bundle_run):
    bundle_run(BTCV, ["train.json", "demo.json", "evaluate.json"], btcv_dir, trained, pretrained["mosmos-tiny-vit"])
    rows = list(csv.DictReader(open(trained / "eval" / "report" / "per_case.csv")))
    assert rows and {"case", "class", "dice", "hd95"} <= set(rows[0])
    assert len({r["class"] for r in rows}) == 13
    scored = [r for r in rows if r["dice"] != "nan"]
    assert scored and all(0.0 <= float(r["dice"]) <= 1.0 and float(r["hd95"]) >= 0.0 for r in scored)
    summary = list(csv.DictReader(open(trained / "eval" / "report" / "summary.csv")))
    assert summary[-1]["class"] == "mean"
    assert (trained / "eval" / "metrics.csv").is_file()


def _bundle_inference(bundle_run, btcv_dir, trained, pretrained, src, out) -> list:
    """``inference.json`` over the trained run's settings on one scan ``src``; the predictions it wrote in ``out``."""
    bundle_run(
        BTCV,
        ["train.json", "demo.json", "inference.json"],
        btcv_dir,
        trained,
        pretrained["mosmos-tiny-vit"],
        dataset_dir=str(src),
        output_dir=str(out),
    )
    return sorted((out / "predictions").glob("*_seg.nii.gz"))


def test_inference_keeps_the_input_grid_and_affine(trained, btcv_dir, pretrained, tmp_path, bundle_run):
    src = sorted((btcv_dir / "RawData" / "Training" / "img").glob("*.nii.gz"))[0]
    out = _bundle_inference(bundle_run, btcv_dir, trained, pretrained, src, tmp_path)
    assert len(out) == 1
    a, b = nib.load(src), nib.load(out[0])
    assert b.shape[:3] == a.shape[:3]
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)
    assert set(np.unique(np.asarray(b.dataobj))) <= set(range(14))


def test_inference_json_runs_alone_from_the_models_sidecar(trained, btcv_dir, tmp_path, bundle_run):
    """The model zoo loads ``inference.json`` on its own: spacing, intensities and window come from the model."""
    src = sorted((btcv_dir / "RawData" / "Training" / "img").glob("*.nii.gz"))[0]
    run(
        config_file=[str(bundle_run.configs(BTCV) / "inference.json")],
        bundle_root=str(bundle_run.configs(BTCV).parent),
        ckpt_dir=str(trained / "models"),
        dataset_dir=str(src),
        output_dir=str(tmp_path),
        show_progress=False,
        logging_file=str(bundle_run.configs(BTCV) / "logging.conf"),
    )
    out = next((tmp_path / "predictions").glob("*_seg.nii.gz"))
    assert nib.load(out).shape[:3] == nib.load(src).shape[:3]
    meta = json.loads((bundle_run.configs(BTCV) / "metadata.json").read_text())
    alone = json.loads((bundle_run.configs(BTCV) / "inference.json").read_text())
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert alone["checkpoint_expect"]["class_names"] == list(channels.values())  # what a model must segment


def test_torchscript_export_matches_the_trained_network(trained, btcv_dir, pretrained, tmp_path, bundle_run):
    """The zoo's checks: ``ckpt_export`` (traced: the encoder is open_clip's Transformer) and
    ``verify_net_in_out`` on the trained network; the exported model needs neither the text encoder nor
    mosmos_components, and computes what the bundle's own network computes, at any batch size."""
    over = bundle_run.overrides(BTCV, btcv_dir, trained, pretrained["mosmos-tiny-vit"])
    files = bundle_run.files(BTCV, "inference.json")  # standalone, as the zoo's tools load it
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(trained / "models" / "model.pt"),
        meta_file=str(bundle_run.configs(BTCV) / "metadata.json"),
        config_file=files,
        key_in_ckpt="",
        use_trace=True,
        input_shape=[1, 1, 32, 32, 16],
        **over,
    )
    exported = torch.jit.load(str(ts))
    net = load_segmentation_network(trained / "models" / "model.pt")
    x = torch.rand(3, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x))
    # mosmos segment runs the exported model (the sidecar of the weights beside it) and answers as the weights do
    from mosmos_components.inference import segment

    (tmp_path / "model.json").write_text((trained / "models" / "model.json").read_text())
    src = sorted((btcv_dir / "RawData" / "Training" / "img").glob("*.nii.gz"))[0]
    for model, out in ((ts, "seg_ts"), (trained, "seg_pt")):
        assert not segment(src, tmp_path / out, model, device="cpu", progress=False)["failed"]
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "seg_ts" / src.name).dataobj),
        np.asarray(nib.load(tmp_path / "seg_pt" / src.name).dataobj),
    )
    shape = {"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32, 16]}  # the tiny network's crop
    verify_net_in_out(
        net_id="network",
        meta_file=str(bundle_run.configs(BTCV) / "metadata.json"),
        config_file=files,
        n=1,
        **dict(over, device="cpu", **shape),
    )


def test_onnx_export_runs_in_mosmos_segment(trained, btcv_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from mosmos_components.cli import MosmosCLI
    from mosmos_components.inference import segment

    onnx = MosmosCLI().export_onnx(str(trained), str(tmp_path / "btcv.onnx"))
    side = json.loads((tmp_path / "btcv.json").read_text())
    assert side["class_names"] == read_sidecar(trained / "models" / "model.pt")["class_names"]
    with pytest.raises(FileExistsError, match="btcv.onnx exists"):
        MosmosCLI().export_onnx(str(trained), onnx)
    src = sorted((btcv_dir / "RawData" / "Training" / "img").glob("*.nii.gz"))[0]
    for model, out in ((onnx, "seg_onnx"), (trained, "seg_pt")):
        assert not segment(src, tmp_path / out, model, device="cpu", progress=False)["failed"]
    a = np.asarray(nib.load(tmp_path / "seg_onnx" / src.name).dataobj)
    b = np.asarray(nib.load(tmp_path / "seg_pt" / src.name).dataobj)
    assert (a == b).mean() > 0.999  # logits agree to ~1e-5; only exact ties could flip


def test_real_ct_through_inference(real_ct, trained, btcv_dir, pretrained, tmp_path, bundle_run):
    from mosmos_components.inference import segment

    res = segment(
        real_ct / "image.nii.gz", tmp_path / "seg", trained, device="cpu", statistics=True, preview=True, progress=False
    )
    assert not res["failed"] and nib.load(tmp_path / "seg" / "image.nii.gz").shape == (122, 101, 30)
    out = _bundle_inference(bundle_run, btcv_dir, trained, pretrained, real_ct / "image.nii.gz", tmp_path)
    a, b = nib.load(real_ct / "image.nii.gz"), nib.load(out[0])
    assert b.shape[:3] == a.shape[:3] == (122, 101, 30)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)


@pytest.mark.parametrize("crop", [True, False])
def test_inference_json_crops_to_the_body_unless_told_not_to(trained, bundle_run, crop):
    """As in training and validation, ``inference.json`` reads a scan cropped to the box around the body (the
    prediction is padded back by ``Invertd``); ``--crop_foreground False`` keeps the whole field of view."""
    parser = ConfigParser()
    parser.read_config(str(bundle_run.configs(BTCV) / "inference.json"))
    parser.update({"ckpt_dir": str(trained / "models"), "device": "$torch.device('cpu')", "crop_foreground": crop})
    steps = [type(t).__name__ for t in parser.get_parsed_content("infer#preprocessing").transforms]
    assert ("CropForegroundd" in steps) is crop and steps[-1] == ("CropForegroundd" if crop else "ModalityIntensityd")


def test_mosmos_segment_reads_the_bundles_model_like_its_inference(trained, btcv_dir, pretrained, tmp_path, bundle_run):
    """``mosmos segment`` takes everything from the trained model's sidecar and agrees with ``inference.json``."""
    from mosmos_components.inference import load_model, segment

    first = nib.load(sorted((btcv_dir / "RawData" / "Training" / "img").glob("*.nii.gz"))[0])
    affine = np.diag([-8.0, -8.0, 9.0, 1.0])  # on the model's spacing (LPS), so that no resampling blurs the comparison
    src = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(first.dataobj), affine), src)
    m = load_model(trained / "models" / "model.pt")
    assert (m.pixdim, m.roi_size, m.axcodes, m.modality) == ([8.0, 8.0, 9.0], [32, 32, 16], "RAS", "ct")
    res = segment(src, tmp_path / "seg", trained, device="cpu", progress=False)
    assert not res["failed"]
    out = _bundle_inference(bundle_run, btcv_dir, trained, pretrained, src, tmp_path)
    bundle = np.asarray(nib.load(out[0]).dataobj)
    ours = nib.load(tmp_path / "seg" / src.name)
    assert ours.shape == bundle.shape[:3] and np.array_equal(ours.affine, nib.load(src).affine)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), bundle.reshape(ours.shape))


def test_unet2d_variant(btcv_dir, pretrained, tmp_path, bundle_run):
    bundle_run(
        BTCV,
        ["train.json", "unet2d.json", "demo.json"],
        btcv_dir,
        tmp_path,
        pretrained["mosmos-tiny-rn"],
        max_epochs=1,
        batch_size=2,
        num_samples=2,
    )
    assert read_sidecar(tmp_path / "models" / "model.pt")["network"] == "MosmosUNet2D"
    # TorchScript export of the 2D network: PyTorch's trace self-check trips over nn.MultiheadAttention's
    # weights path (a 0-d constant's dtype), so it is skipped and the traced model is compared here instead
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(tmp_path / "models" / "model.pt"),
        config_file=bundle_run.files(BTCV, "train.json", "unet2d.json", "demo.json"),
        key_in_ckpt="",
        use_trace=True,
        input_shape=[1, 1, 32, 32],
        converter_kwargs={"check_trace": False},
        **bundle_run.overrides(BTCV, btcv_dir, tmp_path, pretrained["mosmos-tiny-rn"]),
    )
    net = load_segmentation_network(tmp_path / "models" / "model.pt")
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), net(x))
    from mosmos_components.inference import load_model, segment  # slice by slice, as the sidecar says

    assert load_model(tmp_path).slice_inference
    src = sorted((btcv_dir / "RawData" / "Training" / "img").glob("*.nii.gz"))[0]
    assert not segment(src, tmp_path / "seg", tmp_path, device="cpu", progress=False)["failed"]
    assert nib.load(tmp_path / "seg" / src.name).shape == nib.load(src).shape


def test_random_init_baseline(btcv_dir, tmp_path, bundle_run):
    bundle_run(BTCV, ["train.json", "demo.json"], btcv_dir, tmp_path, "unused", use_pretrained=False, max_epochs=1)
    side = read_sidecar(tmp_path / "models" / "model.pt")
    assert side["use_pta"] is False
    # evaluation rebuilds the network from model.json: no need to repeat --use_pretrained False
    bundle_run(BTCV, ["train.json", "demo.json", "evaluate.json"], btcv_dir, tmp_path, "unused")
    assert (tmp_path / "eval" / "report" / "per_case.csv").is_file()


@pytest.mark.parametrize("use_pta", [False, True])
def test_clip_baselines_through_the_bundle(btcv_dir, clip_weights, tmp_path, use_pta, bundle_run):
    """CLIP (no PTA) and CLIP+DenseCLIP (score maps from fixed prompts) from a CLIP-only checkpoint."""
    bundle_run(
        BTCV,
        ["train.json", "demo.json"],
        btcv_dir,
        tmp_path,
        clip_weights["ckpt"],
        use_pta=use_pta,
        pta_mode="score",
        pretrained_kind="clip",  # as baselines/clip.json and clip_denseclip.json say
        max_epochs=1,
    )
    net = load_segmentation_network(tmp_path / "models" / "model.pt")
    assert (net.pta is not None) == use_pta and (not use_pta or net.pta.mode == "score")
    key = "resblocks.0.attn.in_proj_weight"  # started from CLIP: one tiny epoch (3 steps) moves it by < 0.01
    trained, clip = net.encoder.transformer.state_dict()[key], clip_weights["clip"].visual.transformer.state_dict()[key]
    assert float((trained - clip).abs().max()) < 0.01 < float(clip.std())


def test_label_fraction_keeps_nested_training_subsets(btcv_dir, tmp_path, bundle_run):
    dl = {
        "training": [{"image": f"i{k}", "label": f"l{k}.nii.gz"} for k in range(8)],
        "validation": [{"v": 1}],
        "test": [{"t": 1}],
    }
    subsets = {f: label_fraction(dl, f, seed=0)["training"] for f in (0.25, 0.5, 0.75)}
    assert [len(subsets[f]) for f in (0.25, 0.5, 0.75)] == [2, 4, 6]
    assert all(x in subsets[0.5] for x in subsets[0.25]) and all(x in subsets[0.75] for x in subsets[0.5])
    assert label_fraction(dl, 0.25, 0)["validation"] == dl["validation"] and label_fraction(dl, 1.0) is dl
    assert len(label_fraction(dl, 0.01)["training"]) == 1
    with pytest.raises(ValueError, match="label_fraction must be in"):
        label_fraction(dl, 0.0)
    # through the bundle config: the split file keeps every case, training uses the fraction
    parser = ConfigParser()
    parser.read_config(bundle_run.files(BTCV, "train.json", "demo.json"))
    parser.update(bundle_run.overrides(BTCV, btcv_dir, tmp_path, "unused", label_fraction=0.34))
    parser.get_parsed_content("imports")
    used = parser.get_parsed_content("datalist")
    saved = json.loads((tmp_path / "eval" / "datalist.json").read_text())
    assert len(saved["training"]) == 3 and len(used["training"]) == 1 and used["test"] == saved["test"]


def test_missing_pretrained_file_is_a_clear_error(btcv_dir, tmp_path, bundle_run):
    with pytest.raises(Exception) as info:
        bundle_run(BTCV, ["train.json", "demo.json"], btcv_dir, tmp_path, tmp_path / "none.pt")
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("pre-trained checkpoint not found" in c and "none.pt" in c for c in chain)


def test_multi_gpu_config_under_torchrun_on_cpu(btcv_dir, pretrained, tmp_path, bundle_run, repo, torchrun):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    # two validation cases, one per rank (MONAI's DistributedSampler refuses a rank without data)
    over = bundle_run.overrides(
        BTCV, btcv_dir, tmp_path, pretrained["mosmos-tiny-vit"], max_epochs=1, split_fractions=[0.4, 0.4, 0.2]
    )
    del over["logging_file"]
    run = bundle_run.command(BTCV, ["train.json", "demo.json", "multi_gpu_train.json"], over)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29544", *run]
    res = torchrun(cmd, env=env, timeout=400, cwd=repo)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "models" / "checkpoint.pt").is_file()


def _write(path, arr, affine=None):
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), path)
    return str(path)


def test_bad_inputs(tmp_path):
    img = _write(tmp_path / "img.nii.gz", np.zeros((8, 8, 4), np.int16))
    lab = _write(tmp_path / "lab.nii.gz", np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(ValueError, match="grid mismatch"):
        check_headers([{"image": img, "label": lab}])
    shifted = _write(tmp_path / "lab2.nii.gz", np.zeros((8, 8, 4), np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="grid mismatch"):
        check_headers([{"image": img, "label": shifted}])
    four = _write(tmp_path / "img4.nii.gz", np.zeros((8, 8, 4, 4), np.int16))
    ok_lab = _write(tmp_path / "lab3.nii.gz", np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="4 channel"):
        check_headers([{"image": four, "label": ok_lab}], in_channels=1)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match="corrupt.nii.gz"):
        check_headers([{"image": str(corrupt), "label": ok_lab}])
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    values = np.zeros((8, 8, 4), np.uint8)
    values[0, 0, 0] = 17
    bad_lab = _write(tmp_path / "lab17.nii.gz", values)
    load = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"])])
    with pytest.raises(ValueError, match=r"lab17.nii.gz: unknown label value\(s\) \[17\]"):
        ValidateSegmentationPaird(in_channels=1, label_values=range(14))(load({"image": img, "label": bad_lab}))
    with pytest.raises(ValueError, match="img.nii.gz: 1 channel"):
        ValidateSegmentationPaird(in_channels=4)(load({"image": img, "label": ok_lab}))
    with pytest.raises(FileNotFoundError, match="BTCV dataset folder not found"):
        btcv_pairs(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="inference input not found"):
        inference_inputs(tmp_path / "nothing")
    (tmp_path / "dataset_0.json").write_text(json.dumps({"training": [{"image": "missing.nii.gz", "label": lab}]}))
    with pytest.raises(FileNotFoundError, match="missing file"):
        btcv_pairs(tmp_path)


def test_mlflow_records_losses_and_per_organ_dice(btcv_dir, pretrained, tmp_path, bundle_run):
    import mlflow

    run(
        config_file=bundle_run.files(BTCV, "train.json", "demo.json"),
        tracking="mlflow",
        experiment_name="btcv_test",
        **bundle_run.overrides(BTCV, btcv_dir, tmp_path, pretrained["mosmos-tiny-vit"], max_epochs=1),
    )
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("btcv_test").experiment_id])
    keys = set().union(*(r.data.metrics.keys() for r in runs))
    assert {"train_loss", "val_mean_dice", "dice_liver", "dice_spleen"} <= keys
    assert any(r.data.params.get("max_epochs") == "1" for r in runs)  # run parameters are recorded
    import hashlib

    sha = hashlib.sha256(pretrained["mosmos-tiny-vit"].read_bytes()).hexdigest()
    tags = [r.data.tags for r in runs]  # what the network started from, with the weights' SHA-256
    assert any(t.get("initialisation.kind") == "mosmos" and t.get("initialisation.weights_sha256") == sha for t in tags)
