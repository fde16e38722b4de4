"""Query2Label tag decoder (docs/method.md §3, eq. 8) and its position encoding.

The decoder takes K tag (or class) queries and cross-attends to an image's spatial features. In pre-training
its outputs feed a class-wise classifier; in fine-tuning its last cross-attention weights are the pixel-tag
attention maps (eq. 12), which is why every layer here returns them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["sine_position_encoding", "TagDecoderLayer", "TagDecoder", "GroupWiseLinear"]


def sine_position_encoding(spatial: tuple[int, ...], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed sine/cosine encoding of an N-D grid (DETR, generalised to N axes).

    Args:
        spatial: grid size, e.g. ``(h, w)`` or ``(h, w, d)``.
        dim: channels; each axis gets ``2 * (dim // (2 * N))`` channels, the rest are zero.

    Returns:
        ``(prod(spatial), dim)`` float32, axis order matching ``tensor.flatten`` of the grid.
    """
    n_axes = len(spatial)
    per_axis = dim // (2 * n_axes)
    if per_axis == 0:
        raise ValueError(f"dim={dim} is too small for a {n_axes}-D position encoding")
    freqs = temperature ** (-torch.arange(per_axis, dtype=torch.float32) / per_axis)
    grids = torch.meshgrid(*[torch.linspace(0, 2 * math.pi, s) for s in spatial], indexing="ij")
    parts = []
    for g in grids:
        angle = g.reshape(-1, 1) * freqs  # (N, per_axis)
        parts += [angle.sin(), angle.cos()]
    pe = torch.cat(parts, dim=1)
    if pe.shape[1] < dim:
        pe = torch.cat([pe, pe.new_zeros(pe.shape[0], dim - pe.shape[1])], dim=1)
    return pe


