"""Any timm CNN with a feature pyramid (EfficientNet-Lite0, ResNets, ConvNeXt, ...) as the encoder of the 2D
U-Net: the image tower of an open_clip model with a timm trunk (``timm_model_name``, e.g. the shipped
``mosmos-lite``), or a timm model's ImageNet weights (the ImageNet baseline), and the weight files they come in."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from mosmos_components.networks.encoders import EncoderFeatures, PTAEncoder, map_to_tokens

__all__ = ["TimmCNNEncoder", "read_weight_file", "map_by_position"]

logger = logging.getLogger(__name__)


def read_weight_file(path: str | os.PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """A plain state dict from ``.safetensors`` or a torch file (``weights_only``; a ``state_dict``/``model``
    entry is unwrapped); ``what`` names the file in errors."""
    from mosmos_components.checkpoint import load_state_dict

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = load_state_dict(path, what)
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return state


def map_by_position(state: dict, target: dict, source: str) -> dict:
    """``state`` renamed to ``target``'s names: directly when it holds every target name, else one to one by
    position when the two hold the same tensors in the same order under other names (efficientnet_pytorch's
    ``_conv_stem``, ``_blocks.N`` against timm's ``conv_stem``, ``blocks.N.M``), every shape checked. Tensors the
    target lacks may only trail (a classifier); anything else is an error naming ``source``.

    >>> a = {"_stem.weight": torch.zeros(4, 3), "_fc.weight": torch.zeros(10, 4)}
    >>> sorted(map_by_position(a, {"stem.weight": torch.ones(4, 3)}, "f.pth"))
    ['stem.weight']
    """
    if set(target) <= set(state):
        bad = [k for k in target if tuple(state[k].shape) != tuple(target[k].shape)]
        if bad:
            raise ValueError(
                f"{source}: '{bad[0]}' is {tuple(state[bad[0]].shape)} in the file, "
                f"{tuple(target[bad[0]].shape)} in the model (another architecture or size)"
            )
        return {k: state[k] for k in target}
    src, tgt = list(state.items()), list(target.items())
    if len(src) < len(tgt) or len(src) - len(tgt) > 2:
        raise ValueError(
            f"{source}: {len(src)} tensors in the file, {len(tgt)} in the model, under other names: not the same "
            "architecture (give weights of the model named in the config)"
        )
    mapped = {}
    for (sk, sv), (tk, tv) in zip(src, tgt):
        if tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(
                f"{source}: tensor #{len(mapped)} '{sk}' {tuple(sv.shape)} does not fit '{tk}' {tuple(tv.shape)}: "
                "not the same architecture"
            )
        mapped[tk] = sv
    logger.info("%s: %d tensors mapped by position (%s -> %s, ...)", source, len(mapped), src[0][0], tgt[0][0])
    return mapped


class TimmCNNEncoder(PTAEncoder, name="timm_cnn"):
    """A timm CNN as a :class:`PTAEncoder` for :class:`~mosmos_components.networks.MosmosUNet` (2D): the trunk as
    open_clip's ``TimmModel`` holds it (``trunk.*``, same tensor names), the features at strides 16, 8, 4 and 2 and
    the standardised input as skips, the final features (after the trunk's head convolution) as tokens, and the
    projection into the text embedding space as open_clip's linear ``head.proj``.

    Args:
        in_channels: 1 (grey, repeated to RGB) or 3.
        model_name: a timm model with ``forward_intermediates`` and feature strides 2 ... 32.
        embed_dim: width of the projection to the text space (pixel-tag attention); ``None`` builds none.
        image_mean, image_std: the standardisation the weights were trained with (EfficientNet-Lite: 0.5, 0.5).

    >>> enc = TimmCNNEncoder(1, "efficientnet_lite0", embed_dim=8)
    >>> f = enc(torch.zeros(1, 1, 64, 64))
    >>> f.tokens.shape, f.grid, [s.shape[1] for s in f.skips], enc.project(f.tokens).shape
    (torch.Size([1, 4, 1280]), (2, 2), [112, 40, 24, 16, 3], torch.Size([1, 4, 8]))
    """

    def __init__(
        self,
        in_channels: int = 1,
        model_name: str = "efficientnet_lite0",
        embed_dim: int | None = None,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__()
        import timm

        if in_channels not in (1, 3):
            raise ValueError(f"TimmCNNEncoder takes 1 (grey) or 3 (RGB) channels, got {in_channels}")
        self.trunk = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="")
        if not hasattr(self.trunk, "forward_intermediates"):
            raise ValueError(f"timm model {model_name!r} has no forward_intermediates: it cannot give skips")
        info = [(f["num_chs"], f["reduction"]) for f in self.trunk.feature_info]
        strides = [r for _, r in info]
        if strides[-1] != 32 or not {2, 4, 8, 16} <= set(strides):
            raise ValueError(f"timm model {model_name!r} has feature strides {strides}; the U-Net needs 2 ... 32")
        self._indices = [strides.index(r) for r in (16, 8, 4, 2)]
        self.model_name = model_name
        self.spatial_dims, self.in_channels, self.reduction = 2, in_channels, 32
        self.token_channels = int(self.trunk.num_features)
        self.skip_channels = (*(info[i][0] for i in self._indices), 3)
        self.skip_strides = (16, 8, 4, 2, 1)
        self.embed_dim = embed_dim
        self.proj = nn.Linear(self.token_channels, embed_dim, bias=False) if embed_dim else None
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        final, inter = self.trunk.forward_intermediates(x, indices=len(self.trunk.feature_info))
        tokens, grid = map_to_tokens(final)
        return EncoderFeatures(tokens, [inter[i] for i in self._indices] + [x], grid)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return super().project(tokens)
        return self.proj(tokens)
