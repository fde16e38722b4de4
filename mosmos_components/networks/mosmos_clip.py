"""The MOSMOS pre-training network (docs/method.md §3): an open_clip model, learnable tag prompts, the
Query2Label tag decoder and the class-wise classifier.

Backbones are open_clip architectures (``RN50``, ``ViT-B-16``, ...) or the tiny ones shipped in
``model_configs/`` for tests and the demo. CLIP weights come from an open_clip tag (needs the internet) or a
local file; with neither the network is initialised randomly and says so.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer, text_global_pool
from torch import nn

from mosmos_components.networks.tag_decoder import GroupWiseLinear, TagDecoder
from mosmos_components.tags import DEFAULT_TAGS

__all__ = [
    "MODEL_CONFIG_DIR",
    "register_model_configs",
    "create_clip",
    "resolve_clip",
    "encode_text_embeddings",
    "TagPromptLearner",
    "MosmosPretrainNet",
    "CLIP_MEAN",
    "CLIP_STD",
    "TEXT_ASSET_FILES",
    "text_tokenizer",
    "load_image_tower_weights",
]

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SCHEMAS = ("local-dir:", "hf-hub:")
# what a Hugging Face text tower needs besides its weights: its config and its tokenizer (copied next to a checkpoint)
TEXT_ASSET_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_registered = False


def register_model_configs() -> None:
    """Make the project's tiny architectures (``mosmos-tiny-vit``, ``mosmos-tiny-rn``) known to open_clip."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def _is_torchscript_archive(path: str) -> bool:
    """OpenAI's released CLIP files are TorchScript archives (a zip with ``code/`` and ``constants.pkl``), unlike
    ``torch.save`` state dicts (a zip with ``data.pkl`` only)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def resolve_quick_gelu(model_name: str, pretrained: str | None, force_quick_gelu: bool) -> bool:
    """Whether the CLIP must be built with QuickGELU: OpenAI's weights were trained with it, and running them with
    GELU silently computes another function. An open_clip tag whose weights are OpenAI's (``openai``) turns it on;
    OpenAI's own TorchScript file given without ``force_quick_gelu`` stops with that advice."""
    if force_quick_gelu or pretrained is None:
        return force_quick_gelu
    if os.path.isfile(pretrained):
        cfg = open_clip.get_model_config(model_name) or {}
        if _is_torchscript_archive(pretrained) and not cfg.get("quick_gelu", False):
            raise ValueError(
                f"{pretrained} is OpenAI's CLIP archive, trained with QuickGELU: set force_quick_gelu=True "
                "(bundles: --force_quick_gelu True; segmentation: --quick_gelu True), or use the "
                f"'{model_name}-quickgelu' model"
            )
        return False
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    if tag_cfg.get("quick_gelu", False):
        logger.info("CLIP '%s/%s' was trained with QuickGELU: building it with QuickGELU", model_name, pretrained)
        return True
    return False


def _build_clip(cfg: dict) -> CLIP | CustomTextCLIP:
    """An open_clip model from its config, as open_clip's factory builds it: a custom text tower (Hugging Face)
    or a ``custom_text`` config gives a :class:`CustomTextCLIP`, otherwise a :class:`CLIP`."""
    cfg = dict(cfg)
    cfg.pop("preprocess_cfg", None)  # the image standardisation: read by MosmosPretrainNet, not a model argument
    hf = "hf_model_name" in cfg.get("text_cfg", {})
    if hf:
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            raise ImportError(
                "this model's text tower is a Hugging Face model, which needs the transformers package: "
                'pip install "mosmos[text]"'
            )
    custom = bool(cfg.pop("custom_text", False)) or hf
    return CustomTextCLIP(**cfg) if custom else CLIP(**cfg)


