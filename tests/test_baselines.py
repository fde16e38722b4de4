"""The baselines of docs/method.md §5: CLIP weights written as a pre-training checkpoint (no MOSMOS
pre-training), the CLIP initialisation of the segmentation encoder, CLIP+DenseCLIP's pixel-text score maps from
fixed class prompts, and the ImageNet initialisations (timm ViT into UNETR, torchvision ResNet-50 into the U-Net)."""

import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F

from mosmos_components.checkpoint import load_pretrain_network, read_sidecar, save_network
from mosmos_components.networks import MosmosPretrainNet, MosmosUNETR
from mosmos_components.networks.mosmos_clip import register_model_configs
from mosmos_components.networks.pta import PixelTagAttention
from mosmos_components.transfer import fixed_prompt_embeddings, save_clip_checkpoint, transfer_pretrained

NAMES = ["background", "liver", "duodenum"]


def test_clip_checkpoint_holds_the_given_clip_weights(clip_weights, tmp_path):
    side = read_sidecar(clip_weights["ckpt"])
    assert side["mosmos_pretrained"] is False and side["clip_pretrained"].endswith("clip_weights.pt")
    net = load_pretrain_network(clip_weights["ckpt"])
    ref = clip_weights["clip"].state_dict()
    got = net.clip.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], msg=k)
    with pytest.raises(ValueError, match="needs clip_pretrained"):
        save_clip_checkpoint(tmp_path / "x.pt", "mosmos-tiny-vit", None)


def test_score_maps_are_pixel_text_cosine_similarities():
    pta = PixelTagAttention(3, 16, mode="score", class_names=NAMES)
    assert pta.decoder is None and not any(k.startswith("decoder") for k in pta.state_dict())
    emb = torch.randn(3, 16)
    pta.set_class_embeddings(emb)
    feats = torch.randn(2, 12, 16)
    maps = pta(feats, (3, 4))
    assert maps.shape == (2, 3, 3, 4)
    expected = F.cosine_similarity(feats[:, None, :, :], emb[None, :, None, :], dim=-1).reshape(2, 3, 3, 4)
    torch.testing.assert_close(maps, expected)
    with pytest.raises(ValueError, match="mode must be one of"):
        PixelTagAttention(3, 16, mode="densecrf")


def test_denseclip_context_aware_prompting_makes_the_class_embeddings_image_specific():
    """DenseCLIP's post-model prompting: t + gamma * decoder(t, [global, tokens]) per image, gamma started at 1e-4
    (so the first maps are the fixed-prompt score maps), trained with the rest."""
    torch.manual_seed(0)
    pta = PixelTagAttention(3, 16, mode="denseclip", class_names=NAMES)
    fixed = PixelTagAttention(3, 16, mode="score", class_names=NAMES)
    emb = torch.randn(3, 16)
    pta.set_class_embeddings(emb)
    fixed.set_class_embeddings(emb)
    feats = torch.randn(2, 12, 16)
    maps = pta.eval()(feats, (3, 4))
    torch.testing.assert_close(maps, fixed(feats, (3, 4)), atol=1e-3, rtol=0)  # gamma = 1e-4 at the start
    with torch.no_grad():
        pta.context.gamma.fill_(1.0)
    text = pta.context(emb, feats)
    assert text.shape == (2, 3, 16) and not torch.allclose(text[0], text[1], atol=1e-3)  # per image
    swapped = pta.context(emb, feats.flip(0))
    torch.testing.assert_close(swapped, text.flip(0))  # each image's own context, nothing shared in the batch
    pta.train()(feats, (3, 4)).sum().backward()
    assert (
        pta.context.gamma.grad.abs().sum() > 0
        and pta.context.layers[0].multihead_attn.in_proj_weight.grad.abs().sum() > 0
    )


