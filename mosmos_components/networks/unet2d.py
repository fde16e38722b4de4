"""2D U-Net on CLIP's ResNet-50 (open_clip ``ModifiedResNet``) with the optional pixel-tag attention branch
(docs/method.md §4), or on torchvision's ResNet-50 for the ImageNet baseline. Volumes are segmented slice by
slice (MONAI's ``SliceInferer`` in the bundles)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetResBlock
from open_clip.modified_resnet import ModifiedResNet
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from mosmos_components.networks.base import SegmentationNetMixin
from mosmos_components.networks.mosmos_clip import CLIP_MEAN, CLIP_STD
from mosmos_components.networks.pta import PixelTagAttention

__all__ = ["MosmosUNet2D", "RESNET_STYLES"]

RESNET_STYLES = ("clip", "torchvision")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _UpBlock(nn.Module):
    """2x transposed-conv upsampling, concatenation with the skip, residual conv block."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, norm_name: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = UnetResBlock(2, out_ch + skip_ch, out_ch, kernel_size=3, stride=1, norm_name=norm_name)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class MosmosUNet2D(SegmentationNetMixin, nn.Module):
    """U-Net whose encoder is CLIP's ResNet (stem + layer1-4), skips at 1/2, 1/4, 1/8, 1/16 and the input.

    Args:
        in_channels: 1 (grey, repeated to RGB) or 3.
        out_channels: output classes K, background included.
        layers: ResNet blocks per stage ((3, 4, 6, 3) for ResNet-50).
        width: ResNet stem width (64).
        embed_dim: CLIP projection width (1024 for RN50); the PTA branch works in this space.
        attn_heads: heads of CLIP's attention pool (32 for RN50); only its value/output projections are used.
        decoder_channels: widths of the five decoder stages, deepest first.
        use_pta: ``False`` gives the plain network.
        class_names: names of the K classes.
        pta_mode: ``"decoder"`` (MOSMOS pixel-tag attention) or ``"score"`` (the CLIP+DenseCLIP baseline's
            pixel-text score maps; see :class:`~mosmos_components.networks.pta.PixelTagAttention`).
        pta_sigmoid: the outputs are read with a sigmoid (overlapping regions, BraTS): the PTA branch gets a
            learnable per-class offset so that it can predict a region as absent.
        decoder_layers: PTA tag-decoder layers (as pre-trained).
        decoder_heads: PTA tag-decoder heads (as pre-trained).
        norm_name: decoder normalisation.
        radiological_flip: flip both axes of a slice of a RAS volume before the encoder (and the outputs back),
            as :class:`~mosmos_components.networks.MosmosUNETR` does, so slices look like the pre-training images.
        resnet_style: ``"clip"`` (CLIP's ModifiedResNet) or ``"torchvision"`` (torchvision's ResNet with ImageNet
            input standardisation, for the ImageNet baseline: :func:`mosmos_components.transfer.load_imagenet_resnet`;
            ``width`` 64 and no PTA). Both give the decoder the same skip widths.

    Inputs (B, C, H, W) in [0, 1] with H, W multiples of 32. In ``train()`` mode with PTA the output is
    ``(B, 2, K, H, W)`` (segmentation and PTA logits stacked), otherwise ``(B, K, H, W)``.

    >>> net = MosmosUNet2D(1, 14, layers=(1, 1, 1, 1), width=16, embed_dim=64, use_pta=False,
    ...                    decoder_channels=(64, 32, 16, 16, 8)).eval()
    >>> net(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 14, 64, 64])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        layers: Sequence[int] = (3, 4, 6, 3),
        width: int = 64,
        embed_dim: int = 1024,
        attn_heads: int = 32,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        use_pta: bool = True,
        class_names: Sequence[str] | None = None,
        pta_mode: str = "decoder",
        pta_sigmoid: bool = False,
        decoder_layers: int = 2,
        decoder_heads: int = 8,
        norm_name: str = "instance",
        radiological_flip: bool = True,
        resnet_style: str = "clip",
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"MosmosUNet2D takes 1 (grey) or 3 (RGB) input channels, got {in_channels}")
        if resnet_style not in RESNET_STYLES:
            raise ValueError(f"resnet_style must be one of {RESNET_STYLES}, got {resnet_style!r}")
        if resnet_style == "torchvision" and (use_pta or width != 64):
            raise ValueError(
                "resnet_style='torchvision' (the ImageNet baseline) needs use_pta=False (no text encoder "
                f"for class embeddings) and width=64 (torchvision's stem), got use_pta={use_pta}, "
                f"width={width}"
            )
        self.in_channels = in_channels
        self.resnet_style = resnet_style
        self.flip_dims = (2, 3) if radiological_flip else ()
        if resnet_style == "torchvision":
            self.encoder = ResNet(Bottleneck, list(layers))
            self.encoder.fc = nn.Identity()  # the ImageNet classifier is not part of the encoder
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            self.encoder = ModifiedResNet(list(layers), embed_dim, attn_heads, image_size=224, width=width)
            self.encoder.attnpool = None  # only its value/output projections are needed (below)
            mean, std = CLIP_MEAN, CLIP_STD
        feat = width * 32
        self.use_pta = use_pta
        if use_pta:
            self.v_proj, self.c_proj = nn.Linear(feat, feat), nn.Linear(feat, embed_dim)
            self.pta = PixelTagAttention(
                out_channels,
                embed_dim,
                decoder_layers,
                decoder_heads,
                class_names=class_names,
                mode=pta_mode,
                sigmoid_offset=pta_sigmoid,
            )
        else:
            self.pta = None
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        d = list(decoder_channels)
        if len(d) != 5:
            raise ValueError(f"decoder_channels needs 5 widths, got {d}")
        skips = [width * 16, width * 8, width * 4, width, 3]  # layer3, layer2, layer1, stem (1/2), input
        ins = [feat + (out_channels if use_pta else 0)] + d[:-1]
        self.up = nn.ModuleList([_UpBlock(i, s, o, norm_name) for i, s, o in zip(ins, skips, d)])
        self.out = UnetOutBlock(spatial_dims=2, in_channels=d[-1], out_channels=out_channels)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self._flip(x)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        z = (x - self.mean) / self.std
        e = self.encoder
        if self.resnet_style == "torchvision":
            s2 = e.relu(e.bn1(e.conv1(z)))
            l1 = e.layer1(e.maxpool(s2))
        else:
            s2 = e.act3(e.bn3(e.conv3(e.act2(e.bn2(e.conv2(e.act1(e.bn1(e.conv1(z)))))))))
            l1 = e.layer1(e.avgpool(s2))
        l2 = e.layer2(l1)
        l3 = e.layer3(l2)
        l4 = e.layer4(l3)
        return l4, [l3, l2, l1, s2, z]

    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The pixel-tag attention maps ``A`` (B, K, h, w) for an input (B, C, H, W)."""
        if self.pta is None:
            raise ValueError("this network was built with use_pta=False: it has no attention maps")
        l4, _ = self._encode(x)
        return self._flip(self._attention(l4))

    def _attention(self, l4: torch.Tensor) -> torch.Tensor:
        """layer4 features (B, C, h, w) -> pixel-tag attention (B, K, h, w), each pixel through the attention
        pool's value and output projections (DenseCLIP)."""
        grid = tuple(int(s) for s in l4.shape[2:])  # plain ints: a traced size would make the export check fail
        return self.pta(self.c_proj(self.v_proj(l4.flatten(2).transpose(1, 2))), grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # an export: the trace fixes the input size
            if x.shape[1] != self.in_channels:
                raise ValueError(f"expected {self.in_channels} input channel(s), got {x.shape[1]}")
            if x.shape[2] % 32 or x.shape[3] % 32:
                raise ValueError(f"input size {tuple(x.shape[2:])} must be a multiple of 32")
        l4, skips = self._encode(x)
        h = l4
        attn = None
        if self.pta is not None:
            attn = self._attention(l4)
            h = torch.cat([h, attn], dim=1)
        for block, skip in zip(self.up, skips):
            h = block(h, skip)
        logits = self._flip(self.out(h))
        if self.training and attn is not None:
            return torch.stack([logits, self.pta.aux_logits(self._flip(attn), x.shape[2:])], dim=1)
        return logits