def _with_towers(cfg: dict, text_tower: str | None, text_weights: bool) -> dict:
    """``cfg`` with its Hugging Face text tower read from the local folder ``text_tower`` (config and tokenizer,
    and the weights when ``text_weights``), and no tower downloading weights at creation."""
    cfg = json.loads(json.dumps(cfg))
    text, vision = cfg.setdefault("text_cfg", {}), cfg.setdefault("vision_cfg", {})
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    if "hf_model_name" in text:
        if text_tower:
            folder = Path(text_tower)
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(
                    f"text tower folder {folder} has no config.json: give a Hugging Face model folder "
                    "(config.json, tokenizer files and, to start from its weights, model.safetensors)"
                )
            text["hf_model_name"] = text["hf_tokenizer_name"] = str(folder.resolve())
        elif not text.get("hf_model_name"):
            raise ValueError(
                "this model's text tower is a Hugging Face model chosen by the user: give its local folder "
                "(text_tower=/path/to/folder, e.g. all-MiniLM-L6-v2 or PubMedBERT)"
            )
        text["hf_model_pretrained"] = bool(text_weights)
    elif text_tower:
        raise ValueError("text_tower is for models with a Hugging Face text tower (hf_model_name in text_cfg)")
    return cfg


def _read_local_dir(folder: str) -> tuple[dict, str | None]:
    """An open_clip model folder (``open_clip_config.json`` + weights + tokenizer files, as BiomedCLIP is
    released): its model config and weights file. The folder's tokenizer files, when present, are the tokenizer."""
    from open_clip.factory import _find_checkpoint_in_dir

    path = Path(folder)
    config = path / "open_clip_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"local-dir:{folder}: no open_clip_config.json (open_clip's model folder format)")
    try:
        whole = json.loads(config.read_text(encoding="utf-8"))
        cfg = dict(whole["model_cfg"])
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{config}: not an open_clip model config (needs a 'model_cfg' entry): {e}") from e
    if isinstance(whole.get("preprocess_cfg"), dict):
        cfg["preprocess_cfg"] = whole["preprocess_cfg"]
    text = cfg.get("text_cfg", {})
    if "hf_model_name" in text and any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "vocab.json")):
        text["hf_tokenizer_name"] = str(path.resolve())
    return cfg, _find_checkpoint_in_dir(path)


def _load_clip_file(model: nn.Module, path: str) -> None:
    try:
        open_clip.load_checkpoint(model, path, strict=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f"could not load CLIP weights from {path}: {e}") from e


def create_clip(*args, **kwargs) -> CLIP | CustomTextCLIP:
    """Build an open_clip model: :func:`resolve_clip`'s arguments, its model without the config."""
    return resolve_clip(*args, **kwargs)[0]


