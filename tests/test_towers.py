"""Pretrained towers from local files: an open_clip model folder with a Hugging Face text tower (BiomedCLIP's
layout), a timm image tower joined to a Hugging Face text tower (``mosmos-lite``), prompts through the text
model's ``inputs_embeds``, the EfficientNet encoder of the 2D U-Net, and - where ``scripts/get_towers.py`` has
put them in ``.towers/`` - the real EfficientNet-Lite0 and MiniLM weights against their reference functions."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mosmos_components.checkpoint import load_pretrain_network, load_segmentation_network, save_network
from mosmos_components.networks import MosmosPretrainNet, MosmosUNet, TagPromptLearner
from mosmos_components.networks.mosmos_clip import CLIP_MEAN, CLIP_STD, _build_clip
from mosmos_components.transfer import class_embeddings, prepare_network

REPO = Path(__file__).resolve().parent.parent
TOWERS = Path(os.environ.get("MOSMOS_TOWERS", REPO / ".towers"))
WORDS = "the a of is in and with no normal enlarged liver heart lung kidney left right ventricle myocardium".split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random tiny BERT in Hugging Face's folder format (config, WordPiece vocabulary, weights)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz.,;"]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def openclip_folder(tmp_path_factory, tiny_bert):
    """A tiny CLIP in open_clip's model-folder format, as BiomedCLIP is released: open_clip_config.json (a ViT and
    a BERT text tower), open_clip_model.safetensors and the tokenizer files."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny_openclip")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {
            "hf_model_name": str(tiny_bert),
            "hf_tokenizer_name": str(tiny_bert),
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 32,
        },
    }
    torch.manual_seed(1)
    model = _build_clip(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    preprocess = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}))
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert / f).is_file():
            (folder / f).write_bytes((tiny_bert / f).read_bytes())
    return folder


def test_an_open_clip_folder_loads_with_its_weights_and_tokenizer(openclip_folder, tmp_path):
    from safetensors.torch import load_file
    from transformers import BertTokenizerFast

    net = MosmosPretrainNet("ignored", clip_pretrained=f"local-dir:{openclip_folder}", decoder_heads=4)
    assert net.model_name == f"local-dir:{openclip_folder}" and net.hf_text and net.context_length == 32
    saved = load_file(str(openclip_folder / "open_clip_model.safetensors"))
    state = net.clip.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k in state) and set(saved) <= set(state)
    ids = net.tokenizer(["the liver is enlarged"])[0]
    ref = BertTokenizerFast.from_pretrained(openclip_folder)("the liver is enlarged")["input_ids"]
    assert ids[: len(ref)].tolist() == ref and int(ids[len(ref)]) == 0
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json"):
        MosmosPretrainNet("x", clip_pretrained=f"local-dir:{openclip_folder.parent}")
    # the CLIP baselines' checkpoint (mosmos clip-checkpoint) from the folder: weights, sidecar and tokenizer files
    from mosmos_components.transfer import save_clip_checkpoint

    save_clip_checkpoint(tmp_path / "clip.pt", "unused", f"local-dir:{openclip_folder}")
    rebuilt = load_pretrain_network(tmp_path / "clip.pt")
    assert all(torch.equal(rebuilt.clip.state_dict()[k], v) for k, v in saved.items())
    assert json.loads((tmp_path / "clip.json").read_text())["mosmos_pretrained"] is False