def test_clip_initialisation_of_the_segmentation_encoder(tiny_unetr, clip_weights, caplog):
    net = MosmosUNETR(1, 3, img_size=(32, 32, 16), use_pta=False, **tiny_unetr)
    with caplog.at_level(logging.INFO, logger="mosmos_components.transfer"):
        report = transfer_pretrained(net, clip_weights["ckpt"])
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    # the log groups tensors by module with counts: one short line per kind, not every tensor's name
    n = sum(k.startswith("encoder.transformer.") for k in report.transferred)
    assert any(f"transferred: encoder.transformer.* ({n})" in m for m in info)
    assert max(len(m) for m in info) < 400
    ref = clip_weights["clip"].visual.transformer.state_dict()
    for k, v in net.encoder.transformer.state_dict().items():
        torch.testing.assert_close(v, ref[k], msg=k)
    assert "encoder.transformer.resblocks.0.attn.in_proj_weight" in report.transferred


def test_clip_denseclip_baseline_uses_fixed_prompts_and_no_decoder(tiny_unetr, clip_weights):
    net = MosmosUNETR(1, 3, img_size=(32, 32, 16), class_names=NAMES, pta_mode="denseclip", **tiny_unetr)
    report = transfer_pretrained(net, clip_weights["ckpt"])
    assert not any(k.startswith("pta.decoder") for k in net.state_dict())
    assert "pta.context.gamma" in report.initial  # DenseCLIP's context decoder is new: it trains from scratch
    assert "pta.class_embeddings" in report.computed
    pre = load_pretrain_network(clip_weights["ckpt"])
    expected = fixed_prompt_embeddings(pre, NAMES, "a medical image of the {}.")
    torch.testing.assert_close(net.pta.class_embeddings, expected)
    # the same names through CLIP's own text tower and tokenizer
    tokens = open_clip.tokenizer.tokenize(
        [f"a medical image of the {n}." for n in NAMES], context_length=pre.context_length
    )
    with torch.no_grad():
        torch.testing.assert_close(expected, clip_weights["clip"].encode_text(tokens))
    out = net.train()(torch.rand(2, 1, 32, 32, 16))
    assert [o.shape for o in out] == [(2, 3, 32, 32, 16)] * 2
    maps = net.attention_maps(torch.rand(1, 1, 32, 32, 16))
    assert maps.shape == (1, 3, 2, 2, 1) and float(maps.abs().max()) <= 1.0 + 1e-5  # cosine similarities
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        fixed_prompt_embeddings(pre, NAMES, "a medical image")


def test_mosmos_pta_from_plain_clip_weights_warns(tiny_unetr, clip_weights):
    net = MosmosUNETR(1, 3, img_size=(32, 32, 16), class_names=NAMES, **dict(tiny_unetr, decoder_heads=8))
    with pytest.warns(UserWarning, match="without MOSMOS pre-training"):
        transfer_pretrained(net, clip_weights["ckpt"])


def test_a_vit_with_other_patches_is_a_clear_error(tiny_unetr, tmp_path):
    register_model_configs()
    cfg = open_clip.get_model_config("mosmos-tiny-vit")
    cfg["vision_cfg"] = dict(cfg["vision_cfg"], patch_size=32)  # e.g. PubMedCLIP's ViT-B/32
    save_network(MosmosPretrainNet("mosmos-tiny-vit", model_cfg=cfg, _warn_random=False), tmp_path / "b32.pt")
    net = MosmosUNETR(1, 3, img_size=(32, 32, 16), use_pta=False, **tiny_unetr)
    with pytest.raises(ValueError, match="b32.pt: pre-trained ViT has \\(32, 32\\) patches"):
        transfer_pretrained(net, tmp_path / "b32.pt")


def test_clip_checkpoint_command(clip_weights, tmp_path):
    from mosmos_components.cli import MosmosCLI

    msg = MosmosCLI().clip_checkpoint(
        str(tmp_path / "clip" / "model.pt"),
        str(clip_weights["weights"]),
        backbone="mosmos-tiny-vit",
        force_quick_gelu=True,
    )
    assert "no MOSMOS pre-training" in msg
    net = load_pretrain_network(tmp_path / "clip" / "model.pt")
    torch.testing.assert_close(net.clip.visual.proj, clip_weights["clip"].visual.proj)