def resolve_clip(
    model_name: str,
    pretrained: str | None = None,
    force_quick_gelu: bool = False,
    model_cfg: dict | None = None,
    warn_random: bool = True,
    text_tower: str | None = None,
    image_tower_weights: str | None = None,
) -> tuple[CLIP | CustomTextCLIP, dict]:
    """Build an open_clip model and return it with the model config it was built from.

    Args:
        model_name: an open_clip architecture name (``"RN50"``, ``"ViT-B-16"``, ``"mosmos-tiny-vit"``, the shipped
            ``"mosmos-lite"``), or a whole model by open_clip's schemas: ``"local-dir:/path"`` (a folder in
            open_clip's format, e.g. BiomedCLIP as released) or ``"hf-hub:org/name"`` (downloads: needs the
            internet).
        pretrained: ``None`` (random, with a warning), a local weights file (open_clip/OpenAI state dict,
            ``.pt``/``.bin``/``.safetensors``), an open_clip tag such as ``"openai"`` (downloads), or a
            ``local-dir:``/``hf-hub:`` model, which then replaces ``model_name``.
        force_quick_gelu: use QuickGELU, as OpenAI's CLIP weights were trained with it.
        model_cfg: an explicit open_clip model config (as written in a checkpoint sidecar); overrides the
            registry lookup of ``model_name`` and loads no tower weights.
        warn_random: warn when no weights are given.
        text_tower: a local Hugging Face model folder for a model whose text tower is a Hugging Face model
            (``hf_model_name``): its config and tokenizer, and its weights unless CLIP weights are loaded.
        image_tower_weights: a weights file for a timm image tower (timm's names, or efficientnet_pytorch's
            for EfficientNets), loaded into the tower with every tensor checked.
    """
    register_model_configs()
    if pretrained and str(pretrained).startswith(SCHEMAS):
        model_name, pretrained = str(pretrained), None
    from_schema = model_name.startswith(SCHEMAS)
    loaded = from_schema or pretrained is not None
    if model_cfg is not None:
        cfg = _with_towers(model_cfg, None, False)
        if force_quick_gelu:
            cfg["quick_gelu"] = True
        model = _build_clip(cfg)
        loaded = True
    elif model_name.startswith("hf-hub:"):
        try:
            model = open_clip.create_model(model_name, pretrained_text=False)
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(
                f"could not fetch {model_name} ({e}). Without internet access, download the model folder elsewhere "
                "and pass it as local-dir:/path/to/folder"
            ) from e
        cfg = open_clip.get_model_config(model_name)
    elif model_name.startswith("local-dir:"):
        cfg, weights = _read_local_dir(model_name[len("local-dir:") :])
        if weights is None:
            raise FileNotFoundError(f"{model_name}: no weights file (open_clip_model.safetensors, *.bin, *.pth)")
        cfg = _with_towers(cfg, text_tower, False)
        model = _build_model_or_explain(cfg, model_name)
        _load_clip_file(model, weights)
        logger.info("CLIP initialised from %s (%s)", model_name, weights)
    else:
        force_quick_gelu = resolve_quick_gelu(model_name, pretrained, force_quick_gelu)
        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise ValueError(f"unknown open_clip model '{model_name}'; known: {open_clip.list_models()}")
        if force_quick_gelu:
            cfg["quick_gelu"] = True
        if pretrained is None or os.path.isfile(pretrained):
            cfg = _with_towers(cfg, text_tower, text_weights=pretrained is None)
            model = _build_model_or_explain(cfg, model_name)
            if pretrained is not None:
                _load_clip_file(model, pretrained)
                logger.info("CLIP '%s' initialised from local file %s", model_name, pretrained)
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in tags:
                raise FileNotFoundError(
                    f"clip_pretrained='{pretrained}' is neither an existing file nor an open_clip tag of "
                    f"'{model_name}' (tags: {tags})"
                )
            try:
                model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=force_quick_gelu)
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(
                    f"could not fetch open_clip weights '{model_name}/{pretrained}' ({e}). Without internet access, "
                    "download the weights elsewhere and pass the local file as `clip_pretrained`."
                ) from e
    if image_tower_weights:
        load_image_tower_weights(model.visual, image_tower_weights)
    towers = [w for w, given in (("text", text_tower and not loaded), ("image", image_tower_weights)) if given]
    if not loaded and warn_random:
        if towers:
            logger.info("open_clip model '%s': %s tower(s) pretrained, the rest random", model_name, towers)
        else:
            warnings.warn(
                f"MOSMOS: no CLIP weights given for '{model_name}': the image and text encoders are initialised "
                "RANDOMLY (the paper's 'without CLIP initialisation' ablation). Pass `clip_pretrained` (a local file, "
                "a local-dir: model folder or, online, an open_clip tag such as 'openai'), or pretrained towers.",
                stacklevel=2,
            )
    if not isinstance(model, (CLIP, CustomTextCLIP)):
        raise ValueError(f"'{model_name}' is a {type(model).__name__}; MOSMOS needs a CLIP with its own text tower")
    return model, cfg


def _build_model_or_explain(cfg: dict, source: str) -> CLIP | CustomTextCLIP:
    try:
        return _build_clip(cfg)
    except OSError as e:  # transformers could not find the text tower's config: offline, not in its cache
        name = cfg.get("text_cfg", {}).get("hf_model_name")
        raise RuntimeError(
            f"{source}: the text tower '{name}' could not be read ({e}); offline, give a local folder holding its "
            "config.json and tokenizer files as text_tower"
        ) from e


def text_tokenizer(clip: CLIP | CustomTextCLIP, context_length: int | None = None):
    """The tokenizer of ``clip``'s text tower: open_clip's CLIP BPE, or the Hugging Face tokenizer of an HF tower
    (open_clip's ``HFTokenizer``). Called on a list of texts it gives token ids (N, context_length)."""
    length = int(context_length or clip.context_length)
    if isinstance(getattr(clip, "text", None), HFTextEncoder):
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(clip.text.config.name_or_path, context_length=length)
    return open_clip.tokenizer.SimpleTokenizer(context_length=length)