class TagDecoderLayer(nn.Module):
    """Post-norm transformer decoder layer (self-attention, cross-attention, MLP) returning cross-attention.

    Args:
        d_model: query and memory width.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to ``d_model``.
        dropout: dropout in attention and MLP.
    """

    def __init__(self, d_model: int, heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_model))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    @staticmethod
    def attend(
        attn: nn.MultiheadAttention,
        q: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``nn.MultiheadAttention``'s computation on its own parameters, written out so that the clean weights
        come for free and nothing is computed twice: (output (B, L, d) or ``None`` without ``value``, softmax weights
        averaged over heads (B, L, S) or ``None`` without ``need_weights``).

        The weights are the softmax *before* dropout (``nn.MultiheadAttention`` returns them after dropout in
        training mode, randomly zeroed and rescaled): the pixel-tag attention maps are the same distribution in
        training and evaluation. Dropout acts on the output path only. Without weights the output comes from
        ``F.scaled_dot_product_attention`` (one fused kernel where available).
        """
        d, h = attn.embed_dim, attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        p = attn.dropout if attn.training else 0.0

        def project(x: torch.Tensor, i: int) -> torch.Tensor:  # (B, L, d) -> (B, h, L, d / h)
            y = F.linear(x, w[i * d : (i + 1) * d], None if b is None else b[i * d : (i + 1) * d])
            return y.reshape(y.shape[0], y.shape[1], h, d // h).transpose(1, 2)  # sizes read, so export keeps B

        qh, kh = project(q, 0), project(key, 1)
        vh = project(value, 2) if value is not None else None
        weights = out = None
        if need_weights:
            probs = ((qh @ kh.transpose(-1, -2)) * (d // h) ** -0.5).softmax(dim=-1)
            weights = probs.mean(dim=1)
            if vh is not None:
                out = F.dropout(probs, p, attn.training) @ vh
        elif vh is not None:
            out = F.scaled_dot_product_attention(qh, kh, vh, dropout_p=p)
        if out is not None:
            out = attn.out_proj(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], d))
        return out, weights

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        """The self-attention block: ``norm1(q + SelfAttention(q))``."""
        return self.norm1(q + self.drop(self.attend(self.self_attn, q, q, q)[0]))

    def forward(
        self,
        q: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None = None,
        need_attn: bool = True,
        need_queries: bool = True,
        self_attended: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``q`` (B, K, d), ``memory`` (B, N, d), ``pos`` (N, d) -> (queries (B, K, d), attention (B, K, N) or
        ``None`` without ``need_attn``). Dropout acts on the attention's output path only, never on the maps.

        ``need_queries=False`` stops after the attention weights (queries ``None``): the cross-attention's value and
        output path and the MLP, which only produce the queries, are not run. ``self_attended``: ``q`` has been
        through :meth:`queries` already."""
        if not self_attended:
            q = self.queries(q)
        key = memory if pos is None else memory + pos.to(memory.dtype)
        out, attn = self.attend(self.cross_attn, q, key, memory if need_queries else None, need_attn)
        if not need_queries:
            return None, attn
        q = self.norm2(q + self.drop(out))
        q = self.norm3(q + self.drop(self.mlp(q)))
        return q, attn


class TagDecoder(nn.Module):
    """A stack of :class:`TagDecoderLayer` (Query2Label; 2 layers, 8 heads in the paper's setting).

    Args:
        d_model: width of queries and memory (the CLIP embedding dimension).
        layers: number of decoder layers.
        heads: attention heads; must divide ``d_model``.
        dropout: dropout inside the layers (attention output path, residuals, MLP; never the returned maps).
        depth: for a 3D grid ``(h, w, d)``, its depth ``d``: a learnable depth term (d, d_model), zero-initialised,
            is added to the 2D encoding of the in-plane axes (``0``: 2D grids only, or a 3D grid without it).

    The position encoding is the 2D sine encoding of the pre-training, laid out the same way in 3D: the in-plane
    axes ``(h, w)`` keep the 2D channel layout the pre-trained key projections learned, broadcast over depth (as
    the ViT's position grid is), so a one-slice volume gives exactly the 2D decoder's attention.

    >>> dec = TagDecoder(64, layers=2, heads=8)
    >>> out, attn = dec(torch.randn(20, 64), torch.randn(2, 36, 64), spatial=(6, 6))
    >>> out.shape, attn.shape
    (torch.Size([2, 20, 64]), torch.Size([2, 20, 36]))
    """

    def __init__(self, d_model: int, layers: int = 2, heads: int = 8, dropout: float = 0.1, depth: int = 0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"tag decoder: heads={heads} must divide d_model={d_model}")
        self.d_model = d_model
        self.layers = nn.ModuleList([TagDecoderLayer(d_model, heads, dropout=dropout) for _ in range(layers)])
        self.depth_position = nn.Parameter(torch.zeros(depth, d_model)) if depth else None
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self._first_cache: tuple | None = None

    def _plane_position(self, plane: tuple[int, int], device: torch.device) -> torch.Tensor:
        if torch.jit.is_tracing():  # a cache hit would make a second trace differ from the first
            return sine_position_encoding(plane, self.d_model).to(device)
        key = (*plane, str(device))  # kept on each device: a copy per call would wait for the GPU
        if key not in self._pos_cache:
            self._pos_cache[key] = sine_position_encoding(plane, self.d_model).to(device)
        return self._pos_cache[key]

    def position(self, spatial: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """(prod(spatial), d_model) for a 2D ``(h, w)`` or 3D ``(h, w, d)`` grid (token order of ``flatten``)."""
        key = tuple(int(s) for s in spatial)
        if len(key) not in (2, 3):
            raise ValueError(f"tag decoder: position encoding for 2D or 3D grids, got {key}")
        plane = self._plane_position(key[:2], device)
        if len(key) == 2:
            if self.depth_position is not None:
                raise ValueError(f"tag decoder built for 3D grids of depth {len(self.depth_position)}, got {key}")
            return plane
        pos = plane.reshape(key[0], key[1], 1, self.d_model).expand(-1, -1, key[2], -1)
        if self.depth_position is not None:
            if len(self.depth_position) != key[2]:
                raise ValueError(f"tag decoder built for grid depth {len(self.depth_position)}, got {key}")
            pos = pos + self.depth_position.to(pos.dtype)
        return pos.reshape(-1, self.d_model)

    def forward(
        self,
        queries: torch.Tensor,
        memory: torch.Tensor,
        spatial: tuple[int, ...] | None = None,
        output: str = "both",
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``queries`` (K, d) shared by the batch or (B, K, d); ``memory`` (B, N, d) with N = prod(spatial).

        Returns the decoded queries (B, K, d) and the last layer's cross-attention (B, K, N). ``output``:
        ``"both"``, ``"queries"`` (pre-training's classifier; the attention is ``None`` and not computed) or
        ``"attention"`` (pixel-tag attention; the queries are ``None`` and the last layer stops at its attention
        weights). What is computed is the same either way.
        """
        if output not in ("both", "queries", "attention"):
            raise ValueError(f"tag decoder output must be 'both', 'queries' or 'attention', got {output!r}")
        first = self._constant_first_queries(queries)
        q = queries if first is None else first
        if q.dim() == 2:
            q = q.unsqueeze(0).expand(memory.shape[0], -1, -1)
        pos = self.position(spatial, memory.device) if spatial is not None else None
        attn = None
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            q, attn = layer(
                q,
                memory,
                pos,
                need_attn=last and output != "queries",
                need_queries=not last or output != "attention",
                self_attended=i == 0 and first is not None,
            )
        return q, attn

    def _constant_first_queries(self, queries: torch.Tensor) -> torch.Tensor | None:
        """The first layer's self-attention block on queries shared by the batch, kept while nothing it depends on
        changes: in inference (no gradients, evaluation mode) the class embeddings of pixel-tag attention are
        constants, so this part of the decoder is too. ``None`` where it must be computed (training, gradients,
        per-image queries, tracing, export or compilation, which must record it, inference tensors, which keep no
        version)."""
        if (
            queries.dim() != 2
            or self.training
            or torch.is_grad_enabled()
            or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()
        ):
            return None
        layer = self.layers[0]
        tensors = [queries, *layer.self_attn.parameters(), *layer.norm1.parameters()]
        if any(t.is_inference() for t in tensors):  # no version counter to tell a change
            return None
        dev = queries.device.type
        key = (
            queries.dtype,
            queries.device,
            torch.is_autocast_enabled(dev),
            torch.get_autocast_dtype(dev),
            *((t.data_ptr(), t._version) for t in tensors),
        )
        if self._first_cache is None or self._first_cache[0] != key:
            self._first_cache = (key, layer.queries(queries.unsqueeze(0))[0])
        return self._first_cache[1]


class GroupWiseLinear(nn.Module):
    """Class-wise classifier (eq. 9): ``logit_k = w_k . q'_k + b_k`` with weight (K, d) and bias (K,)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.empty(num_classes))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """(B, K, d) -> logits (B, K)."""
        return (q * self.weight).sum(-1) + self.bias