def test_hf_prompts_go_through_inputs_embeds(openclip_folder):
    """Without context vectors a prompt is [CLS] name [SEP]: through inputs_embeds it equals the text tower on the
    same ids; with them, the context vectors are what the tower sees at their positions (and get gradients)."""
    net = MosmosPretrainNet("x", clip_pretrained=f"local-dir:{openclip_folder}", decoder_heads=4).eval()
    names = ["liver", "left ventricle"]
    plain = TagPromptLearner(names, 32, net.context_length, learnable_context=False, tokenizer=net.tokenizer)
    with torch.no_grad():
        direct = net.clip.encode_text(net.tokenizer(names))
        assert torch.allclose(plain(net.clip), direct, atol=1e-5)
    queries = net.tag_queries(net.prompt.tokenize(names))
    queries.sum().backward()
    assert net.prompt.ctx.grad is not None and net.prompt.ctx.grad.abs().sum() > 0
    tokens = net.prompt.tokenize(names)
    assert (
        tokens[0, 0] == net.prompt._ids.start
        and (tokens[0, 1 : 1 + net.prompt.n_ctx] == net.prompt._ids.placeholder).all()
    )


def test_pretrain_bundle_from_an_open_clip_folder_then_transfer_and_rebuild(
    openclip_folder, roco_dir, btcv_dir, tmp_path, bundle_run
):
    """mosmos_pretrain from local-dir: (two steps), the checkpoint carries the text tower's config and tokenizer,
    btcv_seg fine-tunes from it (one epoch), and both rebuild from their sidecars alone, the original folders gone."""
    import shutil

    pre_dir = tmp_path / "pre"
    bundle_run(
        "mosmos_pretrain",
        ["train.json", "demo.json"],
        roco_dir,
        pre_dir,
        clip_pretrained=f"local-dir:{openclip_folder}",
        decoder_heads=4,
        max_epochs=1,
    )
    ckpt = pre_dir / "models" / "model.pt"
    side = json.loads(ckpt.with_suffix(".json").read_text())
    assert side["assets"] == {"text_tower": "model_text_tower"}
    # the class-query separation is a pre-training metric: in the validation history and the sidecar
    history = (pre_dir / "eval" / "val_history.csv").read_text().splitlines()[0].split(",")
    for key in ("query_cosine_acdc", "query_cosine_btcv", "query_cosine_right_ventricle_vs_left_ventricle"):
        assert key in history and -1.0 <= side["metrics"][key] <= 1.0
    assert (pre_dir / "models" / "model_text_tower" / "vocab.txt").is_file()
    moved = tmp_path / "elsewhere"
    shutil.copytree(pre_dir / "models", moved)
    shutil.move(str(openclip_folder), str(openclip_folder) + "_gone")
    try:
        seg_dir = tmp_path / "seg"
        unetr = dict(hidden_size=32, num_layers=4, num_heads=2, embed_dim=32, quick_gelu=False, decoder_heads=4)
        bundle_run("btcv_seg", ["train.json", "demo.json"], btcv_dir, seg_dir, moved / "model.pt", **unetr)
        pre = load_pretrain_network(moved / "model.pt")
        seg = load_segmentation_network(seg_dir / "models" / "model.pt")
        names = seg.pta.class_names
        assert torch.allclose(seg.pta.class_embeddings, class_embeddings(pre, names), atol=1e-5)
        again = load_segmentation_network(seg_dir / "models" / "model.pt")
        x = torch.rand(1, 1, 32, 32, 16)
        with torch.no_grad():
            assert torch.equal(seg(x), again(x))
    finally:
        shutil.move(str(openclip_folder) + "_gone", str(openclip_folder))


