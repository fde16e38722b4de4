"""amos_seg, mmwhs_seg and brats_seg through MONAI's bundle API on their demo data: train -> evaluate -> inference,
and the generated configs in sync with btcv_seg's and each bundle's spec."""

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from mosmos_components.checkpoint import read_sidecar
from mosmos_components.data.synthetic import write_amos, write_brats, write_mmwhs

CASES = {
    "amos_seg": (
        lambda d: write_amos(d, n=6, seed=0, shape=(40, 40, 32), spacing=(9.0, 9.0, 10.0)),
        {"pixdim": [9.0, 9.0, 10.0]},
        15,
    ),
    "mmwhs_seg": (
        lambda d: write_mmwhs(d, n=5, seed=0, shape=(40, 40, 32), spacing=(5.0, 5.0, 5.0)),
        {"pixdim": [5.0, 5.0, 5.0]},
        7,
    ),
    "brats_seg": (
        lambda d: write_brats(d, n=5, seed=0, shape=(40, 40, 32), spacing=(5.0, 5.0, 5.0)),
        {"pixdim": [5.0, 5.0, 5.0]},
        3,
    ),
}


def test_generated_configs_are_in_sync(repo):
    res = subprocess.run(
        [sys.executable, str(repo / "scripts" / "build_bundles.py"), "--check"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("bundle", sorted(CASES))
def test_train_evaluate_inference(bundle, pretrained, tmp_path, bundle_run):
    make, extra, n_scored = CASES[bundle]
    data = make(tmp_path / "data")
    cfg = ["train.json", "demo.json"]
    ckpt = pretrained["mosmos-tiny-vit"]
    over = bundle_run(bundle, cfg, data, tmp_path, ckpt, roi_size=[32, 32, 32], **extra)
    side = read_sidecar(tmp_path / "models" / "model.pt")
    assert side["out_channels"] == n_scored + (0 if bundle == "brats_seg" else 1)
    bundle_run.rerun(bundle, [*cfg, "evaluate.json"], over)
    rows = list(csv.DictReader(open(tmp_path / "eval" / "report" / "per_case.csv")))
    assert len({r["class"] for r in rows}) == n_scored
    if bundle == "amos_seg":  # CT and MRI reported apart (the paper's Fig. 4), next to the pooled summary
        groups = {r["group"] for r in rows}
        assert groups <= {"ct", "mri"} and groups
        assert all((tmp_path / "eval" / "report" / f"summary_{g}.csv").is_file() for g in groups)
    items = sorted((data).rglob("*.nii.gz"))
    src = next(p for p in items if "label" not in str(p))
    bundle_run.rerun(bundle, [*cfg, "inference.json"], dict(over, dataset_dir=str(src)))
    pred = next((tmp_path / "eval" / "predictions").glob("*_seg.nii.gz"))
    a, b = nib.load(src), nib.load(pred)
    assert b.shape[:3] == a.shape[:3]
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)
    values = set(np.unique(np.asarray(b.dataobj)).tolist())
    assert values <= set(range(n_scored + 1))
    from mosmos_components.inference import segment  # the same model through mosmos segment

    # the bundle's batch of windows: another batch size runs other CPU kernels, whose last-digit differences can flip
    # a voxel where a one-epoch model's scores tie
    res = segment(
        src,
        tmp_path / "seg",
        tmp_path / "models",
        device="cpu",
        statistics=True,
        progress=False,
        sw_batch_size=over["sw_batch_size"],
    )
    assert not res["failed"], res["failed"]
    ours = nib.load(next((tmp_path / "seg").glob("*.nii.gz")))
    assert ours.shape == a.shape[:3] and np.array_equal(ours.affine, a.affine)
    # one label convention per data set, from every path: the bundle's map and segment's agree voxel for voxel
    # (BraTS: the Decathlon's own labels, 1 edema, 2 non-enhancing tumour, 3 enhancing tumour)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(b.dataobj))
    if bundle == "brats_seg":
        stats = json.loads(next((tmp_path / "seg").glob("*_statistics.json")).read_text())
        assert [r["structure"] for r in stats["structures"]] == ["edema", "non-enhancing tumor", "enhancing tumor"]


def _chain(exc):
    while exc is not None:
        yield str(exc)
        exc = exc.__cause__ or exc.__context__


def test_bad_inputs(tmp_path, pretrained, bundle_run):
    import json

    from mosmos_components.data.datalist import amos_pairs

    amos = write_amos(tmp_path / "amos", n=3, seed=0, shape=(24, 24, 16))
    meta = json.loads((amos / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/amos_0099.nii.gz", "label": "./labelsTr/amos_0099.nii.gz"})
    (amos / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="amos_0099"):
        amos_pairs(amos)
    # a BraTS image with 3 channels instead of 4 stops the bundle, naming the file
    brats = write_brats(tmp_path / "brats", n=3, seed=0, shape=(24, 24, 16))
    first = brats / "imagesTr" / "BRATS_001.nii.gz"
    img = nib.load(first)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :3], img.affine), first)
    with pytest.raises(Exception) as info:
        bundle_run("brats_seg", ["train.json", "demo.json"], brats, tmp_path, pretrained["mosmos-tiny-vit"])
    assert any("BRATS_001.nii.gz: 3 channel(s), expected 4" in m for m in _chain(info.value))
