"""Label conversions of the AMOS, MM-WHS and BraTS data sets, voxel by voxel, and their demo data layouts."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from mosmos_components.data.synthetic import write_amos, write_brats, write_mmwhs
from mosmos_components.losses import MosmosSegLoss, marginal_logits
from mosmos_components.transforms import ClassMaskd, MSDBratsRegionsd, RemapLabelsd

MMWHS = {0: 0, 205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}


def test_mmwhs_value_map_voxel_by_voxel():
    raw = torch.tensor([[[0, 205, 420], [500, 550, 600], [820, 850, 0]]]).unsqueeze(-1)
    lab = MetaTensor(raw, meta={"filename_or_obj": "mr_train_1001_label.nii.gz"})
    out = RemapLabelsd("label", {str(k): v for k, v in MMWHS.items()})({"label": lab})["label"]
    assert out[0, :, :, 0].tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 0]]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "mr_train_1001_label.nii.gz"
    raw[0, 0, 0, 0] = 421
    with pytest.raises(ValueError, match=r"mr_train_1001_label.nii.gz: unknown label value\(s\) \[421\]"):
        RemapLabelsd("label", MMWHS)({"label": MetaTensor(raw, meta={"filename_or_obj": "mr_train_1001_label.nii.gz"})})


def test_msd_brats_regions_voxel_by_voxel():
    lab = torch.tensor([0, 1, 2, 3]).view(1, 4, 1, 1)
    out = MSDBratsRegionsd("label")({"label": lab})["label"]
    assert out.shape == (3, 4, 1, 1)
    tc, wt, et = (out[i, :, 0, 0].tolist() for i in range(3))
    assert tc == [0, 0, 1, 1]  # TC = non-enhancing + enhancing
    assert wt == [0, 1, 1, 1]  # WT = every tumour label
    assert et == [0, 0, 0, 1]  # ET = 3 in MSD (not 4, not 2)
    with pytest.raises(ValueError, match=r"unknown label value\(s\) \[4\]"):
        MSDBratsRegionsd("label")({"label": torch.tensor([0, 4]).view(1, 2, 1, 1)})


def test_marginal_loss_for_classes_a_case_does_not_annotate():
    logits = torch.randn(2, 4, 3, 3)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 1]])  # case 2 does not annotate class 2
    merged = marginal_logits(logits, mask).softmax(1)
    p = logits.softmax(1)
    torch.testing.assert_close(merged[0], p[0])  # fully annotated: unchanged
    torch.testing.assert_close(merged[1, 0], p[1, 0] + p[1, 2])  # class 2 folded into background
    assert merged[1, 2].max() < 1e-6
    torch.testing.assert_close(merged[1, [1, 3]], p[1, [1, 3]])
    # predicting the unannotated class where the ground truth says background costs nothing extra
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    pred = torch.full((1, 4, 8, 8), -5.0)
    pred[:, 2] = 5.0
    loss = MosmosSegLoss()
    assert loss(pred, (target, torch.tensor([[1.0, 1, 0, 1]]))) < 0.5 * loss(pred, target)
    out = ClassMaskd(16, {"mri": [14, 15]})({"modality": "mri"})["class_mask"]
    assert out.tolist() == [1.0] * 14 + [0.0, 0.0]
    assert ClassMaskd(16, {"mri": [14, 15]})({"modality": "ct"})["class_mask"].sum() == 16


def test_amos_demo_layout(tmp_path):
    root = write_amos(tmp_path, n=6, seed=0)
    meta = json.loads((root / "dataset.json").read_text())
    assert len(meta["training"]) == 4 and len(meta["validation"]) == 2 and meta["labels"]["13"] == "duodenum"
    for item in meta["training"] + meta["validation"]:
        lab = np.asarray(nib.load(root / item["label"]).dataobj)
        case_id = int(item["image"].split("_")[-1].split(".")[0])
        assert set(np.unique(lab)) <= set(range(16))
        if case_id > 500:  # MRI: no bladder / prostate-uterus labels
            assert not np.isin(lab, [14, 15]).any()
        else:
            assert np.isin(lab, [13]).any()  # CT cases have the open-set duodenum
    assert any(int(i["image"].split("_")[-1][:4]) > 500 for i in meta["training"] + meta["validation"])


def test_mmwhs_and_brats_demo_layouts(tmp_path):
    root = write_mmwhs(tmp_path / "mmwhs", n=2, seed=0)
    lab = np.asarray(nib.load(root / "mr_train" / "mr_train_1001_label.nii.gz").dataobj)
    assert set(np.unique(lab)) <= {0, 205, 420, 500, 550, 600, 820, 850} and len(np.unique(lab)) >= 6
    root = write_brats(tmp_path / "brats", n=2, seed=0)
    meta = json.loads((root / "dataset.json").read_text())
    img = nib.load(root / meta["training"][0]["image"])
    assert img.shape[3] == 4
    lab = np.asarray(nib.load(root / meta["training"][0]["label"]).dataobj)
    assert set(np.unique(lab)) == {0, 1, 2, 3}
