import pytest
import torch
from monai.losses import DiceCELoss

from mosmos_components.checkpoint import save_network
from mosmos_components.losses import MosmosSegLoss, marginal_logits
from mosmos_components.networks import MosmosPretrainNet, MosmosUNet2D, MosmosUNETR, TrainingOutput
from mosmos_components.transfer import (
    class_embeddings,
    inflate_patch_kernel,
    prepare_network,
    resize_position_grid,
    transfer_pretrained,
)

NAMES = ["background", "spleen", "liver", "duodenum"]  # duodenum is open-set: not a pre-training tag


def _pretrained(tmp_path_factory, name):
    torch.manual_seed(0)
    net = MosmosPretrainNet(name, decoder_heads=4)
    path = tmp_path_factory.mktemp(name) / "model.pt"
    save_network(net, path)
    return net.eval(), path


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory):
    return _pretrained(tmp_path_factory, "mosmos-tiny-vit")


@pytest.fixture(scope="module")
def rn_ckpt(tmp_path_factory):
    return _pretrained(tmp_path_factory, "mosmos-tiny-rn")


@pytest.mark.parametrize("use_pta", [True, False])
def test_unetr_shapes(tiny_unetr, use_pta, vit_ckpt):
    net = MosmosUNETR(1, 4, img_size=(64, 64, 32), use_pta=use_pta, class_names=NAMES, **tiny_unetr)
    if use_pta:
        transfer_pretrained(net, vit_ckpt[1])
    x = torch.rand(2, 1, 64, 64, 32)
    out = net.train()(x)
    if use_pta:  # the segmentation and the PTA logits
        assert isinstance(out, TrainingOutput) and [o.shape for o in out] == [(2, 4, 64, 64, 32)] * 2
    else:
        assert out.shape == (2, 4, 64, 64, 32)
    assert net.eval()(x).shape == (2, 4, 64, 64, 32)
    if use_pta:
        assert net.attention_maps(x).shape == (2, 4, 4, 4, 2)


@pytest.mark.parametrize("use_pta", [True, False])
def test_unet2d_shapes(tiny_unet, use_pta, rn_ckpt):
    net = MosmosUNet2D(1, 4, use_pta=use_pta, class_names=NAMES, **tiny_unet)
    if use_pta:
        transfer_pretrained(net, rn_ckpt[1])
    x = torch.rand(3, 1, 64, 96)
    out = net.train()(x)
    assert [o.shape for o in out] == [(3, 4, 64, 96)] * 2 if use_pta else out.shape == (3, 4, 64, 96)
    assert net.eval()(x).shape == (3, 4, 64, 96)
    with pytest.raises(ValueError, match="multiple of 32"):
        net(torch.rand(1, 1, 50, 64))
    with pytest.raises(ValueError, match="input channel"):
        net(torch.rand(1, 2, 64, 64))


def test_vit_transfer_computes_the_same_function(tiny_unetr, vit_ckpt):
    """A volume one patch deep, constant along depth, through the 3D encoder = the grey image through CLIP's ViT."""
    pre, path = vit_ckpt
    seg = MosmosUNETR(1, 4, img_size=(96, 96, 16), class_names=NAMES, **tiny_unetr).eval()
    report = transfer_pretrained(seg, path)
    img = torch.rand(1, 96, 96)
    with torch.no_grad():
        _, s2d, grid = pre.encode_image(seg.encoder.standardise(img).expand(3, -1, -1).unsqueeze(0))
        s3d = seg.encoder.project(seg.encoder(img[..., None].expand(-1, -1, -1, 16).unsqueeze(0)).tokens)
        # same token sequence through both transformers: the very same function (QuickGELU, ln_pre, ...)
        seq = torch.randn(2, 37, 64)
        torch.testing.assert_close(seg.encoder.transformer(seq), pre.clip.visual.transformer(seq))
    assert grid == (6, 6) and seg.grid == (6, 6, 1)
    torch.testing.assert_close(s3d, s2d, rtol=1e-4, atol=1e-4)
    assert "encoder.transformer.resblocks.0.attn.in_proj_weight" in report.transferred
    assert set(report.inflated) == {"encoder.conv1.weight", "encoder.positional_embedding"}
    assert "out.conv.conv.weight" in report.initial and "pta.log_tau" in report.initial
    assert not any("classifier" in k for k in seg.state_dict())  # the classifier is not transferred
    assert not any("token_embedding" in k for k in seg.state_dict())  # no text encoder in the segmentation net


