"""The MOSMOS pre-training network (docs/method.md §3): an open_clip model, learnable tag prompts, the
Query2Label tag decoder and the class-wise classifier.

Backbones are open_clip architectures (``RN50``, ``ViT-B-16``, ...) or the tiny ones shipped in
``model_configs/`` for tests and the demo. CLIP weights come from an open_clip tag (needs the internet) or a
local file; with neither the network is initialised randomly and says so.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer, text_global_pool
from torch import nn

from mosmos_components.networks.tag_decoder import GroupWiseLinear, TagDecoder
from mosmos_components.tags import DEFAULT_TAGS

__all__ = [
    "MODEL_CONFIG_DIR",
    "register_model_configs",
    "create_clip",
    "encode_text_embeddings",
    "TagPromptLearner",
    "MosmosPretrainNet",
    "CLIP_MEAN",
    "CLIP_STD",
]

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
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


def create_clip(
    model_name: str,
    pretrained: str | None = None,
    force_quick_gelu: bool = False,
    model_cfg: dict | None = None,
    warn_random: bool = True,
) -> CLIP:
    """Build an open_clip CLIP model.

    Args:
        model_name: an open_clip architecture name, e.g. ``"RN50"``, ``"ViT-B-16"``, ``"mosmos-tiny-vit"``.
        pretrained: ``None`` (random, with a warning), a local weights file (open_clip/OpenAI state dict,
            ``.pt``/``.bin``/``.safetensors``), or an open_clip tag such as ``"openai"`` (downloads: needs the
            internet).
        force_quick_gelu: use QuickGELU, as OpenAI's CLIP weights were trained with it.
        model_cfg: an explicit open_clip model config (as written in a checkpoint sidecar); overrides the
            registry lookup of ``model_name``.
        warn_random: warn when no weights are given.
    """
    register_model_configs()
    force_quick_gelu = resolve_quick_gelu(model_name, pretrained, force_quick_gelu)
    if model_cfg is not None:
        cfg = dict(model_cfg)
        if force_quick_gelu:
            cfg["quick_gelu"] = True
        model = CLIP(**cfg)
    elif pretrained is None:
        if open_clip.get_model_config(model_name) is None:
            raise ValueError(f"unknown open_clip model '{model_name}'; known: {open_clip.list_models()}")
        model = open_clip.create_model(model_name, force_quick_gelu=force_quick_gelu)
    elif os.path.isfile(pretrained):
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=force_quick_gelu)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise RuntimeError(f"could not load CLIP weights for '{model_name}' from {pretrained}: {e}") from e
        logger.info("CLIP '%s' initialised from local file %s", model_name, pretrained)
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise FileNotFoundError(
                f"pretrained='{pretrained}' is neither an existing file nor an open_clip tag of '{model_name}' "
                f"(tags: {tags})"
            )
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=force_quick_gelu)
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(
                f"could not fetch open_clip weights '{model_name}/{pretrained}' ({e}). Without internet access, "
                "download the weights elsewhere and pass the local file as `pretrained`."
            ) from e
    if pretrained is None and warn_random:
        warnings.warn(
            f"MOSMOS: no CLIP weights given for '{model_name}': the image and text encoders are initialised "
            "RANDOMLY (the paper's 'without CLIP initialisation' ablation). Pass `pretrained` (a local file or, "
            "online, an open_clip tag such as 'openai') for CLIP initialisation.",
            stacklevel=2,
        )
    if not isinstance(model, CLIP):
        raise ValueError(f"'{model_name}' is a {type(model).__name__}; MOSMOS needs a CLIP with its own text tower")
    return model


def encode_text_embeddings(
    clip: CLIP, embeddings: torch.Tensor, tokens: torch.Tensor, length: int | None = None
) -> torch.Tensor:
    """CLIP's text tower from token *embeddings* (so some can be learnable), pooled at the EOT token.

    ``embeddings`` (N, L, width), ``tokens`` (N, L) -> (N, embed_dim). With ``embeddings =
    clip.token_embedding(tokens)`` this equals ``clip.encode_text(tokens)``.

    ``length``: run the tower on the first ``length`` positions only, when every sequence's pooled (EOT) token
    lies before it. The text tower's attention is causal, so no position before ``length`` sees the ones after
    it and the result is the same; the tag prompts (about 26 of CLIP's 77 positions) cost a third. Ignored for
    a tower without a causal mask or pooling that is not at the EOT token.
    """
    if length is not None and (clip.attn_mask is None or clip.text_pool_type not in ("argmax", "eos")):
        length = None
    n = embeddings.shape[1] if length is None else length
    cast_dtype = clip.transformer.get_cast_dtype()
    x = embeddings[:, :n].to(cast_dtype) + clip.positional_embedding[:n].to(cast_dtype)
    x = clip.transformer(x, attn_mask=None if clip.attn_mask is None else clip.attn_mask[:n, :n])
    tokens = tokens[:, :n]
    x = clip.ln_final(x)
    x = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    if isinstance(clip.text_projection, nn.Linear):
        return clip.text_projection(x)
    return x @ clip.text_projection


class TagPromptLearner(nn.Module):
    """CoOp prompts ``[SOS] [V]_1 ... [V]_M [name tokens] [EOT]`` with M learnable context vectors (eq. 6-7).

    Args:
        names: tag or class names (K).
        width: the text tower's token width.
        context_length: the text tower's sequence length.
        n_ctx: number of learnable context vectors M (16).
        learnable_context: ``False`` encodes the names alone (``[SOS] name [EOT]``), the paper's ablation.
        max_name_tokens: names are cut to this many BPE tokens (8).
    """

    def __init__(
        self,
        names: Sequence[str],
        width: int,
        context_length: int,
        n_ctx: int = 16,
        learnable_context: bool = True,
        max_name_tokens: int = 8,
    ) -> None:
        super().__init__()
        self.n_ctx = n_ctx if learnable_context else 0
        self.learnable_context = learnable_context
        self.max_name_tokens = max_name_tokens
        self.context_length = context_length
        self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        if self.n_ctx + max_name_tokens + 2 > context_length:
            raise ValueError(
                f"prompt of {self.n_ctx} context + {max_name_tokens} name tokens does not fit the text "
                f"context length {context_length}"
            )
        self.ctx = nn.Parameter(torch.randn(n_ctx, width) * 0.02) if learnable_context else None
        self.register_buffer("tokens", self.tokenize(names), persistent=False)
        self.length = self.prompt_length(self.tokens)
        self.names = list(names)

    @staticmethod
    def prompt_length(tokens: torch.Tensor) -> int:
        """Positions up to the last prompt's EOT token (the rest is padding no prompt token attends to)."""
        return int((tokens != 0).sum(dim=1).max())

    def tokenize(self, names: Sequence[str]) -> torch.Tensor:
        """Token ids (K, context_length) of the prompts for ``names``; context slots hold a placeholder."""
        if not names:
            raise ValueError("TagPromptLearner needs at least one name")
        tok = self._tokenizer
        placeholder = tok.encode("X")[0]
        out = torch.zeros(len(names), self.context_length, dtype=torch.long)
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"tag/class name #{i} is empty or not a string: {name!r}")
            ids = [tok.sot_token_id] + [placeholder] * self.n_ctx + tok.encode(name)[: self.max_name_tokens]
            ids.append(tok.eot_token_id)
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def forward(self, clip: CLIP, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the prompts with ``clip``'s text tower -> (K, embed_dim). ``tokens`` defaults to the tags."""
        if tokens is None:
            tokens, length = self.tokens, self.length
        else:
            tokens = tokens.to(self.tokens.device)
            length = self.prompt_length(tokens)
        tokens = tokens[:, :length]
        emb = clip.token_embedding(tokens)
        if self.ctx is not None:
            ctx = self.ctx.to(emb.dtype).unsqueeze(0).expand(emb.shape[0], -1, -1)
            emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx :]], dim=1)
        return encode_text_embeddings(clip, emb, tokens, length)


