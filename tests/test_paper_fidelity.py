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

from mosmos_components.losses import MosmosSegLoss
from mosmos_components.networks import MosmosUNETR
from mosmos_components.transfer import transfer_pretrained
from mosmos_components.transforms import MSDBratsRegionsd


@pytest.mark.parametrize("bundle", ["btcv_seg", "mmwhs_seg"])
def test_unet2d_trains_on_96_pixel_crops_by_default(bundle, repo):
    """ "For 2D images the D is omitted": 96x96 training crops (layer4 grid 3x3), 224 only as an override."""
    root = repo / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(root / "train.json"), str(root / "unet2d.json")])
    assert parser.get_parsed_content("slice_roi") == [96, 96, 1]
    crop = [t for t in parser.get("train#crop") if t["_target_"] == "RandCropByPosNegLabeld"][0]
    assert crop["spatial_size"] == "@slice_roi"
    assert parser.get_parsed_content("validate#inferer#roi_size") == [96, 96]
    parser["slice_size"] = 224
    assert parser.get_parsed_content("slice_roi") == [224, 224, 1]


def test_brats_pta_branch_can_predict_a_region_absent(tiny_unetr, pretrained, tmp_path):
    """With a sigmoid over overlapping regions, LI(A)/tau_2 >= 0 gives p >= 0.5 everywhere; the branch must be
    able to say 'absent' (here: trained a few steps on a demo BraTS volume, it does so on most tumour-free voxels,
    and still predicts the tumour)."""
    from mosmos_components.data.synthetic import write_brats

    data = write_brats(tmp_path, n=1, seed=0, shape=(32, 32, 32), spacing=(6.0, 6.0, 6.0))
    img = torch.as_tensor(np.asarray(nib.load(data / "imagesTr" / "BRATS_001.nii.gz").dataobj), dtype=torch.float32)
    lab = torch.as_tensor(np.asarray(nib.load(data / "labelsTr" / "BRATS_001.nii.gz").dataobj))
    x = (img / img.amax(dim=(0, 1, 2))).permute(3, 0, 1, 2)[None]  # (1, 4, 32, 32, 32) in [0, 1]
    y = MSDBratsRegionsd("label")({"label": lab[None]})["label"][None].float()  # (1, 3, ...) TC, WT, ET
    assert 0 < y[0, 1].mean() < 0.5
    names = ["tumor core", "whole tumor", "enhancing tumor"]
    torch.manual_seed(0)
    net = MosmosUNETR(4, 3, img_size=(32, 32, 32), class_names=names, pta_sigmoid=True, **tiny_unetr)
    transfer_pretrained(net, pretrained["mosmos-tiny-vit"])
    loss = MosmosSegLoss(sigmoid=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(15):
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        p = torch.sigmoid(net(x).pta[0])  # the PTA branch's probabilities (3, 32, 32, 32)
    wt = p[1]
    outside = y[0, 1] == 0
    assert (wt[outside] < 0.5).float().mean() > 0.5, "the PTA branch never predicts 'absent'"
    assert (wt[~outside] >= 0.5).float().mean() > 0.5
    assert net.config()["pta_sigmoid"] is True and net.pta.aux_offset.shape == (3,)


def test_brats_bundle_builds_the_sigmoid_pta_branch(repo):
    root = repo / "bundles" / "brats_seg" / "configs"
    parser = ConfigParser()
    parser.read_config([str(root / "train.json"), str(root / "demo.json")])
    assert parser.get_parsed_content("network_def#pta_sigmoid") is True
    btcv = json.loads((repo / "bundles" / "btcv_seg" / "configs" / "train.json").read_text())
    assert btcv["sigmoid"] is False and btcv["network_def"]["pta_sigmoid"] == "@sigmoid"


# ----- Table 4: without L_mlr, and the full framework without pre-training -----


def test_pretraining_without_mlr_is_an_override_recorded_in_the_sidecar(repo):
    root = repo / "bundles" / "mosmos_pretrain" / "configs"
    parser = ConfigParser()
    parser.read_config([str(root / "train.json"), str(root / "demo.json")])
    parser["use_mlr"] = False
    loss = parser.get_parsed_content("loss")
    assert loss.use_mlr is False and loss.use_irc is True
    assert parser.get_parsed_content("validate#best_saver#extra") == {
        "weights_kind": "mosmos",
        "pretrain_losses": {"irc": True, "mlr": False},
    }


def test_a_checkpoint_pretrained_without_mlr_warns_that_the_decoder_is_untrained(tiny_unetr, pretrained, tmp_path):
    import shutil

    src = pretrained["mosmos-tiny-vit"]
    shutil.copy(src, tmp_path / "model.pt")
    from mosmos_components.checkpoint import read_sidecar, write_sidecar

    write_sidecar(dict(read_sidecar(src), pretrain_losses={"irc": True, "mlr": False}), tmp_path / "model.json")
    net = MosmosUNETR(1, 3, img_size=(32, 32, 32), class_names=["background", "liver", "spleen"], **tiny_unetr)
    with pytest.warns(UserWarning, match="without L_mlr"):
        transfer_pretrained(net, tmp_path / "model.pt")


def test_no_pretraining_with_pta_runs_with_a_warning(tiny_unetr):
    from mosmos_components.transfer import prepare_network

    torch.manual_seed(0)
    net = MosmosUNETR(1, 3, img_size=(32, 32, 32), class_names=["background", "liver", "spleen"], **tiny_unetr)
    with pytest.warns(UserWarning, match="no pre-training"):
        prepare_network(net, None)
    assert bool(net.pta.embeddings_ready) and net.pta.class_embeddings.abs().sum() > 0
    seg, pta = net.train()(torch.rand(1, 1, 32, 32, 32))
    assert seg.shape == pta.shape == (1, 3, 32, 32, 32) and torch.isfinite(seg).all() and torch.isfinite(pta).all()


# ----- Table 5: UNETR on a ViT-B/32 -----


@pytest.fixture(scope="module")
def vit32_ckpt(tmp_path_factory):
    import open_clip

    from mosmos_components.checkpoint import save_network
    from mosmos_components.networks import MosmosPretrainNet
    from mosmos_components.networks.mosmos_clip import register_model_configs

    register_model_configs()
    cfg = json.loads(json.dumps(open_clip.get_model_config("mosmos-tiny-vit")))
    cfg["vision_cfg"]["patch_size"] = 32
    torch.manual_seed(0)
    net = MosmosPretrainNet("mosmos-tiny-vit", model_cfg=cfg, decoder_heads=4, _warn_random=False)
    path = tmp_path_factory.mktemp("vit32") / "model.pt"
    save_network(net, path)
    return net.eval(), path


def test_unetr_with_patch_32_transfers_and_segments(tiny_unetr, vit32_ckpt):
    pre, path = vit32_ckpt
    names = ["background", "liver", "spleen"]
    seg = MosmosUNETR(
        1, 3, img_size=(96, 96, 32), patch_size=32, class_names=names, radiological_flip=False, **tiny_unetr
    ).eval()
    report = transfer_pretrained(seg, path)
    assert seg.grid == (3, 3, 1) and "encoder.positional_embedding" in report.inflated
    img = torch.rand(1, 96, 96)
    with torch.no_grad():  # the transferred /32 encoder computes CLIP's function on a one-patch-deep volume
        _, s2d, grid = pre.encode_image(seg.encoder.standardise(img).expand(3, -1, -1).unsqueeze(0))
        tokens = seg.encoder(img[..., None].expand(-1, -1, -1, 32).unsqueeze(0)).tokens
    assert grid == (3, 3)
    torch.testing.assert_close(seg.encoder.project(tokens), s2d, rtol=1e-4, atol=1e-4)
    x = torch.rand(2, 1, 96, 96, 32)
    assert seg(x).shape == (2, 3, 96, 96, 32)
    assert [o.shape for o in seg.train()(x)] == [(2, 3, 96, 96, 32)] * 2
    # a /32 checkpoint into a /16 network names the fix
    with pytest.raises(ValueError, match="set patch_size=32"):
        transfer_pretrained(MosmosUNETR(1, 3, img_size=(96, 96, 32), class_names=names, **tiny_unetr), path)


# ----- AMOS: CT and MRI apart (Fig. 4), and --modality with an existing split -----


def test_evaluation_reports_each_modality_and_the_pooled_table(tmp_path):
    from ignite.engine import Engine

    from mosmos_components.evaluation import SegmentationReport

    def item(name, modality, hit):
        label = torch.zeros(3, 4, 4, 4)
        label[1, :2] = 1
        label[0] = 1 - label[1]
        pred = label.clone() if hit else torch.zeros_like(label)
        from monai.data import MetaTensor

        return {"pred": pred, "label": MetaTensor(label, meta={"filename_or_obj": name}), "modality": modality}

    batches = [[item("ct1", "ct", True), item("ct2", "ct", True)], [item("mr1", "mri", False)]]
    # as MONAI's evaluator decollates them: the modality is in the batch items, not in the output items
    engine = Engine(lambda e, b: [{k: v for k, v in i.items() if k != "modality"} for i in b])
    SegmentationReport(["liver", "spleen"], channels=[1, 2], output_dir=str(tmp_path), hd95=False).attach(engine)
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["case_mean_dice_ct"] == 1.0 and engine.state.metrics["case_mean_dice_mri"] == 0.0
    assert engine.state.metrics["case_mean_dice"] == pytest.approx(2 / 3)
    for name in ("summary.csv", "summary_ct.csv", "summary_mri.csv"):
        assert (tmp_path / name).is_file()
    assert "group" in (tmp_path / "per_case.csv").read_text().splitlines()[0]


def test_an_existing_split_follows_the_modality_or_refuses_other_data(tmp_path):
    from mosmos_components.data.datalist import amos_pairs, load_or_create_datalist
    from mosmos_components.data.synthetic import write_amos

    data = write_amos(tmp_path / "amos", n=6, seed=0, shape=(16, 16, 8))
    both = amos_pairs(data, "both")
    dl_file = tmp_path / "datalist.json"
    full = load_or_create_datalist(both, dl_file, seed=0)
    ct = load_or_create_datalist(amos_pairs(data, "ct"), dl_file, seed=0)  # narrowed, split kept
    for sec in full:
        assert [it["image"] for it in ct[sec]] == [it["image"] for it in full[sec] if it["modality"] == "ct"]
    dl_file.unlink()
    load_or_create_datalist(amos_pairs(data, "ct"), dl_file, seed=0)
    with pytest.raises(ValueError, match="made from other data"):
        load_or_create_datalist(both, dl_file, seed=0)
    other = write_amos(tmp_path / "other", n=3, seed=1, shape=(16, 16, 8))
    with pytest.raises(ValueError, match="made from other data"):
        load_or_create_datalist(amos_pairs(other, "both"), dl_file, seed=0)


# ----- OpenAI's weights need QuickGELU -----


def test_openai_weights_get_quick_gelu_or_stop_with_the_advice(tmp_path):
    from mosmos_components.networks.mosmos_clip import resolve_quick_gelu

    assert resolve_quick_gelu("ViT-B-16", "openai", False) is True  # open_clip's tag: set, no download needed
    assert resolve_quick_gelu("ViT-B-16", None, False) is False
    archive = tmp_path / "ViT-B-16.pt"  # OpenAI's release format: a TorchScript archive
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(archive))
    with pytest.raises(ValueError, match=r"ViT-B-16\.pt.*force_quick_gelu"):
        resolve_quick_gelu("ViT-B-16", str(archive), False)
    assert resolve_quick_gelu("ViT-B-16", str(archive), True) is True
    plain = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    assert resolve_quick_gelu("ViT-B-16", str(plain), False) is False
