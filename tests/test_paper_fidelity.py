"""Places where the code must follow the paper (issue: fidelity): 2D U-Net crops, BraTS's PTA branch, the
ablations and variants of Tables 4-5 and Fig. 4. The Wilcoxon unit, the decoder's 3D position encoding and the
clean attention maps are tested in test_evaluation.py, test_pretrain_network.py and test_segmentation_networks.py.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from conftest import REPO
from mosmos_components.losses import MosmosSegLoss
from mosmos_components.networks import MosmosUNETR
from mosmos_components.transfer import load_pretrained
from mosmos_components.transforms import MSDBratsRegionsd

TINY_UNETR = dict(hidden_size=64, num_layers=4, num_heads=2, embed_dim=64, feature_size=8, decoder_heads=4,
                  quick_gelu=True)


@pytest.mark.parametrize("bundle", ["btcv_seg", "mmwhs_seg"])
def test_unet2d_trains_on_96_pixel_crops_by_default(bundle):
    """"For 2D images the D is omitted": 96x96 training crops (layer4 grid 3x3), 224 only as an override."""
    root = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(root / "train.json"), str(root / "unet2d.json")])
    assert parser.get_parsed_content("slice_roi") == [96, 96, 1]
    crop = [t for t in parser.get("train#crop") if t["_target_"] == "RandCropByPosNegLabeld"][0]
    assert crop["spatial_size"] == "@slice_roi"
    assert parser.get_parsed_content("validate#inferer#roi_size") == [96, 96]
    parser["slice_size"] = 224
    assert parser.get_parsed_content("slice_roi") == [224, 224, 1]


def test_brats_pta_branch_can_predict_a_region_absent(pretrained, tmp_path):
    """With a sigmoid over overlapping regions, LI(A)/tau_2 >= 0 gives p >= 0.5 everywhere; the branch must be
    able to say 'absent' (here: trained a few steps on a demo BraTS volume, it does so on most tumour-free voxels,
    and still predicts the tumour)."""
    from mosmos_components.data.demo import write_brats

    data = write_brats(tmp_path, n=1, seed=0, shape=(32, 32, 32), spacing=(6.0, 6.0, 6.0))
    img = torch.as_tensor(np.asarray(nib.load(data / "imagesTr" / "BRATS_001.nii.gz").dataobj), dtype=torch.float32)
    lab = torch.as_tensor(np.asarray(nib.load(data / "labelsTr" / "BRATS_001.nii.gz").dataobj))
    x = (img / img.amax(dim=(0, 1, 2))).permute(3, 0, 1, 2)[None]  # (1, 4, 32, 32, 32) in [0, 1]
    y = MSDBratsRegionsd("label")({"label": lab[None]})["label"][None].float()  # (1, 3, ...) TC, WT, ET
    assert 0 < y[0, 1].mean() < 0.5
    names = ["tumor core", "whole tumor", "enhancing tumor"]
    torch.manual_seed(0)
    net = MosmosUNETR(4, 3, img_size=(32, 32, 32), class_names=names, pta_sigmoid=True, **TINY_UNETR)
    load_pretrained(net, pretrained["mosmos-tiny-vit"])
    loss = MosmosSegLoss(sigmoid=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(15):
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        p = torch.sigmoid(net(x)[0, 1])  # the PTA branch's probabilities (3, 32, 32, 32)
    wt = p[1]
    outside = y[0, 1] == 0
    assert (wt[outside] < 0.5).float().mean() > 0.5, "the PTA branch never predicts 'absent'"
    assert (wt[~outside] >= 0.5).float().mean() > 0.5
    assert net.config()["pta_sigmoid"] is True and net.pta.aux_offset.shape == (3,)


def test_brats_bundle_builds_the_sigmoid_pta_branch():
    root = REPO / "bundles" / "brats_seg" / "configs"
    parser = ConfigParser()
    parser.read_config([str(root / "train.json"), str(root / "demo.json")])
    assert parser.get_parsed_content("network_def#pta_sigmoid") is True
    btcv = json.loads((REPO / "bundles" / "btcv_seg" / "configs" / "train.json").read_text())
    assert btcv["sigmoid"] is False and btcv["network_def"]["pta_sigmoid"] == "@sigmoid"
