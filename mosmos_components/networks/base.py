"""What every MOSMOS segmentation network shares, and the registry that rebuilds one from its sidecar.

A segmentation network subclasses :class:`SegmentationNetMixin` (before ``nn.Module``): that registers it by class
name in :data:`SEGMENTATION_NETWORKS`, which :func:`mosmos_components.checkpoint.load_segmentation_network` reads,
and records its constructor arguments for the checkpoint sidecar (:meth:`SegmentationNetMixin.config`). It sets
``self.encoder`` (a :class:`~mosmos_components.networks.encoders.PTAEncoder`), ``self.pta`` (from
:meth:`SegmentationNetMixin.build_pta`, or ``None``) and ``self.flip_dims``, and runs pixel-tag attention through
:meth:`~SegmentationNetMixin.encode`, :meth:`~SegmentationNetMixin.bottleneck` and
:meth:`~SegmentationNetMixin.outputs`: the same for every encoder and decoder.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch

from mosmos_components.networks.encoders import EncoderFeatures, tokens_to_map
from mosmos_components.networks.pta import PixelTagAttention

__all__ = ["SEGMENTATION_NETWORKS", "SegmentationNetMixin", "TrainingOutput"]

SEGMENTATION_NETWORKS: dict[str, type] = {}


class TrainingOutput(NamedTuple):
    """A network's output in ``train()`` mode with pixel-tag attention: the segmentation logits and the PTA logits
    ``LI(A) / tau_2``, both ``(B, K, *size)``, read by :class:`~mosmos_components.losses.MosmosSegLoss`. Two tensors,
    not one stacked ``(B, 2, K, *size)``: stacking would copy both full-resolution outputs forward and their
    gradients backward at every step."""

    segmentation: torch.Tensor
    pta: torch.Tensor


def _json_value(v):
    return list(v) if isinstance(v, (tuple, list)) else v


class SegmentationNetMixin:
    """The sidecar config, the registry entry, the in-plane radiological flip and the pixel-tag attention flow of a
    segmentation network."""

    # checkpoints of earlier versions: state_dict key prefix -> its name now (renamed on load)
    renamed_keys: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        SEGMENTATION_NETWORKS[cls.__name__] = cls
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            init(self, *args, **kw)
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            # the most derived class's arguments win (its __init__ returns last)
            self._config = {k: _json_value(v) for k, v in list(bound.arguments.items())[1:]}

        cls.__init__ = recording_init

    def config(self) -> dict:
        """The constructor arguments (as JSON values), the format tag, the class name and the class names."""
        cfg = dict(
            self._config, format="mosmos-seg/1", network=type(self).__name__, spatial_dims=self.encoder.spatial_dims
        )
        if self.pta is not None:
            cfg["class_names"] = self.pta.class_names
        return cfg

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for old, new in self.renamed_keys.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def build_pta(
        use_pta: bool,
        out_channels: int,
        embed_dim: int | None,
        decoder_layers: int,
        decoder_heads: int,
        class_names: Sequence[str] | None,
        pta_mode: str,
        pta_sigmoid: bool,
        grid: Sequence[int] | None = None,
    ) -> PixelTagAttention | None:
        """The pixel-tag attention branch (``None`` without PTA); ``grid``: a 3D encoder's fixed token grid."""
        if not use_pta:
            return None
        if embed_dim is None:
            raise ValueError("pixel-tag attention needs an encoder with a projection to the text space (embed_dim)")
        depth = grid[2] if grid is not None and len(grid) == 3 else 0
        return PixelTagAttention(
            out_channels,
            embed_dim,
            decoder_layers,
            decoder_heads,
            class_names=class_names,
            mode=pta_mode,
            sigmoid_offset=pta_sigmoid,
            depth=depth,
        )

    def _flip(self, t: torch.Tensor) -> torch.Tensor:
        return t.flip(self.flip_dims) if self.flip_dims else t

    def encode(self, x: torch.Tensor) -> tuple[EncoderFeatures, torch.Tensor | None]:
        """The encoder's features of an input (flipped as the encoder expects) and, with PTA, the pixel-tag
        attention maps ``A (B, K, *grid)`` over its projected tokens (in the encoder's orientation)."""
        features = self.encoder(self._flip(x))
        if self.pta is None:
            return features, None
        return features, self.pta(self.encoder.project(features.tokens), features.grid)

    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The pixel-tag attention maps ``A`` (B, K, *grid) for an input (B, C, *size)."""
        if self.pta is None:
            raise ValueError("this network was built with use_pta=False: it has no attention maps")
        return self._flip(self.encode(x)[1])

    @staticmethod
    def bottleneck(features: EncoderFeatures, attention: torch.Tensor | None) -> torch.Tensor:
        """The decoder's deepest input: the tokens as a map, with PTA concatenated with ``A`` (``concat[S, A]``)."""
        deepest = tokens_to_map(features.tokens, features.grid)
        return deepest if attention is None else torch.cat([deepest, attention], dim=1)

    def outputs(
        self, logits: torch.Tensor, attention: torch.Tensor | None, size: Sequence[int]
    ) -> torch.Tensor | TrainingOutput:
        """The segmentation logits flipped back; in training with PTA a :class:`TrainingOutput` with the PTA logits
        too (:class:`~mosmos_components.losses.MosmosSegLoss` reads both)."""
        logits = self._flip(logits)
        if self.training and attention is not None:
            return TrainingOutput(logits, self.pta.aux_logits(self._flip(attention), size))
        return logits
