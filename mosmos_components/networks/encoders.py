"""What a segmentation network needs from its image encoder: the contract every encoder implements, and the
registry that builds one by name.

Pixel-tag attention (:class:`~mosmos_components.networks.pta.PixelTagAttention`) needs from an encoder only its
deepest features as tokens on a grid and a projection of them into the text embedding space; the decoder needs the
skips. An encoder is a :class:`PTAEncoder` subclass declared with a name::

    class MyEncoder(PTAEncoder, name="my_encoder"):
        ...

which registers it in :data:`ENCODERS`, so ``MosmosUNet(encoder="my_encoder", encoder_args={...})`` builds it and
a checkpoint sidecar rebuilds it. Its weights come from a pre-training checkpoint through a function registered
with :func:`mosmos_components.transfer.transfer_rule` for the encoder class.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
from torch import nn

__all__ = ["ENCODERS", "EncoderFeatures", "PTAEncoder", "build_encoder", "map_to_tokens", "tokens_to_map"]

ENCODERS: dict[str, type[PTAEncoder]] = {}


class EncoderFeatures(NamedTuple):
    """An encoder's output.

    ``tokens`` (B, N, C): the deepest features, one token per cell of ``grid`` (row-major over the spatial axes);
    ``skips``: the decoder's inputs, deepest first, each (B, C_i, *size_i), the last one the standardised input;
    ``grid``: the token grid (plain ints)."""

    tokens: torch.Tensor
    skips: list[torch.Tensor]
    grid: tuple[int, ...]


def tokens_to_map(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Tokens (B, N, C) -> a feature map (B, C, *grid)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def map_to_tokens(features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A feature map (B, C, *grid) -> tokens (B, N, C) and the grid as plain ints (a traced size would make an
    export's checks fail)."""
    return features.flatten(2).transpose(1, 2), tuple(int(s) for s in features.shape[2:])


class PTAEncoder(nn.Module, metaclass=ABCMeta):
    """The contract between an image encoder and the segmentation networks.

    A subclass sets, in ``__init__``:

    * ``spatial_dims`` (2 or 3) and ``in_channels`` (the image channels it takes);
    * ``token_channels``: the width C of :attr:`EncoderFeatures.tokens`;
    * ``skip_channels`` and ``skip_strides``: the channels of each skip, deepest first, and its down-sampling
      factor from the input (the last skip is the standardised input: stride 1);
    * ``reduction``: the down-sampling factor of the token grid (inputs must be multiples of it);
    * ``embed_dim``: the width of :meth:`project` (the text embedding space), ``None`` when the encoder was built
      without the projection (no pixel-tag attention);

    and implements :meth:`forward` (an input in [0, 1], already flipped by the network, -> :class:`EncoderFeatures`;
    the encoder standardises it the way its pre-training did) and :meth:`project`.
    """

    encoder_name: ClassVar[str | None] = None
    spatial_dims: int
    in_channels: int
    token_channels: int
    skip_channels: tuple[int, ...]
    skip_strides: tuple[int, ...]
    reduction: int
    embed_dim: int | None

    def __init_subclass__(cls, name: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in ENCODERS and ENCODERS[name].__qualname__ != cls.__qualname__:
                raise ValueError(f"encoder name {name!r} is taken by {ENCODERS[name].__qualname__}")
            cls.encoder_name = name
            ENCODERS[name] = cls

    @abstractmethod
    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        """An input in [0, 1] (B, C, *size) -> :class:`EncoderFeatures`."""

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, token_channels) -> (B, N, embed_dim), the text embedding space pixel-tag attention
        works in. This default is the encoder without a projection (``embed_dim`` None)."""
        raise ValueError(
            f"{type(self).__name__} was built without a projection to the text embedding space (embed_dim None); "
            "pixel-tag attention needs one"
        )


def build_encoder(name: str, **kwargs) -> PTAEncoder:
    """The registered encoder ``name`` built with ``kwargs``."""
    if name not in ENCODERS:
        raise ValueError(
            f"unknown encoder {name!r} (registered: {sorted(ENCODERS)}; an encoder registers itself by "
            "subclassing PTAEncoder with name=..., in a module imported by mosmos_components.networks)"
        )
    return ENCODERS[name](**kwargs)