def test_3d_pixel_tag_attention_of_one_slice_is_the_2d_pretrained_decoders(tiny_unetr, vit_ckpt):
    """With the transferred weights, a one-patch-deep volume through the 3D PTA gives the pre-trained 2D
    decoder's attention maps on the same image (same position layout in plane, depth term zero)."""
    pre, path = vit_ckpt
    seg = MosmosUNETR(1, 4, img_size=(96, 96, 16), class_names=NAMES, radiological_flip=False, **tiny_unetr).eval()
    transfer_pretrained(seg, path)
    img = torch.rand(1, 96, 96)
    with torch.no_grad():  # the network standardises its input as CLIP's preprocessing does
        _, s2d, grid = pre.encode_image(seg.encoder.standardise(img).expand(3, -1, -1).unsqueeze(0))
        _, attn2d = pre.decoder(class_embeddings(pre, NAMES), s2d, grid)
        attn3d = seg.attention_maps(img[..., None].expand(-1, -1, -1, 16).unsqueeze(0))
    assert attn3d.shape == (1, 4, 6, 6, 1)
    torch.testing.assert_close(attn3d[..., 0].reshape(1, 4, 36), attn2d, rtol=1e-4, atol=1e-5)


def test_pixel_tag_attention_maps_are_the_same_in_training_and_evaluation(tiny_unetr, vit_ckpt):
    seg = MosmosUNETR(1, 4, img_size=(64, 64, 32), class_names=NAMES, **tiny_unetr)
    transfer_pretrained(seg, vit_ckpt[1])
    tokens = torch.randn(2, 4 * 4 * 2, 64)
    train_maps = seg.pta.train()(tokens, seg.grid)
    torch.testing.assert_close(train_maps.flatten(2).sum(-1), torch.ones(2, 4))
    torch.testing.assert_close(train_maps, seg.pta.eval()(tokens, seg.grid))


def test_inflation_and_position_resize_rules():
    k2 = torch.randn(8, 3, 16, 16)
    k3 = inflate_patch_kernel(k2, in_channels=4, depth=16)
    assert k3.shape == (8, 4, 16, 16, 16)
    # a volume constant over depth and channels sees the RGB-summed kernel: sum over C and depth = sum over RGB
    torch.testing.assert_close(k3.sum(dim=(1, 4)), k2.sum(dim=1))
    pos = torch.randn(1 + 14 * 14, 8)
    out = resize_position_grid(pos, (6, 6, 3))
    assert out.shape == (1 + 108, 8) and torch.equal(out[0], pos[0])
    grid = out[1:].reshape(6, 6, 3, 8)
    torch.testing.assert_close(grid[:, :, 0], grid[:, :, 2])  # broadcast over depth
    same = resize_position_grid(pos, (14, 14, 1))
    torch.testing.assert_close(same, pos)  # same grid: unchanged


def test_resnet_transfer_computes_the_same_function(tiny_unet, rn_ckpt):
    pre, path = rn_ckpt
    seg = MosmosUNet2D(3, 4, class_names=NAMES, radiological_flip=False, **tiny_unet).eval()
    report = transfer_pretrained(seg, path)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        tokens = seg.encoder(x).tokens  # standardises with CLIP's mean/std, as CLIP's own preprocessing does
        _, s_pre, _ = pre.encode_image(seg.encoder.standardise(x))
        s_seg = seg.encoder.project(tokens)
    torch.testing.assert_close(s_seg, s_pre, rtol=1e-4, atol=1e-4)
    assert "encoder.layer4.0.conv1.weight" in report.transferred and not report.inflated


def test_class_embeddings_are_a_frozen_buffer_computed_once(tiny_unetr, vit_ckpt):
    pre, path = vit_ckpt
    seg = MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=NAMES, **tiny_unetr)
    transfer_pretrained(seg, path)
    expected = class_embeddings(pre, NAMES)
    torch.testing.assert_close(seg.pta.class_embeddings, expected)
    assert "pta.class_embeddings" in seg.state_dict()  # saved and exported with the model
    assert not seg.pta.class_embeddings.requires_grad
    assert not torch.allclose(expected[3], expected[1])  # the open-set name has its own embedding
    before = seg.pta.class_embeddings.clone()
    sum(o.sum() for o in seg.train()(torch.rand(1, 1, 32, 32, 16))).backward()
    torch.testing.assert_close(seg.pta.class_embeddings, before)