def test_a_checkpoint_of_another_configuration_names_the_difference(tiny_unetr, tmp_path):
    from mosmos_components.checkpoint import load_weights

    score = MosmosUNETR(1, 3, img_size=(32, 32, 16), class_names=NAMES, pta_mode="score", **tiny_unetr)
    score.pta.set_class_embeddings(torch.randn(3, 64))
    save_network(score, tmp_path / "model.pt")
    decoder = MosmosUNETR(1, 3, img_size=(32, 32, 16), class_names=NAMES, **tiny_unetr)
    with pytest.raises(RuntimeError, match="model.json differs: pta_mode='score' \\(checkpoint\\) vs 'decoder'"):
        load_weights(decoder, tmp_path / "model.pt")


def test_denseclip_score_maps_in_the_2d_unet(pretrained):
    from mosmos_components.networks import MosmosUNet2D

    net = MosmosUNet2D(
        1,
        3,
        layers=(1, 1, 1, 1),
        width=16,
        embed_dim=64,
        attn_heads=8,
        decoder_channels=(64, 32, 16, 16, 8),
        class_names=NAMES,
        pta_mode="score",
    )
    report = transfer_pretrained(net, pretrained["mosmos-tiny-rn"])
    assert "encoder.v_proj.weight" in report.transferred and "pta.class_embeddings" in report.computed
    assert [o.shape for o in net.train()(torch.rand(2, 1, 64, 64))] == [(2, 3, 64, 64)] * 2
    maps = net.attention_maps(torch.rand(1, 1, 64, 64))
    assert maps.shape == (1, 3, 2, 2) and float(maps.abs().max()) <= 1.0 + 1e-5


def _timm_vit(tmp_path, suffix=".safetensors"):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(5)
    vit = VisionTransformer(img_size=96, patch_size=16, embed_dim=64, depth=4, num_heads=2, num_classes=10).eval()
    path = tmp_path / f"vit_imagenet{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": vit.state_dict()}, path)
    return vit, path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_imagenet_vit_transfer_computes_the_same_function(tiny_unetr, tmp_path, suffix):
    """A volume one patch deep through the 3D encoder = the grey image through timm's ImageNet ViT."""
    from mosmos_components.transfer import load_imagenet_vit, prepare_network

    vit, path = _timm_vit(tmp_path, suffix)
    net = MosmosUNETR(
        1, 3, img_size=(96, 96, 16), use_pta=False, vit_style="timm", **dict(tiny_unetr, quick_gelu=False)
    ).eval()
    report = load_imagenet_vit(net, path)
    assert "encoder.transformer.resblocks.3.mlp.c_proj.weight" in report.transferred
    assert not any(k.startswith("head") for k in net.state_dict())
    img = torch.rand(1, 96, 96)
    with torch.no_grad():
        ref = vit.forward_features((img.expand(3, -1, -1).unsqueeze(0) - 0.5) / 0.5)[:, 1:]  # after the final norm
        tokens = net.encoder(img[..., None].expand(-1, -1, -1, 16).unsqueeze(0)).tokens
    torch.testing.assert_close(tokens, ref, rtol=1e-4, atol=1e-4)
    seen = []  # the encoder standardises its [0, 1] input as timm's ViTs expect: (x - 0.5) / 0.5
    net.encoder.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    vol = torch.rand(1, 1, 96, 96, 16)
    with torch.no_grad():
        net(vol)
    torch.testing.assert_close(seen[0], (vol.flip((2, 3)) - 0.5) / 0.5)
    # through the bundle's entry point, and the clear errors
    prepare_network(
        MosmosUNETR(1, 3, img_size=(32, 32, 16), use_pta=False, vit_style="timm", **dict(tiny_unetr, quick_gelu=False)),
        path,
        pretrained_kind="imagenet",
    )
    with pytest.raises(ValueError, match="vit_style='timm'"):
        load_imagenet_vit(MosmosUNETR(1, 3, img_size=(32, 32, 16), use_pta=False, **tiny_unetr), path)
    with pytest.raises(ValueError, match="no text encoder"):
        load_imagenet_vit(MosmosUNETR(1, 3, img_size=(32, 32, 16), vit_style="timm", **tiny_unetr), path)
    from safetensors.torch import load_file, save_file

    variant = dict(load_file(str(path)) if suffix == ".safetensors" else torch.load(path)["state_dict"])
    variant["reg_token"] = torch.zeros(1, 4, 64)  # a register-token ViT computes another function
    save_file({k: v.contiguous() for k, v in variant.items()}, str(tmp_path / "reg.safetensors"))
    with pytest.raises(ValueError, match="unsupported ViT variant"):
        load_imagenet_vit(
            MosmosUNETR(1, 3, img_size=(32, 32, 16), use_pta=False, vit_style="timm", **tiny_unetr),
            tmp_path / "reg.safetensors",
        )
    with pytest.raises(ValueError, match="pretrained_kind must be"):
        prepare_network(
            MosmosUNETR(1, 3, img_size=(32, 32, 16), use_pta=False, **tiny_unetr), path, pretrained_kind="imagenet21k"
        )


