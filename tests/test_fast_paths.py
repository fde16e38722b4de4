"""The speed-ups of issue 12 compute what the plain formulas compute: each fast path against its reference."""

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from mosmos_components.networks import MosmosPretrainNet, MosmosUNETR
from mosmos_components.networks.mosmos_clip import encode_text_embeddings
from mosmos_components.networks.pta import PixelTagAttention
from mosmos_components.networks.tag_decoder import TagDecoder, TagDecoderLayer


def test_written_out_attention_is_multihead_attention():
    torch.manual_seed(0)
    layer = TagDecoderLayer(32, heads=4, dropout=0.1).eval()
    q, mem = torch.randn(2, 5, 32), torch.randn(2, 12, 32)
    with torch.no_grad():
        ref_self = layer.self_attn(q, q, q, need_weights=False)[0]
        ref_out, ref_w = layer.cross_attn(q, mem, mem, need_weights=True)  # weights averaged over heads
        out_self, none = layer.attend(layer.self_attn, q, q, q)
        out, w = layer.attend(layer.cross_attn, q, mem, mem, need_weights=True)
        _, w_only = layer.attend(layer.cross_attn, q, mem, None, need_weights=True)
    assert none is None
    torch.testing.assert_close(out_self, ref_self)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(w_only, ref_w)


def test_decoder_outputs_skip_only_what_is_not_asked_for():
    torch.manual_seed(0)
    dec = TagDecoder(32, layers=2, heads=4, dropout=0.0).train()  # training: no constant-query cache either
    queries, mem = torch.randn(6, 32), torch.randn(2, 16, 32)
    q_both, a_both = dec(queries, mem, (4, 4))
    q_only, a_none = dec(queries, mem, (4, 4), output="queries")
    q_none, a_only = dec(queries, mem, (4, 4), output="attention")
    assert a_none is None and q_none is None
    torch.testing.assert_close(q_only, q_both)
    torch.testing.assert_close(a_only, a_both)
    assert torch.allclose(a_only.sum(-1), torch.ones(2, 6))
    with pytest.raises(ValueError, match="output"):
        dec(queries, mem, (4, 4), output="maps")


def test_constant_first_layer_is_kept_in_inference_and_follows_weight_changes():
    torch.manual_seed(0)
    dec = TagDecoder(32, layers=2, heads=4, dropout=0.0)
    queries, mem = torch.randn(6, 32), torch.randn(3, 16, 32)
    with torch.no_grad():
        ref = dec.train()(queries, mem, (4, 4), output="attention")[1]  # training mode: computed, not kept
        assert dec._first_cache is None
        cached = dec.eval()(queries, mem, (4, 4), output="attention")[1]
        assert dec._first_cache is not None
        again = dec(queries, mem, (4, 4), output="attention")[1]
        torch.testing.assert_close(cached, ref)
        torch.testing.assert_close(again, ref)
        dec.layers[0].norm1.weight.mul_(3.0)  # an optimizer step or a load changes the weights in place
        changed = dec(queries, mem, (4, 4), output="attention")[1]
        fresh = dec.train()(queries, mem, (4, 4), output="attention")[1]
    torch.testing.assert_close(changed, fresh)
    assert not torch.allclose(changed, ref)


@pytest.mark.parametrize("grid,size", [((4, 4), (32, 32)), ((2, 3, 2), (32, 48, 16))])
@pytest.mark.parametrize("sigmoid", [False, True])
def test_pta_logits_equal_interpolating_the_maps(grid, size, sigmoid):
    """``LI(A)/tau`` by per-axis matrices and with scaling and offsets on the token grid = F.interpolate, then
    scaled (the formula as first written)."""
    torch.manual_seed(0)
    pta = PixelTagAttention(5, 32, sigmoid_offset=sigmoid, mode="score")
    if sigmoid:
        pta.aux_offset.data.normal_()
    attn = torch.rand(2, 5, *grid).softmax(1).requires_grad_(True)
    mode = "bilinear" if len(grid) == 2 else "trilinear"
    up = F.interpolate(attn, size=size, mode=mode, align_corners=False)
    ref = up / pta.tau
    if sigmoid:
        ref = (up - 1.0 / math.prod(grid)) / pta.tau + pta.aux_offset.view(1, -1, *[1] * len(grid))
    out = pta.aux_logits(attn, size)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(ref)
    a64 = attn.detach().double().requires_grad_(True)  # the gradient against float64 (fp32 kernels differ in rounding)
    up64 = F.interpolate(a64, size=size, mode=mode, align_corners=False)
    g_ref = torch.autograd.grad((up64 / pta.tau.double() * weights.double()).sum(), a64)[0]
    g_out = torch.autograd.grad((out * weights).sum(), attn)[0]
    torch.testing.assert_close(g_out.double(), g_ref, atol=1e-6 * float(g_ref.abs().max()), rtol=1e-5)


def test_flipping_before_upsampling_is_flipping_after():
    """The networks flip the small maps, not the full-resolution PTA logits: linear interpolation is symmetric."""
    pta = PixelTagAttention(3, 32, mode="score")
    attn = torch.rand(1, 3, 3, 4, 2)
    a = pta.aux_logits(attn.flip((2, 3)), (24, 32, 16))
    b = pta.aux_logits(attn, (24, 32, 16)).flip((2, 3))
    torch.testing.assert_close(a, b)