def load_image_tower_weights(visual: nn.Module, path: str | os.PathLike) -> None:
    """Load a timm image tower's weights from ``path`` into ``visual`` (open_clip's ``TimmModel``) or into a timm
    model, every tensor checked: timm's own names, or a file in another layout with the same tensors in the same
    order (efficientnet_pytorch's ``_conv_stem``, ``_blocks.N``, ...), mapped one to one by position and shape. The
    classifier is dropped. A tensor that does not fit is an error naming the file."""
    from mosmos_components.networks.timm_encoder import map_by_position, read_weight_file

    trunk = visual.trunk if isinstance(visual, TimmModel) else visual
    state = read_weight_file(path)
    target = trunk.state_dict()
    mapped = map_by_position(state, target, str(path))
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise ValueError(f"{path}: the image tower's {missing[:3]} ... ({len(missing)}) are not in the file")
    trunk.load_state_dict(mapped, strict=True)
    logger.info("image tower: %d tensors loaded from %s", len(mapped), path)


def _text_module(clip: CLIP | CustomTextCLIP) -> nn.Module:
    """The module holding the text tower's parts: the CLIP itself, or a custom-text CLIP's ``text``."""
    return clip.text if isinstance(clip, CustomTextCLIP) else clip


def encode_text_embeddings(
    clip: CLIP | CustomTextCLIP, embeddings: torch.Tensor, tokens: torch.Tensor, length: int | None = None
) -> torch.Tensor:
    """CLIP's text tower from token *embeddings* (so some can be learnable), pooled at the EOT token.

    ``embeddings`` (N, L, width), ``tokens`` (N, L) -> (N, embed_dim). With ``embeddings =
    clip.token_embedding(tokens)`` this equals ``clip.encode_text(tokens)``.

    ``length``: run the tower on the first ``length`` positions only, when every sequence's pooled (EOT) token
    lies before it. The text tower's attention is causal, so no position before ``length`` sees the ones after
    it and the result is the same; the tag prompts (about 26 of CLIP's 77 positions) cost a third. Ignored for
    a tower without a causal mask or pooling that is not at the EOT token.
    """
    m = _text_module(clip)
    pool_type = getattr(m, "text_pool_type", getattr(m, "pool_type", "argmax"))
    if length is not None and (m.attn_mask is None or pool_type not in ("argmax", "eos")):
        length = None
    n = embeddings.shape[1] if length is None else length
    cast_dtype = m.transformer.get_cast_dtype()
    x = embeddings[:, :n].to(cast_dtype) + m.positional_embedding[:n].to(cast_dtype)
    x = m.transformer(x, attn_mask=None if m.attn_mask is None else m.attn_mask[:n, :n])
    tokens = tokens[:, :n]
    x = m.ln_final(x)
    eos = getattr(m, "text_eos_id", getattr(m, "eos_id", None))
    x = text_global_pool(x, tokens, pool_type, eos_token_id=eos)
    if isinstance(m.text_projection, nn.Linear):
        return m.text_projection(x)
    return x @ m.text_projection