def test_imagenet_baseline_through_the_bundle(tiny_unetr, btcv_dir, clip_weights, tmp_path, bundle_run):

    from mosmos_components.checkpoint import load_segmentation_network
    from mosmos_components.transfer import load_imagenet_vit

    vit, path = _timm_vit(tmp_path)
    bundle_run(
        "btcv_seg",
        ["train.json", "demo.json"],
        btcv_dir,
        tmp_path,
        path,
        pretrained_kind="imagenet",
        vit_style="timm",
        use_pta=False,
        quick_gelu=False,
        max_epochs=1,
    )
    net = load_segmentation_network(tmp_path / "models" / "model.pt")
    assert net.config()["vit_style"] == "timm" and net.pta is None
    moved = net.encoder.transformer.resblocks[0].attn.in_proj_weight - vit.blocks[0].attn.qkv.weight
    assert float(moved.abs().max()) < 0.01 < float(vit.blocks[0].attn.qkv.weight.std())  # started from ImageNet
    with pytest.raises(ValueError, match="is not a timm ViT state dict"):  # e.g. CLIP weights given by mistake
        load_imagenet_vit(
            MosmosUNETR(1, 3, img_size=(32, 32, 16), use_pta=False, vit_style="timm", **tiny_unetr),
            clip_weights["weights"],
        )


def test_imagenet_resnet_into_the_2d_unet(tmp_path, btcv_dir, bundle_run):
    from torchvision.models.resnet import Bottleneck, ResNet

    from mosmos_components.checkpoint import load_segmentation_network
    from mosmos_components.networks import MosmosUNet2D
    from mosmos_components.transfer import load_imagenet_resnet, prepare_network

    torch.manual_seed(7)
    ref = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)
    for m in ref.modules():  # non-trivial batch-norm statistics, so the buffers' transfer is checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ref.eval()
    path = tmp_path / "resnet_imagenet.pth"
    torch.save(ref.state_dict(), path)
    kw = dict(layers=(1, 1, 1, 1), use_pta=False, resnet_style="torchvision", decoder_channels=(64, 32, 16, 16, 8))
    net = MosmosUNet2D(1, 3, **kw).eval()
    report = load_imagenet_resnet(net, path)
    assert "encoder.layer4.0.bn3.running_var" in report.transferred and not any("fc" in k for k in net.state_dict())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        l4 = net.encoder(x.flip((2, 3))).tokens  # the network flips, the encoder standardises
        z = (x.flip((2, 3)).repeat(1, 3, 1, 1) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]
        ).view(1, 3, 1, 1)
        expected = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(z))))))))
    torch.testing.assert_close(l4, expected.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="width=64"):
        MosmosUNet2D(1, 3, **dict(kw, use_pta=True))
    with pytest.raises(ValueError, match="set layers"):  # a deeper ResNet than the network
        prepare_network(
            MosmosUNet2D(1, 3, **dict(kw, layers=(1, 1, 1, 1))), _deeper_resnet(tmp_path), pretrained_kind="imagenet"
        )
    # through the bundle's 2D variant
    bundle_run(
        "btcv_seg",
        ["train.json", "unet2d.json", "demo.json"],
        btcv_dir,
        tmp_path,
        path,
        pretrained_kind="imagenet",
        resnet_style="torchvision",
        use_pta=False,
        resnet_width=64,
        max_epochs=1,
        batch_size=2,
        num_samples=2,
    )
    trained = load_segmentation_network(tmp_path / "models" / "model.pt")
    assert trained.config()["resnet_style"] == "torchvision"