class MosmosPretrainNet(nn.Module):
    """CLIP + tag prompts + Query2Label decoder + class-wise classifier (docs/method.md §3).

    Args:
        model_name: open_clip architecture (``"RN50"``, ``"ViT-B-16"``, ``"mosmos-tiny-vit"``, ...).
        pretrained: CLIP weights: ``None`` (random, warned), a local file, or an open_clip tag.
        tags: the K tag names (the 20 of docs/method.md §2 by default).
        n_ctx: learnable context length M.
        learnable_context: ``False`` for the "without learnable context" ablation.
        decoder_layers: tag decoder layers (2).
        decoder_heads: tag decoder heads (8).
        decoder_dropout: dropout in the decoder.
        force_quick_gelu: QuickGELU activations (OpenAI CLIP weights).
        model_cfg: explicit open_clip config (used when rebuilding from a checkpoint sidecar).

    ``forward(image (B, 3, H, W), text (B, L) or None)`` returns a dict with ``image_features`` (B, d),
    ``text_features`` (B, d) or ``None``, ``tag_logits`` (B, K) and ``logit_scale`` (scalar, clamped at 100).

    >>> net = MosmosPretrainNet("mosmos-tiny-vit")
    >>> out = net(torch.zeros(2, 3, 96, 96), torch.zeros(2, 40, dtype=torch.long))
    >>> out["tag_logits"].shape
    torch.Size([2, 20])
    """

    def __init__(
        self,
        model_name: str = "RN50",
        pretrained: str | None = None,
        tags: Sequence[str] | None = None,
        n_ctx: int = 16,
        learnable_context: bool = True,
        decoder_layers: int = 2,
        decoder_heads: int = 8,
        decoder_dropout: float = 0.1,
        force_quick_gelu: bool = False,
        model_cfg: dict | None = None,
        _warn_random: bool = True,
    ) -> None:
        super().__init__()
        register_model_configs()
        self.model_name = model_name
        self.model_cfg = dict(model_cfg) if model_cfg is not None else open_clip.get_model_config(model_name)
        if self.model_cfg is None:
            raise ValueError(f"unknown open_clip model '{model_name}'")
        self.force_quick_gelu = resolve_quick_gelu(model_name, pretrained, force_quick_gelu)
        self.clip = create_clip(model_name, pretrained, self.force_quick_gelu, model_cfg, warn_random=_warn_random)
        self.embed_dim = int(self.model_cfg["embed_dim"])
        self.context_length = int(self.clip.context_length)
        self.image_size = int(
            self.clip.visual.image_size[0]
            if isinstance(self.clip.visual.image_size, tuple)
            else self.clip.visual.image_size
        )
        self.tags = list(tags) if tags is not None else list(DEFAULT_TAGS)
        self.prompt = TagPromptLearner(
            self.tags, self.clip.token_embedding.weight.shape[1], self.context_length, n_ctx, learnable_context
        )
        self.decoder = TagDecoder(self.embed_dim, decoder_layers, decoder_heads, decoder_dropout)
        self.classifier = GroupWiseLinear(len(self.tags), self.embed_dim)
        self._init_args = {
            "n_ctx": n_ctx,
            "learnable_context": learnable_context,
            "decoder_layers": decoder_layers,
            "decoder_heads": decoder_heads,
            "decoder_dropout": decoder_dropout,
        }

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
        """Everything needed to rebuild this network (written next to its state_dict)."""
        return {
            "format": "mosmos-pretrain/1",
            "backbone": self.model_name,
            "model_cfg": self.model_cfg,
            "force_quick_gelu": self.force_quick_gelu,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "context_length": self.context_length,
            "tags": self.tags,
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
            **self._init_args,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> MosmosPretrainNet:
        if cfg.get("format") != "mosmos-pretrain/1":
            raise ValueError(f"not a MOSMOS pre-training sidecar (format={cfg.get('format')!r})")
        return cls(
            model_name=cfg["backbone"],
            pretrained=None,
            tags=cfg["tags"],
            n_ctx=cfg["n_ctx"],
            learnable_context=cfg["learnable_context"],
            decoder_layers=cfg["decoder_layers"],
            decoder_heads=cfg["decoder_heads"],
            decoder_dropout=cfg.get("decoder_dropout", 0.1),
            force_quick_gelu=cfg.get("force_quick_gelu", False),
            model_cfg=cfg["model_cfg"],
            _warn_random=False,
        )
