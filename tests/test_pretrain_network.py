import open_clip
import pytest
import torch

from mosmos_components.checkpoint import load_pretrain_network, load_state_dict, save_network
from mosmos_components.networks import MosmosPretrainNet, create_clip, encode_text_embeddings
from mosmos_components.networks.tag_decoder import TagDecoder, TagDecoderLayer, sine_position_encoding


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return MosmosPretrainNet("mosmos-tiny-vit", decoder_heads=4).eval()


@pytest.mark.parametrize("name, grid", [("mosmos-tiny-vit", (6, 6)), ("mosmos-tiny-rn", (3, 3))])
def test_tiny_shapes(name, grid):
    net = MosmosPretrainNet(name, decoder_heads=4)
    img, txt = torch.randn(3, 3, 96, 96), torch.randint(1, 49000, (3, net.context_length))
    out = net(img, txt)
    assert out["image_features"].shape == (3, 64) and out["text_features"].shape == (3, 64)
    assert out["tag_logits"].shape == (3, 20) and out["logit_scale"].ndim == 0
    g, s, gr = net.encode_image(img)
    assert gr == grid and s.shape == (3, grid[0] * grid[1], 64)
    # the global feature is exactly CLIP's own image embedding
    torch.testing.assert_close(g, net.clip.encode_image(img))


@pytest.mark.parametrize("name, grid, dim", [("RN50", (7, 7), 1024), ("ViT-B-16", (14, 14), 512)])
def test_paper_backbones_shapes(name, grid, dim):
    net = MosmosPretrainNet(name).eval()
    with torch.no_grad():
        g, s, gr = net.encode_image(torch.randn(1, 3, 224, 224))
        out = net(torch.randn(1, 3, 224, 224), torch.randint(1, 49000, (1, 77)))
    assert gr == grid and s.shape == (1, grid[0] * grid[1], dim) and g.shape == (1, dim)
    assert out["tag_logits"].shape == (1, 20) and net.context_length == 77


def test_text_from_embeddings_matches_open_clip(tiny_vit):
    clip = tiny_vit.clip
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=40)(["a liver lesion", "left renal cyst"])
    torch.testing.assert_close(
        encode_text_embeddings(clip, clip.token_embedding(tokens), tokens), clip.encode_text(tokens)
    )


def test_prompts_encoded_once_per_step(tiny_vit):
    calls = []
    h = tiny_vit.prompt.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    try:
        tiny_vit(torch.randn(5, 3, 96, 96), torch.randint(1, 49000, (5, 40)))
    finally:
        h.remove()
    assert calls == [torch.Size([20, 64])]  # one call for the K tags, not one per image


def test_prompt_layout_and_ablation():
    net = MosmosPretrainNet("mosmos-tiny-vit", decoder_heads=4, n_ctx=16)
    tok = net.prompt.tokens
    assert tok.shape == (20, 40) and (tok[:, 0] == 49406).all()
    eot = tok.argmax(dim=1)
    assert (eot > 16).all() and (eot <= 1 + 16 + 8).all()  # context + at most 8 name tokens
    assert net.prompt.ctx.shape == (16, 64) and net.prompt.ctx.requires_grad
    plain = MosmosPretrainNet("mosmos-tiny-vit", decoder_heads=4, learnable_context=False)
    assert plain.prompt.ctx is None
    # without learnable context the queries are CLIP's plain text embeddings of the tag names
    expect = plain.clip.encode_text(open_clip.tokenizer.SimpleTokenizer(context_length=40)(plain.tags))
    torch.testing.assert_close(plain.tag_queries(), expect)


def test_learnable_context_changes_queries(tiny_vit):
    q0 = tiny_vit.tag_queries().detach().clone()
    with torch.no_grad():
        tiny_vit.prompt.ctx.add_(0.5)
    try:
        assert not torch.allclose(q0, tiny_vit.tag_queries())
    finally:
        with torch.no_grad():
            tiny_vit.prompt.ctx.sub_(0.5)


def test_tag_decoder_attention_is_a_distribution():
    dec = TagDecoder(32, layers=2, heads=4).eval()
    out, attn = dec(torch.randn(7, 32), torch.randn(2, 12, 32), spatial=(3, 4))
    assert out.shape == (2, 7, 32) and attn.shape == (2, 7, 12)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 7))
    pe = sine_position_encoding((2, 3, 4), 64)
    assert pe.shape == (24, 64) and not torch.allclose(pe[0], pe[1])