def test_transfer_errors(tiny_unetr, tiny_unet, vit_ckpt, rn_ckpt, tmp_path):
    with pytest.raises(ValueError, match="needs a ViT"):
        transfer_pretrained(MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=NAMES, **tiny_unetr), rn_ckpt[1])
    with pytest.raises(ValueError, match="needs a CLIP ResNet"):
        transfer_pretrained(MosmosUNet2D(1, 4, class_names=NAMES, **tiny_unet), vit_ckpt[1])
    wide = dict(tiny_unetr, hidden_size=128, num_heads=4)
    with pytest.raises(ValueError, match="width 64"):
        transfer_pretrained(MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=NAMES, **wide), vit_ckpt[1])
    gelu = dict(tiny_unetr, quick_gelu=False)
    with pytest.raises(ValueError, match="quick_gelu=True"):
        transfer_pretrained(MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=NAMES, **gelu), vit_ckpt[1])
    with pytest.raises(FileNotFoundError, match="not found"):
        prepare_network(
            MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=NAMES, **tiny_unetr), tmp_path / "missing.pt"
        )
    # PTA without pre-trained weights runs with a warning (Table 4's "no pre-training" row; test_paper_fidelity)
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"junk")
    (tmp_path / "model.json").write_text(vit_ckpt[1].with_suffix(".json").read_text())
    with pytest.raises(RuntimeError, match="not a readable"):
        prepare_network(MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=NAMES, **tiny_unetr), bad)
    net = MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=NAMES, **tiny_unetr)
    with pytest.raises(RuntimeError, match="no class embeddings"):
        net(torch.rand(1, 1, 32, 32, 16))


@pytest.mark.parametrize("kwargs", [{}, {"include_background": False, "lambda_dice": 0.5}])
def test_seg_loss_is_dicece_plus_lambda_pta(kwargs):
    """Both branches are MONAI's DiceCE (one one-hot target shared): the same value and gradients as two DiceCE
    calls, from the network's (segmentation, pta) pair or the stacked tensor earlier networks returned."""
    torch.manual_seed(0)
    pred, aux = torch.randn(2, 4, 8, 8, 4, requires_grad=True), torch.randn(2, 4, 8, 8, 4, requires_grad=True)
    y = torch.randint(0, 4, (2, 1, 8, 8, 4)).float()
    ref = DiceCELoss(to_onehot_y=True, softmax=True, **kwargs)
    expected = ref(pred, y) + 0.8 * ref(aux, y)
    grads = torch.autograd.grad(expected, (pred, aux))
    loss = MosmosSegLoss(lambda_pta=0.8, **kwargs)
    total = loss(TrainingOutput(pred, aux), y)
    torch.testing.assert_close(total, expected)
    for got, want in zip(torch.autograd.grad(total, (pred, aux)), grads):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(loss(torch.stack([pred, aux], 1), y), expected)
    torch.testing.assert_close(loss(pred, y), ref(pred, y))
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1]])  # case 0 does not annotate class 2: marginal loss
    torch.testing.assert_close(
        loss((pred, aux), (y, mask)), ref(marginal_logits(pred, mask), y) + 0.8 * ref(marginal_logits(aux, mask), y)
    )
    with pytest.raises(ValueError, match="not \\(B, 1"):
        loss((pred, aux), torch.zeros(2, 4, 8, 8, 4))
    with pytest.raises(ValueError, match="differ in dimensions"):
        loss((pred, aux), y[:, 0])


def test_sigmoid_seg_loss_is_dicece_plus_lambda_pta():
    torch.manual_seed(0)
    pred, aux = torch.randn(2, 3, 8, 8, 4), torch.randn(2, 3, 8, 8, 4)
    y = (torch.rand(2, 3, 8, 8, 4) > 0.5).float()
    ref = DiceCELoss(sigmoid=True)
    torch.testing.assert_close(MosmosSegLoss(sigmoid=True)((pred, aux), y), ref(pred, y) + 0.8 * ref(aux, y))


def test_unet2d_checkpoints_written_before_the_encoder_held_its_projection_still_load(tiny_unet):
    """Before 0.5 the PTA projection was ``v_proj``/``c_proj`` on the network; such a state_dict loads (strictly)."""
    net = MosmosUNet2D(1, 3, **tiny_unet)
    old = {
        k.replace("encoder.v_proj.", "v_proj.").replace("encoder.c_proj.", "c_proj."): v
        for k, v in net.state_dict().items()
    }
    assert "v_proj.weight" in old and "c_proj.bias" in old
    fresh = MosmosUNet2D(1, 3, **tiny_unet)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.encoder.c_proj.weight, net.encoder.c_proj.weight)