def encode_hf_text_embeddings(text: HFTextEncoder, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A Hugging Face text tower (open_clip's ``HFTextEncoder``) from token *embeddings* through its model's
    ``inputs_embeds``, then its own pooler and projection: (N, L, width), mask (N, L) -> (N, embed_dim). With
    ``embeddings`` = the model's input embeddings of the tokens this equals ``text(tokens)``."""
    out = text.transformer(inputs_embeds=embeddings, attention_mask=mask)
    return text.proj(text.pooler(out, mask))


class _PromptIds:
    """What a prompt is built from, for either tokenizer: the start, end, padding and placeholder ids and the
    name encoder (CLIP's BPE: ``<start_of_text>``/``<end_of_text>``, padding 0; a Hugging Face tokenizer: its
    ``[CLS]``/``[SEP]`` or BOS/EOS and its padding id)."""

    def __init__(self, tokenizer) -> None:
        hf = getattr(tokenizer, "tokenizer", None)
        if hf is not None:  # open_clip's HFTokenizer
            self.start = hf.cls_token_id if hf.cls_token_id is not None else hf.bos_token_id
            self.end = hf.sep_token_id if hf.sep_token_id is not None else hf.eos_token_id
            self.pad = hf.pad_token_id if hf.pad_token_id is not None else 0
            self.encode = lambda text: hf.encode(text, add_special_tokens=False)
        else:
            self.start, self.end, self.pad = tokenizer.sot_token_id, tokenizer.eot_token_id, 0
            self.encode = tokenizer.encode
        if self.start is None or self.end is None:
            raise ValueError(f"tokenizer {type(hf or tokenizer).__name__} has no start/end token for prompts")
        self.placeholder = self.encode("X")[0]


class TagPromptLearner(nn.Module):
    """CoOp prompts ``[SOS] [V]_1 ... [V]_M [name tokens] [EOT]`` with M learnable context vectors (eq. 6-7).

    Args:
        names: tag or class names (K).
        width: the text tower's token width.
        context_length: the text tower's sequence length.
        n_ctx: number of learnable context vectors M (16).
        learnable_context: ``False`` encodes the names alone (``[SOS] name [EOT]``), the paper's ablation.
        max_name_tokens: names are cut to this many tokens (8).
        tokenizer: the text tower's tokenizer (:func:`text_tokenizer`); default CLIP's BPE. With a Hugging Face
            tower the prompt is ``[CLS] [V]_1 ... [V]_M [name tokens] [SEP]`` and goes in through the model's
            ``inputs_embeds``.
        ctx_init: CoOp's initialisation from words (e.g. ``"a medical image of the"``): M becomes the number of
            its tokens and the context vectors start as their token embeddings (``token_embedding`` needed),
            instead of random vectors (std 0.02). With a mean-pooling text tower, 16 random vectors swamp the
            class name and every prompt starts nearly the same.
        token_embedding: the text tower's input embedding, for ``ctx_init``.
    """

    def __init__(
        self,
        names: Sequence[str],
        width: int,
        context_length: int,
        n_ctx: int = 16,
        learnable_context: bool = True,
        max_name_tokens: int = 8,
        tokenizer=None,
        ctx_init: str | None = None,
        token_embedding: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self._tokenizer = tokenizer or open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        self._ids = _PromptIds(self._tokenizer)
        init_ids = self._ids.encode(ctx_init) if ctx_init and learnable_context else None
        if ctx_init and learnable_context:
            if not init_ids:
                raise ValueError(f"ctx_init {ctx_init!r} has no tokens")
            if token_embedding is None:
                raise ValueError("ctx_init needs the text tower's token_embedding")
            n_ctx = len(init_ids)
        self.n_ctx = n_ctx if learnable_context else 0
        self.learnable_context = learnable_context
        self.max_name_tokens = max_name_tokens
        self.context_length = context_length
        if self.n_ctx + max_name_tokens + 2 > context_length:
            raise ValueError(
                f"prompt of {self.n_ctx} context + {max_name_tokens} name tokens does not fit the text "
                f"context length {context_length}"
            )
        self.ctx = nn.Parameter(torch.randn(n_ctx, width) * 0.02) if learnable_context else None
        if init_ids is not None:
            with torch.no_grad():
                self.ctx.copy_(token_embedding(torch.tensor(init_ids)).float())
        self.register_buffer("tokens", self.tokenize(names), persistent=False)
        self.length = self.prompt_length(self.tokens)
        self.names = list(names)

    def prompt_length(self, tokens: torch.Tensor) -> int:
        """Positions up to the last prompt's EOT token (the rest is padding no prompt token attends to)."""
        return int((tokens != self._ids.pad).sum(dim=1).max())

    def tokenize(self, names: Sequence[str]) -> torch.Tensor:
        """Token ids (K, context_length) of the prompts for ``names``; context slots hold a placeholder."""
        if not names:
            raise ValueError("TagPromptLearner needs at least one name")
        ids = self._ids
        out = torch.full((len(names), self.context_length), ids.pad, dtype=torch.long)
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"tag/class name #{i} is empty or not a string: {name!r}")
            row = [ids.start] + [ids.placeholder] * self.n_ctx + ids.encode(name)[: self.max_name_tokens]
            row.append(ids.end)
            out[i, : len(row)] = torch.tensor(row)
        return out

    def forward(self, clip: CLIP | CustomTextCLIP, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the prompts with ``clip``'s text tower -> (K, embed_dim). ``tokens`` defaults to the tags."""
        if tokens is None:
            tokens, length = self.tokens, self.length
        else:
            tokens = tokens.to(self.tokens.device)
            length = self.prompt_length(tokens)
        tokens = tokens[:, :length]
        hf = getattr(clip, "text", None) if isinstance(getattr(clip, "text", None), HFTextEncoder) else None
        embed = hf.transformer.get_input_embeddings() if hf is not None else _text_module(clip).token_embedding
        emb = embed(tokens)
        if self.ctx is not None:
            ctx = self.ctx.to(emb.dtype).unsqueeze(0).expand(emb.shape[0], -1, -1)
            emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx :]], dim=1)
        if hf is not None:
            return encode_hf_text_embeddings(hf, emb, (tokens != self._ids.pad).long())
        return encode_text_embeddings(clip, emb, tokens, length)