def test_a_timm_image_tower_and_a_hf_text_tower_pretrain_and_transfer_into_the_2d_unet(tiny_bert, tmp_path):
    """mosmos-lite's mechanism on a random EfficientNet-Lite0 and the tiny BERT: one step with the text tower
    frozen and the image tower at its own rate, then the 2D U-Net on the 'timm_cnn' encoder from it."""
    torch.manual_seed(0)
    net = MosmosPretrainNet("mosmos-lite", text_tower=str(tiny_bert), decoder_heads=4)
    assert net.image_mean == (0.5, 0.5, 0.5) and type(net.clip.visual).__name__ == "TimmModel"
    groups = net.parameter_groups(1e-3, image_tower_lr=1e-4, text_tower_lr=0)
    assert [g["name"] for g in groups] == ["image", "prompt, decoder, classifier"] and groups[0]["lr"] == 1e-4
    text_before = {k: v.clone() for k, v in net.clip.text.state_dict().items()}
    ctx_before, stem_before = net.prompt.ctx.detach().clone(), net.clip.visual.trunk.conv_stem.weight.detach().clone()
    opt = torch.optim.AdamW(groups)
    out = net(torch.rand(2, 3, 64, 64), net.tokenizer(["the liver is enlarged", "normal heart"]))
    (out["tag_logits"].sum() + out["image_features"] @ out["text_features"].t()).sum().backward()
    opt.step()
    after = net.clip.text.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in text_before.items() if not k.startswith("proj."))  # frozen
    assert not torch.equal(text_before["proj.weight"], after["proj.weight"])  # its new projection trains
    assert not torch.equal(ctx_before, net.prompt.ctx) and not torch.equal(
        stem_before, net.clip.visual.trunk.conv_stem.weight
    )
    ckpt = tmp_path / "pre" / "model.pt"
    ckpt.parent.mkdir()
    save_network(net, ckpt)
    rebuilt = load_pretrain_network(ckpt).eval()
    net.eval()
    image, text = torch.rand(1, 3, 64, 64), net.tokenizer(["the liver"])
    with torch.no_grad():
        a, b = net(image, text), rebuilt(image, text)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in ("image_features", "text_features", "tag_logits"))
    names = ["background", "right ventricle", "myocardium", "left ventricle"]
    seg = MosmosUNet(1, 4, encoder="timm_cnn", encoder_args={"embed_dim": 384}, class_names=names, decoder_heads=4)
    prepare_network(seg, str(ckpt))
    assert torch.equal(seg.encoder.trunk.conv_stem.weight, net.clip.visual.trunk.conv_stem.weight)
    assert torch.equal(seg.encoder.proj.weight, net.clip.visual.head.proj.weight)
    seg.train()
    out = seg(torch.rand(2, 1, 64, 64))
    (out.segmentation.sum() + out.pta.sum()).backward()
    assert seg.encoder.trunk.conv_stem.weight.grad is not None
    with pytest.raises(ValueError, match="needs a timm image tower"):
        from mosmos_components.networks.mosmos_clip import MosmosPretrainNet as P

        tiny = P("mosmos-tiny-vit", _warn_random=False)
        save_network(tiny, tmp_path / "vit.pt")
        prepare_network(
            MosmosUNet(1, 4, encoder="timm_cnn", encoder_args={"embed_dim": 64}, class_names=names),
            str(tmp_path / "vit.pt"),
        )


def test_mosmos_lite_without_a_text_tower_says_what_it_needs():
    with pytest.raises(ValueError, match="give its local folder"):
        MosmosPretrainNet("mosmos-lite")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        MosmosPretrainNet("mosmos-lite", text_tower=str(REPO))


needs_towers = pytest.mark.skipif(
    not (TOWERS / "efficientnet_lite0.pth").is_file() or not (TOWERS / "all-MiniLM-L6-v2").is_dir(),
    reason="real towers not fetched (python scripts/get_towers.py)",
)


def _grace_hopper(size: int = 224) -> torch.Tensor:
    import matplotlib.cbook
    from PIL import Image

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.tensor(np.asarray(image) / 255.0, dtype=torch.float32).permute(2, 0, 1)[None]


