"""Pixel-tag attention (docs/method.md §4, eq. 12-13), shared by the 2D and 3D segmentation networks.

The pre-trained tag decoder (without its classifier) takes one *class embedding* per output class as
queries and the encoder's projected spatial features as memory. Its last cross-attention weights are the
pixel-tag attention maps ``A (B, K, *grid)``; they are (a) concatenated to the bottleneck features and (b)
upsampled into an auxiliary segmentation ``softmax(LI(A) / tau_2)``.

The class embeddings come from the frozen pre-trained text encoder and learned context: they are constants,
computed once (:func:`mosmos_components.transfer.class_embeddings`) and kept as a buffer, so neither
training steps nor inference nor an exported model need the text encoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mosmos_components.networks.tag_decoder import TagDecoder

__all__ = ["PTA_MODES", "PixelTagAttention", "ContextDecoder"]


PTA_MODES = ("decoder", "score", "denseclip")


class ContextDecoder(nn.Module):
    """DenseCLIP's post-model, context-aware prompting (Rao et al., CVPR 2022, §3.3): the class text embeddings
    attend to the image's visual context ``[global, tokens]`` through a small transformer decoder, and each class
    embedding becomes ``t + gamma * decoder(t, context)`` for that image, ``gamma`` a per-channel scale started at
    1e-4 (so training starts from the fixed-prompt embeddings). Its width, depth and heads are DenseCLIP's (256,
    3, 4), the layers torch's pre-norm ``TransformerDecoderLayer``.

    ``forward(text (K, d), tokens (B, N, d))`` -> the per-image class embeddings ``(B, K, d)``."""

    def __init__(self, embed_dim: int, width: int = 256, layers: int = 3, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.memory_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, width))
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))
        self.gamma = nn.Parameter(torch.full((embed_dim,), 1e-4))

    def forward(self, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        context = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # [global, tokens]
        memory = self.memory_proj(context)
        x = self.text_proj(text.to(tokens.dtype)).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, memory)
        return text.to(tokens.dtype).unsqueeze(0) + self.gamma * self.out_proj(x)


class PixelTagAttention(nn.Module):
    """Class queries x spatial features -> attention maps and the auxiliary PTA logits.

    ``mode="decoder"`` is MOSMOS: the pre-trained tag decoder's last cross-attention. ``mode="denseclip"`` is the
    CLIP+DenseCLIP baseline (docs/method.md §5): DenseCLIP's pixel-text score maps, the cosine similarity of
    every spatial feature with every class embedding, the embeddings from fixed class prompts made
    image-specific by DenseCLIP's context-aware prompting (:class:`ContextDecoder`, trained from scratch).
    ``mode="score"``: the same score maps with the fixed-prompt embeddings alone (no context decoder).

    Args:
        num_classes: K, output classes including background.
        embed_dim: width of the class embeddings and spatial features (the CLIP embedding dimension).
        decoder_layers: layers of the tag decoder (as pre-trained).
        decoder_heads: heads of the tag decoder (as pre-trained).
        tau_init: initial temperature tau_2 (0.07).
        class_names: names of the K classes (kept for the sidecar; embeddings are set by the transfer).
        mode: ``"decoder"`` (MOSMOS), ``"denseclip"`` (score maps with context-aware prompting) or ``"score"``
            (score maps of the fixed-prompt embeddings; no parameters).
        sigmoid_offset: for a branch read with a sigmoid (BraTS's overlapping regions) the logits are
            ``(LI(A) - 1/N)/tau_2 + b_k``: the maps centred on the uniform attention ``1/N`` (N tokens) plus a
            learnable per-class offset ``b_k`` (zero-initialised). Attention weights are >= 0, so ``LI(A)/tau_2``
            alone gives every voxel a probability >= 0.5 for every region and the branch could never say
            "absent"; centred, a voxel attended less than uniformly starts as absent **(choice; the paper is
            silent)**.
        depth: depth of a 3D token grid (the decoder adds a zero-initialised learnable depth term to the
            pre-trained 2D position encoding); ``0`` for 2D networks.

    The decoder runs without dropout in fine-tuning **(choice; the paper is silent)**: the maps are features of
    the bottleneck and the input of ``L_pta``, so they are the same clean softmax weights in training and
    evaluation (in pre-training, where they are not used by a loss, the decoder keeps Query2Label's dropout).

    ``forward(features (B, N, d), grid)`` -> ``A (B, K, *grid)``; :meth:`aux_logits` upsamples it to the input
    size and divides by tau_2 (a softmax over classes gives ``Y_pta``).
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        decoder_layers: int = 2,
        decoder_heads: int = 8,
        tau_init: float = 0.07,
        class_names: Sequence[str] | None = None,
        mode: str = "decoder",
        sigmoid_offset: bool = False,
        depth: int = 0,
    ) -> None:
        super().__init__()
        if mode not in PTA_MODES:
            raise ValueError(f"pixel-tag attention mode must be one of {PTA_MODES}, got {mode!r}")
        self.mode = mode
        self.decoder = (
            TagDecoder(embed_dim, decoder_layers, decoder_heads, dropout=0.0, depth=depth)
            if mode == "decoder"
            else None
        )
        self.context = ContextDecoder(embed_dim) if mode == "denseclip" else None
        # persistent: an exported or saved model carries the embeddings, not the text encoder
        self.register_buffer("class_embeddings", torch.zeros(num_classes, embed_dim))
        self.register_buffer("embeddings_ready", torch.zeros((), dtype=torch.bool))
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau_init)))
        self.aux_offset = nn.Parameter(torch.zeros(num_classes)) if sigmoid_offset else None
        self.class_names = list(class_names) if class_names is not None else [f"class {i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self._resize_cache: dict[tuple, list[torch.Tensor]] = {}
        self._ready: bool | None = None

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def set_class_embeddings(self, embeddings: torch.Tensor) -> None:
        if embeddings.shape != self.class_embeddings.shape:
            raise ValueError(
                f"class embeddings {tuple(embeddings.shape)} do not fit {tuple(self.class_embeddings.shape)} "
                "(classes x embedding dimension)"
            )
        self.class_embeddings.copy_(embeddings.detach())
        self.embeddings_ready.fill_(True)
        self._ready = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = None  # read the loaded flag again at the next forward

    def forward(self, features: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        if self._ready is None:  # the flag is a buffer (it travels with the weights); reading it on a GPU waits for
            self._ready = bool(self.embeddings_ready)  # the device, so it is read once, not at every forward
        if not self._ready:
            raise RuntimeError(
                "pixel-tag attention has no class embeddings: load pre-trained MOSMOS weights "
                "(mosmos_components.transfer.transfer_pretrained) or a fine-tuned checkpoint first"
            )
        if self.context is not None:  # DenseCLIP: image-specific class embeddings, then score maps (B, K, N)
            text = F.normalize(self.context(self.class_embeddings, features), dim=-1)
            attn = text @ F.normalize(features, dim=-1).transpose(1, 2)
        elif self.decoder is None:  # the fixed-prompt score maps: cosine of each pixel with each class (B, K, N)
            attn = F.normalize(features, dim=-1) @ F.normalize(self.class_embeddings, dim=-1).t().to(features.dtype)
            attn = attn.transpose(1, 2)
        else:
            _, attn = self.decoder(self.class_embeddings, features, tuple(grid), output="attention")
        return attn.reshape(attn.shape[0], attn.shape[1], *grid)

    def upsample(self, attention: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``LI(A)``: (bi|tri)linear interpolation of ``A (B, K, *grid)`` to ``size``, in fp32.

        The same values as ``F.interpolate(..., align_corners=False)`` (to float rounding), computed as one
        product with a per-axis interpolation matrix each, the ones that function applies (interpolating the
        identity), built once per size: on a CPU 6x faster with its backward than the native kernel, whose
        backward scatters every output voxel."""
        key = (tuple(attention.shape[2:]), tuple(int(s) for s in size), attention.device)
        mats = self._resize_cache.get(key)
        if mats is None:  # per axis (n_in, n_out): where each input position's unit impulse lands
            eye = [torch.eye(n, device=attention.device)[None] for n in key[0]]
            mats = [F.interpolate(e, size=m, mode="linear", align_corners=False)[0] for e, m in zip(eye, key[1])]
            self._resize_cache[key] = mats
        axes = "hwd"[: attention.dim() - 2]
        spec = f"bk{axes}," + ",".join(f"{a}{a.upper()}" for a in axes) + f"->bk{axes.upper()}"
        with torch.autocast(attention.device.type, enabled=False):
            return torch.einsum(spec, attention.float(), *mats)

    def aux_logits(self, attention: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``LI(A) / tau_2`` at ``size`` ((bi|tri)linear, :meth:`upsample`): a softmax over dim 1 gives ``Y_pta``.
        With ``sigmoid_offset``: ``(LI(A) - 1/N) / tau_2 + b_k``, read with a sigmoid.

        Interpolation is linear and its weights sum to 1, so the scaling and offsets are applied on the token grid
        before it (``LI(A) / tau = LI(A / tau)``, ``LI(A) + b = LI(A + b)``): the same logits, without passes over the
        full-resolution output."""
        a = attention.float() / self.tau
        if self.aux_offset is not None:
            uniform = 1.0 / math.prod(attention.shape[2:])
            a = a - uniform / self.tau + self.aux_offset.view(1, -1, *([1] * (a.dim() - 2))).float()
        return self.upsample(a, size)