def test_unetr_training_output_is_unchanged_by_the_fast_paths(tiny_unetr):
    """The training output (segmentation and PTA logits) equals the same network computed the plain way."""
    torch.manual_seed(0)
    net = MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=list("abcd"), **tiny_unetr).train()
    net.pta.set_class_embeddings(torch.randn(4, tiny_unetr["embed_dim"]))
    x = torch.rand(2, 1, 32, 32, 16)
    out = net(x)
    # the plain way: the decoder's attention through nn.MultiheadAttention-style weights, F.interpolate, flips after
    feats = net.encoder(net._flip(x)).tokens @ net.encoder.proj
    dec = net.pta.decoder
    q = net.pta.class_embeddings.unsqueeze(0).expand(2, -1, -1)
    pos = dec.position(net.grid, x.device)
    for layer in dec.layers[:-1]:
        q, _ = layer(q, feats, pos)
    last = dec.layers[-1]
    q = last.norm1(q + last.self_attn(q, q, q, need_weights=False)[0])
    attn = last.cross_attn(q, feats + pos, feats, need_weights=True)[1]
    attn = attn.reshape(2, 4, *net.grid)
    ref_pta = F.interpolate(attn, size=(32, 32, 16), mode="trilinear", align_corners=False) / net.pta.tau
    torch.testing.assert_close(out.pta, net._flip(ref_pta), atol=1e-4, rtol=1e-4)


def test_tag_prompts_are_encoded_up_to_their_last_token_only():
    """The text tower's attention is causal: encoding the prompts on their used length gives the full-length
    result."""
    torch.manual_seed(0)
    net = MosmosPretrainNet("mosmos-tiny-vit", _warn_random=False).eval()
    p = net.prompt
    assert p.length < p.tokens.shape[1]
    with torch.no_grad():
        emb = net.clip.token_embedding(p.tokens)
        emb = torch.cat([emb[:, :1], p.ctx.unsqueeze(0).expand(len(emb), -1, -1), emb[:, 1 + p.n_ctx :]], dim=1)
        full = encode_text_embeddings(net.clip, emb, p.tokens)
        fast = net.tag_queries()
        other = net.tag_queries(p.tokenize(["liver", "left kidney"]))
    torch.testing.assert_close(fast, full)
    torch.testing.assert_close(other, full[[net.tags.index("liver"), net.tags.index("left kidney")]])


def test_amp_autocast_picks_the_device_precision():
    from mosmos_components.inference import autocast

    assert not autocast("cpu")._enabled  # off on a CPU unless asked
    cpu = autocast("cpu", True)
    assert cpu._enabled and cpu.fast_dtype == torch.bfloat16
    with torch.inference_mode(), cpu:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_stitched_output_stays_on_the_cpu_without_a_gpu():
    from mosmos_components.inference import stitch_device

    assert stitch_device("cpu", 14, (512, 512, 100)) == torch.device("cpu")


def test_benchmark_writes_the_keys_the_readme_table_reads(tmp_path, monkeypatch, tiny_unetr, repo):
    """`scripts/benchmark.py --json` writes its ratios (the values are measured, not asserted)."""
    monkeypatch.syspath_prepend(str(repo / "scripts"))
    import benchmark

    monkeypatch.setitem(benchmark.SIZES["tiny"], "unetr", dict(tiny_unetr, img_size=(32, 32, 16)))
    out = tmp_path / "bench.json"
    benchmark.main(size="tiny", only="window,train,pretrain,compile", repeats=1, pretrain_batch=4, json=str(out))
    res = json.loads(out.read_text())
    for key in (
        "pta_infer_ratio_vs_no_pta",
        "pta_infer_ratio_vs_monai_unetr",
        "pta_train_step_ratio_vs_no_pta",
        "pta_infer_ratio_vs_no_pta_amp",
        "pta_train_step_ratio_vs_no_pta_amp",
        "pretrain_step_ratio_vs_open_clip",
        "compile_window_ratio_vs_eager",
        "compile_seconds",
        "device",
        "size",
    ):
        assert key in res
    assert res["window_seconds"]["mosmos_pta"] > 0
    assert set(res["train_loss_seconds"]) == {"pta_pair", "dicece"}
    # the tag decoder and prompts are arithmetic open_clip's step does not have: counted, more than CLIP's alone
    assert res["pretrain_step_flops"]["open_clip"] > 0 and res["pretrain_flop_ratio_vs_open_clip"] > 1.0
    with pytest.raises(ValueError, match="unknown parts"):
        benchmark.main(only="nothing")
    sys.modules.pop("benchmark", None)


def test_training_loader_crops_from_cached_indices(btcv_dir, tmp_path):
    """MONAI's fast-training recipe: foreground/background indices computed once into the cache, the random crops
    read them, they do not travel in the batches; the loader's worker processes live across epochs (restarting
    them each epoch was most of the wait). A process loader, not MONAI's ThreadDataLoader: its thread ends the
    epoch silently when a transform fails."""
    from monai.bundle import ConfigParser

    from mosmos_components.bundle_runner import bundles_dir

    root = bundles_dir() / "btcv_seg"
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "train.json"), str(root / "configs" / "demo.json")])
    parser.update(
        {"bundle_root": str(root), "dataset_dir": str(btcv_dir), "output_dir": str(tmp_path), "num_workers": 1}
    )
    loader = parser.get_parsed_content("train#dataloader")
    assert type(loader).__name__ == "DataLoader" and loader.persistent_workers
    cached = loader.dataset._cache[0]
    assert {"label_fg_indices", "label_bg_indices"} <= set(cached)
    batch = next(iter(loader))
    assert not any(k.endswith("_indices") for k in batch)
    assert tuple(batch["image"].shape[2:]) == tuple(parser.get_parsed_content("roi_size"))