@needs_towers
def test_efficientnet_lite0_weights_compute_the_imagenet_classifier_and_the_unet_encoder_its_features():
    """The weights mapped into timm's EfficientNet-Lite0 classify a real photograph as ImageNet says (Grace Hopper
    in uniform: 'military uniform', class 652), and the U-Net's encoder loaded through the ImageNet baseline
    computes that model's features."""
    import timm

    from mosmos_components.networks.mosmos_clip import load_image_tower_weights
    from mosmos_components.transfer import load_imagenet_timm

    reference = timm.create_model("efficientnet_lite0").eval()
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    load_image_tower_weights(reference, TOWERS / "efficientnet_lite0.pth")
    assert not any(torch.equal(initial[k], v) for k, v in reference.state_dict().items() if v.ndim == 4)
    photo = _grace_hopper()
    with torch.no_grad():
        top = reference((photo - 0.5) / 0.5).softmax(-1).topk(2).indices[0].tolist()
    assert 652 in top
    seg = MosmosUNet(3, 4, encoder="timm_cnn", use_pta=False).eval()
    load_imagenet_timm(seg, TOWERS / "efficientnet_lite0.pth")
    with torch.no_grad():
        ours = seg.encoder(photo).tokens
        theirs = reference.forward_features((photo - 0.5) / 0.5)
    assert torch.allclose(ours, theirs.flatten(2).transpose(1, 2), atol=1e-5)


@needs_towers
def test_minilm_text_tower_computes_sentence_embeddings_as_its_model_card_does():
    """MiniLM as a text tower: its pooled output is transformers' model + mean pooling over the attention mask
    (the weights' own recipe), and it ranks a paraphrase above an unrelated sentence."""
    from transformers import AutoModel, AutoTokenizer

    folder = TOWERS / "all-MiniLM-L6-v2"
    net = MosmosPretrainNet("mosmos-lite", text_tower=str(folder), decoder_heads=4).eval()
    sentences = ["The liver is enlarged.", "Hepatomegaly is present.", "The weather is sunny today."]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        reference = (hidden * mask).sum(1) / mask.sum(1)
        ids = net.tokenizer(sentences)
        attn = (ids != 0).long()
        ours = net.clip.text.pooler(net.clip.text.transformer(input_ids=ids, attention_mask=attn), attn)
    assert torch.allclose(ours, reference, atol=1e-4)
    e = F.normalize(ours, dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2


def test_transfer_warns_when_the_class_queries_have_collapsed(tmp_path, tiny_unetr):
    """A text side that maps every prompt onto one direction (a rank-one projection) gives every class the same
    query: transfer says so."""
    from mosmos_components.networks import MosmosUNETR

    net = MosmosPretrainNet("mosmos-tiny-vit", decoder_heads=4, _warn_random=False)
    with torch.no_grad():
        net.clip.text_projection.copy_(torch.ones_like(net.clip.text_projection))
    save_network(net, tmp_path / "collapsed.pt")
    names = ["background", "right ventricle", "myocardium", "left ventricle"]
    seg = MosmosUNETR(1, 4, class_names=names, **tiny_unetr)
    with pytest.warns(UserWarning, match="nearly indistinguishable"):
        prepare_network(seg, str(tmp_path / "collapsed.pt"))


def test_the_pretraining_measures_the_label_sets_the_bundles_use(repo):
    cfg = json.loads((repo / "bundles" / "mosmos_pretrain" / "configs" / "train.json").read_text())
    for name in ("acdc", "btcv"):
        spec = json.loads((repo / "bundles" / f"{name}_seg" / "bundle_spec.json").read_text())
        assert cfg["query_name_sets"][name] == spec["configs"]["train.json"]["class_names"]


def test_the_2d_unet_on_efficientnet_trains_from_imagenet_weights_through_the_bundle(btcv_dir, tmp_path, bundle_run):
    """train.json + unet2d.json + unet2d_timm.json + baselines/imagenet_efficientnet.json: the ImageNet weights
    (efficientnet_pytorch's names, as the registry's file has them) reach the encoder, the model rebuilds from
    its sidecar."""
    import timm

    from mosmos_components.checkpoint import read_sidecar

    torch.manual_seed(0)
    reference = timm.create_model("efficientnet_lite0")
    names = [f"_t{i}" for i in range(len(reference.state_dict()))]  # another layout, same tensors in order
    torch.save(dict(zip(names, reference.state_dict().values())), tmp_path / "imagenet.pth")
    configs = ["train.json", "unet2d.json", "unet2d_timm.json", "demo.json", "baselines/imagenet_efficientnet.json"]
    bundle_run("btcv_seg", configs, btcv_dir, tmp_path, tmp_path / "imagenet.pth", batch_size=2, num_samples=2)
    side = read_sidecar(tmp_path / "models" / "model.pt")
    assert side["network"] == "MosmosUNet" and side["encoder"] == "timm_cnn"
    net = load_segmentation_network(tmp_path / "models" / "model.pt")
    assert net.pta is None and type(net.encoder.trunk).__name__ == "EfficientNet"
    again = load_segmentation_network(tmp_path / "models" / "model.pt")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), again(x))