def _deeper_resnet(tmp_path):
    from torchvision.models.resnet import Bottleneck, ResNet

    path = tmp_path / "deeper.pth"
    torch.save(ResNet(Bottleneck, [1, 2, 1, 1]).state_dict(), path)
    return path


def test_ssl_proxy_tasks_learn_and_give_a_transferable_checkpoint(tiny_unetr, roco_dir, tmp_path, bundle_run):
    """Swin UNETR's proxy tasks on the pre-training images: shapes, deterministic validation views, the loss going
    down, and through the pre-training bundle (ssl.json) a checkpoint the segmentation transfer takes."""
    from mosmos_components.losses import SSLProxyLoss
    from mosmos_components.networks import SSLPretrainNet
    from mosmos_components.networks.ssl import mask_patches

    masked = mask_patches(torch.ones(4, 3, 64, 64), 16, 0.5, torch.Generator().manual_seed(0))
    assert set(masked.unique().tolist()) == {0.0, 1.0} and 0.2 < float((masked == 0).float().mean()) < 0.8
    torch.manual_seed(0)
    net = SSLPretrainNet(MosmosPretrainNet("mosmos-tiny-vit", decoder_heads=4, _warn_random=False))
    x = torch.rand(6, 3, 96, 96)
    out = net(x)
    assert out["rotation_logits"].shape == (6, 2, 4) and out["reconstruction"].shape == (6, 2, 3, 96, 96)
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    torch.testing.assert_close(a["reconstruction"], b["reconstruction"])  # validation views are reproducible
    net.train()
    loss_fn, opt = SSLProxyLoss(), torch.optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(25):
        loss = loss_fn(net(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-5:]) < sum(losses[:5])
    # the pre-training bundle's tower rates hold for the proxy tasks too (an ImageNet tower adapted gently)
    tower, heads = net.parameter_groups(1e-3, image_tower_lr=1e-4, text_tower_lr=0)
    assert (tower["lr"], heads["lr"]) == (1e-4, 1e-3)
    visual = {id(p) for n, p in net.named_parameters() if n.startswith("pretrain.clip.visual.")}
    assert {id(p) for p in tower["params"]} < visual and {id(p) for p in net.rotation_head.parameters()} < {
        id(p) for p in heads["params"]
    }
    assert all(p.requires_grad for p in heads["params"])  # the frozen text side is in no group
    with pytest.raises(ValueError, match="image_tower_lr is 0"):
        net.parameter_groups(1e-3, image_tower_lr=0)

    bundle_run("mosmos_pretrain", ["train.json", "demo.json", "ssl.json"], roco_dir, tmp_path, max_epochs=1)
    side = read_sidecar(tmp_path / "models" / "model.pt")
    assert side["mosmos_pretrained"] is False and "inpainting" in side["pretraining"]
    pre = load_pretrain_network(tmp_path / "models" / "model.pt")  # the plain pre-training format, strictly
    seg = MosmosUNETR(1, 3, img_size=(32, 32, 16), use_pta=False, **tiny_unetr)
    transfer_pretrained(seg, tmp_path / "models" / "model.pt")
    torch.testing.assert_close(
        seg.encoder.transformer.state_dict()["resblocks.1.mlp.c_fc.weight"],
        pre.clip.visual.transformer.state_dict()["resblocks.1.mlp.c_fc.weight"],
    )