class MosmosPretrainNet(nn.Module):
    """CLIP + tag prompts + Query2Label decoder + class-wise classifier (docs/method.md §3).

    Args:
        model_name: open_clip architecture (``"RN50"``, ``"ViT-B-16"``, ``"mosmos-tiny-vit"``, ``"mosmos-lite"``,
            ...) or a whole model, ``"local-dir:/path"`` / ``"hf-hub:org/name"`` (:func:`resolve_clip`).
        clip_pretrained: CLIP weights: ``None`` (random, warned), a local file, an open_clip tag, or a
            ``local-dir:``/``hf-hub:`` model.
        tags: the K tag names (the 20 of docs/method.md §2 by default).
        n_ctx: learnable context length M.
        learnable_context: ``False`` for the "without learnable context" ablation.
        decoder_layers: tag decoder layers (2).
        decoder_heads: tag decoder heads (8).
        decoder_dropout: dropout in the decoder.
        force_quick_gelu: QuickGELU activations (OpenAI CLIP weights).
        model_cfg: explicit open_clip config (used when rebuilding from a checkpoint sidecar).
        text_tower: a local Hugging Face model folder, for a model whose text tower is one (``mosmos-lite``).
        image_tower_weights: a weights file for a timm image tower (e.g. EfficientNet-Lite0's ImageNet weights).
        ctx_init: start the prompt's context from these words (CoOp; :class:`TagPromptLearner`).

    ``forward(image (B, 3, H, W), text (B, L) or None)`` returns a dict with ``image_features`` (B, d),
    ``text_features`` (B, d) or ``None``, ``tag_logits`` (B, K) and ``logit_scale`` (scalar, clamped at 100).
    ``tokenizer`` turns report texts into the ids ``text`` takes; images are standardised with ``image_mean`` and
    ``image_std`` (the image tower's own).

    >>> net = MosmosPretrainNet("mosmos-tiny-vit")
    >>> out = net(torch.zeros(2, 3, 96, 96), torch.zeros(2, 40, dtype=torch.long))
    >>> out["tag_logits"].shape
    torch.Size([2, 20])
    """

    def __init__(
        self,
        model_name: str = "RN50",
        clip_pretrained: str | None = None,
        tags: Sequence[str] | None = None,
        n_ctx: int = 16,
        learnable_context: bool = True,
        decoder_layers: int = 2,
        decoder_heads: int = 8,
        decoder_dropout: float = 0.1,
        force_quick_gelu: bool = False,
        model_cfg: dict | None = None,
        text_tower: str | None = None,
        image_tower_weights: str | None = None,
        ctx_init: str | None = None,
        _warn_random: bool = True,
    ) -> None:
        super().__init__()
        register_model_configs()
        pretrained = clip_pretrained
        if pretrained and str(pretrained).startswith(SCHEMAS):
            model_name, pretrained = str(pretrained), None
        self.model_name = model_name
        schema = model_name.startswith(SCHEMAS)
        self.force_quick_gelu = (
            force_quick_gelu if schema else resolve_quick_gelu(model_name, pretrained, force_quick_gelu)
        )
        self.clip, cfg = resolve_clip(
            model_name,
            pretrained,
            self.force_quick_gelu,
            model_cfg,
            warn_random=_warn_random,
            text_tower=text_tower,
            image_tower_weights=image_tower_weights,
        )
        self.model_cfg = dict(model_cfg) if model_cfg is not None else cfg
        self.embed_dim = int(self.model_cfg["embed_dim"])
        self.context_length = int(self.model_cfg.get("text_cfg", {}).get("context_length", self.clip.context_length))
        size = self.model_cfg.get("vision_cfg", {}).get("image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        standardise = self.model_cfg.get("preprocess_cfg") or {}
        self.image_mean = tuple(standardise.get("mean") or CLIP_MEAN)
        self.image_std = tuple(standardise.get("std") or CLIP_STD)
        self.tags = list(tags) if tags is not None else list(DEFAULT_TAGS)
        if self.hf_text and self.context_length > int(getattr(self.clip.text.config, "max_position_embeddings", 1e9)):
            raise ValueError(
                f"text context length {self.context_length} exceeds the text tower's "
                f"{self.clip.text.config.max_position_embeddings} positions: lower text_cfg.context_length"
            )
        self.tokenizer = text_tokenizer(self.clip, self.context_length)
        embedding = (
            self.clip.text.transformer.get_input_embeddings()
            if self.hf_text
            else _text_module(self.clip).token_embedding
        )
        self.prompt = TagPromptLearner(
            self.tags,
            embedding.weight.shape[1],
            self.context_length,
            n_ctx,
            learnable_context,
            tokenizer=self.tokenizer,
            ctx_init=ctx_init,
            token_embedding=embedding,
        )
        self.decoder = TagDecoder(self.embed_dim, decoder_layers, decoder_heads, decoder_dropout)
        self.classifier = GroupWiseLinear(len(self.tags), self.embed_dim)
        self._init_args = {
            "n_ctx": self.prompt.n_ctx if learnable_context else n_ctx,
            "ctx_init": ctx_init,
            "learnable_context": learnable_context,
            "decoder_layers": decoder_layers,
            "decoder_heads": decoder_heads,
            "decoder_dropout": decoder_dropout,
        }

    @property
    def hf_text(self) -> bool:
        """Whether the text tower is a Hugging Face model (open_clip's ``HFTextEncoder``)."""
        return isinstance(getattr(self.clip, "text", None), HFTextEncoder)

    def text_tower_folder(self) -> str | None:
        """The folder the Hugging Face text tower's config and tokenizer are read from (``None`` otherwise)."""
        return str(self.clip.text.config.name_or_path) if self.hf_text else None

    # ----- optimisation -----
    # the projections into the shared embedding space: new layers when towers come from separate models, so they
    # train with the rest even when their tower is frozen
    PROJECTIONS = ("visual.head.", "visual.proj", "text.proj.", "text_projection", "text.text_projection")

    def tower_parameters(self, tower: str) -> list[nn.Parameter]:
        """The parameters of the ``"image"`` tower (CLIP's ``visual``) or the ``"text"`` tower (everything of the
        CLIP that is not ``visual`` or ``logit_scale``), without their projections into the shared space
        (:attr:`PROJECTIONS`); the projections, prompt context, decoder and classifier are neither."""
        if tower not in ("image", "text"):
            raise ValueError(f"tower must be 'image' or 'text', got {tower!r}")
        out = []
        for n, p in self.clip.named_parameters():
            if n.startswith(self.PROJECTIONS) or n.startswith("logit_"):
                continue
            if n.startswith("visual.") == (tower == "image"):
                out.append(p)
        return out

    def parameter_groups(
        self, learning_rate: float, image_tower_lr: float | None = None, text_tower_lr: float | None = None
    ) -> list[dict]:
        """Optimiser parameter groups: each tower at its own learning rate (``None``: ``learning_rate``; ``0``:
        frozen, its parameters left out and ``requires_grad`` off, as LiT locks a tower), the rest at
        ``learning_rate``. Gradients still flow *through* a frozen text tower to the prompt's context vectors."""
        groups, taken = [], set()
        for tower, lr in (("image", image_tower_lr), ("text", text_tower_lr)):
            params = self.tower_parameters(tower)
            taken |= {id(p) for p in params}
            if lr is not None and float(lr) == 0.0:
                for p in params:
                    p.requires_grad_(False)
                logger.info("MOSMOS pre-training: the %s tower is frozen", tower)
                continue
            groups.append({"params": params, "lr": float(learning_rate if lr is None else lr), "name": tower})
        rest = [p for p in self.parameters() if id(p) not in taken]
        groups.append({"params": rest, "lr": float(learning_rate), "name": "prompt, decoder, classifier"})
        return [g for g in groups if g["params"]]

    # ----- encoders -----
    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``image`` (B, 3, H, W) -> global (B, d), spatial (B, h*w, d), grid (h, w)."""
        v = self.clip.visual
        if isinstance(v, ModifiedResNet):
            f = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(image)))))
            grid = (f.shape[2], f.shape[3])
            g = v.attnpool(f)
            tokens = f.flatten(2).transpose(1, 2)
            # DenseCLIP: each pixel through the attention pool's value and output projections
            s = v.attnpool.c_proj(v.attnpool.v_proj(tokens))
            return g, s, grid
        if isinstance(v, VisionTransformer):
            if v.attn_pool is not None or v.pool_type != "tok":
                raise ValueError("MOSMOS supports CLIP ViTs with class-token pooling (pool_type='tok')")
            x = v.transformer(v._embeds(image))
            pooled, tokens = v._pool(x)
            g, s = pooled @ v.proj, tokens @ v.proj
            return g, s, tuple(int(n) for n in v.grid_size)
        if isinstance(v, TimmModel):
            return _encode_timm(v, image)
        raise ValueError(f"unsupported image tower {type(v).__name__}")

    def encode_report(self, text: torch.Tensor) -> torch.Tensor:
        """``text`` token ids (B, L) -> report features (B, d)."""
        return self.clip.encode_text(text)

    def tag_queries(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The K prompt embeddings (K, d): once per step, shared by every image of the batch."""
        return self.prompt(self.clip, tokens)

    def forward(self, image: torch.Tensor, text: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        g, s, grid = self.encode_image(image)
        q, _ = self.decoder(self.tag_queries(), s, grid, output="queries")
        return {
            "image_features": g,
            "text_features": self.encode_report(text) if text is not None else None,
            "tag_logits": self.classifier(q),
            "logit_scale": self.clip.logit_scale.exp().clamp(max=100.0),
        }

    # ----- checkpoint sidecar -----
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (written next to its state_dict). A Hugging Face text tower's
        config and tokenizer files are copied next to the checkpoint (:meth:`assets`); the sidecar names them."""
        return {
            "format": "mosmos-pretrain/1",
            "backbone": self.model_name,
            "model_cfg": self.model_cfg,
            "force_quick_gelu": self.force_quick_gelu,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "context_length": self.context_length,
            "tags": self.tags,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            **self._init_args,
        }

    def assets(self) -> dict[str, str]:
        """Folders whose small files (:data:`TEXT_ASSET_FILES`) a checkpoint carries beside its weights."""
        folder = self.text_tower_folder()
        return {"text_tower": folder} if folder else {}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], assets: dict[str, str] | None = None) -> MosmosPretrainNet:
        """Rebuild from a sidecar; ``assets`` maps the sidecar's asset names to folders on this machine."""
        if cfg.get("format") != "mosmos-pretrain/1":
            raise ValueError(f"not a MOSMOS pre-training sidecar (format={cfg.get('format')!r})")
        model_cfg = json.loads(json.dumps(cfg["model_cfg"]))
        text = model_cfg.get("text_cfg", {})
        if "hf_model_name" in text:
            folder = (assets or {}).get("text_tower")
            if folder is None:
                raise ValueError(
                    "its text tower is a Hugging Face model, and the checkpoint's text_tower files are missing"
                )
            text["hf_model_name"] = text["hf_tokenizer_name"] = str(folder)
        return cls(
            model_name=cfg["backbone"],
            clip_pretrained=None,
            tags=cfg["tags"],
            n_ctx=cfg["n_ctx"],
            learnable_context=cfg["learnable_context"],
            ctx_init=cfg.get("ctx_init"),
            decoder_layers=cfg["decoder_layers"],
            decoder_heads=cfg["decoder_heads"],
            decoder_dropout=cfg.get("decoder_dropout", 0.1),
            force_quick_gelu=cfg.get("force_quick_gelu", False),
            model_cfg=model_cfg,
            _warn_random=False,
        )


def _encode_timm(v: TimmModel, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """A timm image tower (open_clip's ``TimmModel``): the global feature as open_clip computes it (the trunk's
    pooling, then the head), and the spatial features as the same projection applied to every position of the
    trunk's final map (a CNN) or to every patch token (a ViT), as DenseCLIP does."""
    if "proj" not in v.head._modules:
        raise ValueError("MOSMOS needs a timm image tower with a linear projection head (timm_proj: 'linear')")
    t = v.trunk
    f = t.forward_features(image)
    g = v.head(t.forward_head(f))
    if f.ndim == 4:  # (B, C, h, w)
        grid = (int(f.shape[2]), int(f.shape[3]))
        tokens = f.flatten(2).transpose(1, 2)
    else:  # (B, prefix + N, C)
        tokens = f[:, getattr(t, "num_prefix_tokens", 1) :]
        grid = tuple(int(n) for n in t.patch_embed.grid_size)
    return g, v.head.proj(tokens), grid
