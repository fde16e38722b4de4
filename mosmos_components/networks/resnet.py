"""ResNet encoders of the 2D U-Net (:class:`~mosmos_components.networks.MosmosUNet2D`): CLIP's ResNet (open_clip
``ModifiedResNet``, MOSMOS and the CLIP baselines) and torchvision's (the ImageNet baseline)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from mosmos_components.networks.encoders import EncoderFeatures, PTAEncoder, map_to_tokens
from mosmos_components.networks.mosmos_clip import CLIP_MEAN, CLIP_STD

__all__ = ["ClipResNetEncoder", "TorchvisionResNetEncoder", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _ResNetPyramid:
    """What both ResNet encoders share: grey inputs repeated to RGB and standardised, skips at 1/16, 1/8, 1/4, 1/2
    and the input; parameter names are the wrapped ResNet's own (``conv1``, ``layer1``, ...)."""

    def _setup(self, in_channels: int, width: int, mean: Sequence[float], std: Sequence[float]) -> None:
        if in_channels not in (1, 3):
            raise ValueError(f"a ResNet encoder takes 1 (grey) or 3 (RGB) input channels, got {in_channels}")
        self.spatial_dims, self.in_channels, self.token_channels = 2, in_channels, width * 32
        self.skip_channels = (width * 16, width * 8, width * 4, width, 3)  # layer3, layer2, layer1, stem, input
        self.skip_strides, self.reduction = (16, 8, 4, 2, 1), 32
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return (x - self.mean) / self.std

    def _pyramid(self, z: torch.Tensor, stem: torch.Tensor, layer1_in: torch.Tensor) -> EncoderFeatures:
        l1 = self.layer1(layer1_in)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        tokens, grid = map_to_tokens(self.layer4(l3))
        return EncoderFeatures(tokens, [l3, l2, l1, stem, z], grid)


class ClipResNetEncoder(_ResNetPyramid, PTAEncoder, ModifiedResNet, name="clip_resnet"):
    """CLIP's ResNet (stem + layer1-4) on inputs standardised with CLIP's statistics; the projection into the text
    space is, per pixel, the attention pool's value and output projections (``v_proj``, ``c_proj``: DenseCLIP).

    Args:
        in_channels: 1 (grey, repeated to RGB) or 3.
        layers: blocks per stage ((3, 4, 6, 3) for ResNet-50).
        width: stem width (64).
        embed_dim: projection width (1024 for RN50).
        attn_heads: heads of CLIP's attention pool (only its value/output projections are kept).
        with_projection: build ``v_proj``/``c_proj`` (pixel-tag attention needs them).
    """

    def __init__(
        self,
        in_channels: int = 1,
        layers: Sequence[int] = (3, 4, 6, 3),
        width: int = 64,
        embed_dim: int = 1024,
        attn_heads: int = 32,
        with_projection: bool = True,
    ) -> None:
        ModifiedResNet.__init__(self, list(layers), embed_dim, attn_heads, image_size=224, width=width)
        self.attnpool = None  # only its value/output projections are needed (below)
        self._setup(in_channels, width, CLIP_MEAN, CLIP_STD)
        self.embed_dim = embed_dim if with_projection else None
        if with_projection:
            feat = width * 32
            self.v_proj, self.c_proj = nn.Linear(feat, feat), nn.Linear(feat, embed_dim)

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        z = self.standardise(x)
        stem = self.act3(self.bn3(self.conv3(self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(z)))))))))
        return self._pyramid(z, stem, self.avgpool(stem))

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().project(tokens) if self.embed_dim is None else self.c_proj(self.v_proj(tokens))


class TorchvisionResNetEncoder(_ResNetPyramid, PTAEncoder, ResNet, name="torchvision_resnet"):
    """torchvision's ResNet (Bottleneck blocks, stem width 64) on inputs standardised with ImageNet's statistics,
    for the ImageNet baseline (:func:`mosmos_components.transfer.load_imagenet_resnet`); no projection (there is no
    text encoder to meet).

    Args:
        in_channels: 1 (grey, repeated to RGB) or 3.
        layers: blocks per stage ((3, 4, 6, 3) for ResNet-50).
    """

    def __init__(self, in_channels: int = 1, layers: Sequence[int] = (3, 4, 6, 3)) -> None:
        ResNet.__init__(self, Bottleneck, list(layers))
        self.fc = nn.Identity()  # the ImageNet classifier is not part of the encoder
        self._setup(in_channels, 64, IMAGENET_MEAN, IMAGENET_STD)
        self.embed_dim = None

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        z = self.standardise(x)
        stem = self.relu(self.bn1(self.conv1(z)))
        return self._pyramid(z, stem, self.maxpool(stem))