def test_a_baseline_refuses_missing_or_mismatched_weights_and_records_them(pretrained, btcv_dir, tmp_path, bundle_run):
    """A variant that needs weights requires them: forgetting --pretrained_ckpt no longer loads the sibling
    MOSMOS checkpoint under the baseline's name; weights of another kind are refused; the model's sidecar records
    what it started from and the weights' SHA-256."""
    import hashlib
    import json

    over = bundle_run.overrides("btcv_seg", btcv_dir, tmp_path, max_epochs=1)
    without = {k: v for k, v in over.items() if k != "pretrained_ckpt"}
    for variant, message in (
        ("baselines/ssl.json", "needs --pretrained_ckpt, a self-supervised pre-training"),
        ("baselines/clip.json", "needs --pretrained_ckpt, a `mosmos clip-checkpoint` of CLIP weights"),
    ):
        with pytest.raises(Exception) as info:
            bundle_run.rerun("btcv_seg", ["train.json", "demo.json", variant], without)
        assert message in str(info.value) or any(message in str(e) for e in _chain(info.value)), info.value
    mosmos = pretrained["mosmos-tiny-vit"]
    with pytest.raises(Exception) as info:
        bundle_run.rerun(
            "btcv_seg", ["train.json", "demo.json", "baselines/ssl.json"], over | {"pretrained_ckpt": str(mosmos)}
        )
    assert any(
        "holds a MOSMOS pre-training" in str(e) and "expects a self-supervised" in str(e) for e in _chain(info.value)
    )
    bundle_run("btcv_seg", ["train.json", "demo.json"], btcv_dir, tmp_path, mosmos, max_epochs=1)
    side = json.loads((tmp_path / "models" / "model.json").read_text())
    assert side["initialisation"]["kind"] == "mosmos" and side["initialisation"]["use_pta"] is True
    assert side["initialisation"]["weights_sha256"] == hashlib.sha256(mosmos.read_bytes()).hexdigest()


def _chain(e):
    out = []
    while e is not None:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def test_stock_unet_baseline_trains_and_segments_like_the_project_networks(tmp_path, btcv_dir, bundle_run):
    """baselines/stock_unet.json with unet2d.json: MONAI's stock 2D UNet trains through the 2D bundle, and its
    checkpoint (arguments and class names in the sidecar) reloads and segments a scan slice by slice."""
    import nibabel as nib

    from mosmos_components.checkpoint import load_segmentation_network
    from mosmos_components.cli import MosmosCLI
    from mosmos_components.networks import StockUNet

    configs = ["train.json", "unet2d.json", "demo.json", "baselines/stock_unet.json"]
    bundle_run("btcv_seg", configs, btcv_dir, tmp_path, max_epochs=1, batch_size=2, num_samples=2)
    net = load_segmentation_network(tmp_path / "models" / "model.pt")
    assert type(net) is StockUNet and net.config()["channels"] == [16, 32, 64, 128, 256]
    assert net.class_names[1:4] == ["spleen", "right kidney", "left kidney"]
    scan = sorted((btcv_dir / "RawData" / "Training" / "img").glob("*.nii.gz"))[0]
    line = MosmosCLI().segment(str(scan), str(tmp_path / "out"), str(tmp_path), device="cpu")
    assert "1 scan(s) segmented" in line
    labels = nib.load(next((tmp_path / "out").glob("img*.nii.gz")))
    assert labels.shape == nib.load(scan).shape