def test_prompt_context_can_start_from_words(tiny_bert, tmp_path):
    """CoOp's initialisation from words: M is the words' token count, the context starts as their embeddings, and
    the checkpoint rebuilds with the same prompt."""
    net = MosmosPretrainNet("mosmos-lite", text_tower=str(tiny_bert), decoder_heads=4, ctx_init="the heart of a")
    words = net.tokenizer.tokenizer.encode("the heart of a", add_special_tokens=False)
    embed = net.clip.text.transformer.get_input_embeddings()
    assert net.prompt.n_ctx == len(words) == 4
    assert torch.equal(net.prompt.ctx.detach(), embed(torch.tensor(words)).detach())
    save_network(net, tmp_path / "m.pt")
    again = load_pretrain_network(tmp_path / "m.pt")
    assert again.prompt.n_ctx == 4 and torch.equal(again.prompt.ctx, net.prompt.ctx)


def test_a_clip_with_a_timm_vit_transfers_into_unetr(tmp_path):
    """BiomedCLIP's image tower is a timm ViT with CLIP's standardisation: it goes into UNETR's encoder
    (vit_style 'timm', image_mean/std the pre-training's), blocks one to one and the projection head transposed."""
    from mosmos_components.networks import MosmosUNETR

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_pool": "", "timm_proj": "linear"},
        "text_cfg": {"context_length": 40, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    torch.manual_seed(0)
    pre = MosmosPretrainNet("biomedclip-like", model_cfg=cfg, decoder_heads=4, _warn_random=False)
    save_network(pre, tmp_path / "pre.pt")
    names = ["background", "liver", "spleen"]
    kw = dict(img_size=(32, 32, 16), hidden_size=192, num_layers=12, num_heads=3, embed_dim=32, decoder_heads=4)
    seg = MosmosUNETR(1, 3, class_names=names, vit_style="timm", image_mean=CLIP_MEAN, image_std=CLIP_STD, **kw)
    prepare_network(seg, str(tmp_path / "pre.pt"))
    trunk = pre.clip.visual.trunk
    block = seg.encoder.transformer.resblocks[3]
    assert torch.equal(block.attn.in_proj_weight, trunk.blocks[3].attn.qkv.weight)
    assert torch.equal(seg.encoder.proj, pre.clip.visual.head.proj.weight.t())
    assert torch.equal(seg.encoder.class_embedding, trunk.cls_token.reshape(-1))
    with torch.no_grad():
        assert seg.eval()(torch.rand(1, 1, 32, 32, 16)).shape == (1, 3, 32, 32, 16)
    other = MosmosUNETR(1, 3, class_names=names, vit_style="timm", **kw)  # timm's 0.5 / 0.5, not the pre-training's
    with pytest.raises(ValueError, match="set image_mean/image_std"):
        prepare_network(other, str(tmp_path / "pre.pt"))


def test_a_hugging_face_tower_without_transformers_names_the_extra(monkeypatch, tiny_bert):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r'pip install "mosmos\[text\]"'):
        MosmosPretrainNet("mosmos-lite", text_tower=str(tiny_bert))