def test_tag_decoder_maps_are_clean_softmax_weights_in_training():
    """nn.MultiheadAttention returns its weights after dropout; the decoder's maps must not be."""
    torch.manual_seed(0)
    layer = TagDecoderLayer(32, heads=4, dropout=0.5).train()
    q, memory = torch.randn(2, 7, 32), torch.randn(2, 12, 32)
    _, attn = layer(q, memory)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 7))
    # the same weights nn.MultiheadAttention gives without dropout (eval), from the same queries
    layer.eval()
    q1 = layer.norm1(q + layer.self_attn(q, q, q, need_weights=False)[0])
    _, ref = layer.cross_attn(q1, memory, memory, need_weights=True, average_attn_weights=True)
    torch.testing.assert_close(layer(q, memory)[1], ref)


def test_tag_decoder_keeps_the_2d_layout_in_plane_for_3d_grids():
    dec = TagDecoder(64, layers=1, heads=4, depth=3)
    pe2 = sine_position_encoding((4, 5), 64)  # what the 2D pre-trained decoder uses
    pe3 = dec.position((4, 5, 3), torch.device("cpu")).reshape(4, 5, 3, 64)
    for k in range(3):  # the pre-trained in-plane channel layout, broadcast over depth (depth term starts at 0)
        torch.testing.assert_close(pe3[:, :, k].reshape(20, 64), pe2)
    with torch.no_grad():
        dec.depth_position.copy_(torch.randn(3, 64))
    pe3 = dec.position((4, 5, 3), torch.device("cpu")).reshape(4, 5, 3, 64)
    assert not torch.allclose(pe3[:, :, 0], pe3[:, :, 1])  # the learnable term tells slices apart
    with pytest.raises(ValueError, match="depth 3"):
        dec.position((4, 5, 2), torch.device("cpu"))


def test_checkpoint_roundtrip_weights_only(tmp_path, tiny_vit):
    path = tmp_path / "model.pt"
    save_network(tiny_vit, path)
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net2 = load_pretrain_network(path).eval()
    img, txt = torch.randn(2, 3, 96, 96), torch.randint(1, 49000, (2, 40))
    with torch.no_grad():
        a, b = tiny_vit(img, txt), net2(img, txt)
    for k in ("image_features", "text_features", "tag_logits"):
        torch.testing.assert_close(a[k], b[k])


def test_wrong_checkpoints(tmp_path, tiny_vit):
    path = tmp_path / "model.pt"
    save_network(tiny_vit, path)
    other = MosmosPretrainNet("mosmos-tiny-rn", decoder_heads=4)
    torch.save(other.state_dict(), path)  # sidecar says ViT, weights are ResNet
    with pytest.raises(RuntimeError, match="model.pt"):
        load_pretrain_network(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="not a readable plain-tensor checkpoint"):
        load_state_dict(path)
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_pretrain_network(tmp_path / "nothing.pt")


def test_clip_initialisation_from_local_file(tmp_path):
    src = create_clip("mosmos-tiny-rn", warn_random=False)
    f = tmp_path / "clip_weights.pt"
    torch.save(src.state_dict(), f)
    net = MosmosPretrainNet("mosmos-tiny-rn", clip_pretrained=str(f), decoder_heads=4)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(net.clip.state_dict()[k], v)
    with pytest.warns(UserWarning, match="RANDOMLY"):
        MosmosPretrainNet("mosmos-tiny-rn", decoder_heads=4)
    with pytest.raises(FileNotFoundError, match="neither an existing file nor an open_clip tag"):
        MosmosPretrainNet("mosmos-tiny-rn", clip_pretrained="/no/such/weights.pt")
    with pytest.raises(TypeError, match="'pretrained'"):  # the name replaced by clip_pretrained in 0.7.0
        MosmosPretrainNet("mosmos-tiny-rn", pretrained=str(f), decoder_heads=4)


def test_held_out_retrieval_counts_ties_against_the_image_and_gives_intervals():
    """Two pairs with the same caption: neither image can claim its own report first (ties count against it);
    every figure has a bootstrap interval around it and its chance level."""
    from mosmos_components.metrics import retrieval_and_tag_report, retrieval_recall

    g = torch.Generator().manual_seed(0)
    images = torch.randn(30, 16, generator=g)
    texts = images + 0.01 * torch.randn(30, 16, generator=g)
    texts[1] = texts[0]  # a duplicated caption
    assert retrieval_recall(images, texts, 1) == pytest.approx(28 / 30)
    tags = torch.randint(0, 2, (30, 4), generator=g)
    rep = retrieval_and_tag_report(images, texts, tags.float() + 0.1 * torch.randn(30, 4, generator=g), tags)
    assert rep["recall_at_1"]["value"] == pytest.approx(28 / 30) and rep["recall_at_5"]["chance"] == 5 / 30
    for key in ("recall_at_1", "recall_at_10", "tag_map"):
        lo, hi = rep[key]["ci95"]
        assert lo <= rep[key]["value"] <= hi
    assert rep["tag_map"]["value"] == pytest.approx(1.0) and rep["tag_map"]["chance"] == pytest.approx(
        float(tags.float().mean())
    )
