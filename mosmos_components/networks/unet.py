"""U-Nets on any pyramid encoder, with the optional pixel-tag attention branch (docs/method.md §4):
:class:`MosmosUNet` (the encoder by its registered name) and :class:`MosmosUNet2D`, the paper's 2D U-Net on CLIP's
ResNet-50 (or torchvision's, for the ImageNet baseline). Volumes are segmented slice by slice by a 2D network
(MONAI's ``SliceInferer`` in the bundles)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetResBlock
from monai.networks.layers import Conv
from monai.networks.nets import UNet
from torch import nn

from mosmos_components.networks.base import SegmentationNetMixin
from mosmos_components.networks.encoders import build_encoder
from mosmos_components.networks.resnet import ClipResNetEncoder, TorchvisionResNetEncoder

__all__ = ["MosmosUNet", "MosmosUNet2D", "RESNET_STYLES", "StockUNet"]

RESNET_STYLES = {"clip": ClipResNetEncoder.encoder_name, "torchvision": TorchvisionResNetEncoder.encoder_name}


class _UpBlock(nn.Module):
    """2x transposed-conv upsampling, concatenation with the skip, residual conv block."""

    def __init__(self, spatial_dims: int, in_ch: int, skip_ch: int, out_ch: int, norm_name: str) -> None:
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = UnetResBlock(spatial_dims, out_ch + skip_ch, out_ch, kernel_size=3, stride=1, norm_name=norm_name)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class MosmosUNet(SegmentationNetMixin, nn.Module):
    """A U-Net on a registered pyramid encoder (:data:`~mosmos_components.networks.encoders.ENCODERS`): one 2x
    up-sampling block per skip, the deepest features concatenated with the pixel-tag attention maps.

    Args:
        in_channels: image channels (the encoder's).
        out_channels: output classes K, background included.
        encoder: the encoder's registered name (``"clip_resnet"``, ``"torchvision_resnet"``, or one of yours).
        encoder_args: its other constructor arguments (a projection to the text space is needed for PTA).
        decoder_channels: widths of the decoder stages, deepest first, one per skip.
        use_pta: ``False`` gives the plain network.
        class_names: names of the K classes.
        pta_mode: ``"decoder"`` (MOSMOS pixel-tag attention), ``"denseclip"`` (the CLIP+DenseCLIP baseline's
            pixel-text score maps with context-aware prompting) or ``"score"`` (the score maps of fixed prompts);
            see :class:`~mosmos_components.networks.pta.PixelTagAttention`.
        pta_sigmoid: the outputs are read with a sigmoid (overlapping regions, BraTS): the PTA branch gets a
            learnable per-class offset so that it can predict a region as absent.
        decoder_layers: PTA tag-decoder layers (as pre-trained).
        decoder_heads: PTA tag-decoder heads (as pre-trained).
        norm_name: decoder normalisation.
        radiological_flip: flip the two in-plane axes of a RAS image before the encoder (and the outputs back),
            as :class:`~mosmos_components.networks.MosmosUNETR` does, so slices look like the pre-training images.

    Inputs (B, C, *size) in [0, 1], sizes multiples of the encoder's reduction. In ``train()`` mode with PTA the
    output is a :class:`~mosmos_components.networks.base.TrainingOutput` (segmentation and PTA logits, each
    ``(B, K, *size)``), otherwise ``(B, K, *size)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        encoder: str = "clip_resnet",
        encoder_args: dict | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        use_pta: bool = True,
        class_names: Sequence[str] | None = None,
        pta_mode: str = "decoder",
        pta_sigmoid: bool = False,
        decoder_layers: int = 2,
        decoder_heads: int = 8,
        norm_name: str = "instance",
        radiological_flip: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = enc = build_encoder(encoder, in_channels=in_channels, **dict(encoder_args or {}))
        halvings = tuple(enc.reduction // 2 ** (i + 1) for i in range(len(enc.skip_strides)))
        if tuple(enc.skip_strides) != halvings or halvings[-1] != 1:
            raise ValueError(
                f"MosmosUNet up-samples 2x per skip: encoder {encoder!r} (token stride {enc.reduction}) must give "
                f"skips at strides {halvings[:-1] + (1,)}, it gives {tuple(enc.skip_strides)} (a token encoder such "
                "as 'clip_vit3d' goes with MosmosUNETR)"
            )
        d = list(decoder_channels)
        if len(d) != len(enc.skip_channels):
            raise ValueError(f"decoder_channels needs {len(enc.skip_channels)} widths (one per skip), got {d}")
        grid = getattr(enc, "grid", None)
        if use_pta and enc.spatial_dims == 3 and grid is None:
            raise ValueError(f"encoder {encoder!r}: 3D pixel-tag attention needs a fixed token grid (encoder.grid)")
        self.use_pta = use_pta
        self.flip_dims = (2, 3) if radiological_flip else ()
        self.pta = self.build_pta(
            use_pta,
            out_channels,
            enc.embed_dim,
            decoder_layers,
            decoder_heads,
            class_names,
            pta_mode,
            pta_sigmoid,
            grid,
        )
        ins = [enc.token_channels + (out_channels if use_pta else 0)] + d[:-1]
        dims = enc.spatial_dims
        self.up = nn.ModuleList([_UpBlock(dims, i, s, o, norm_name) for i, s, o in zip(ins, enc.skip_channels, d)])
        self.out = UnetOutBlock(spatial_dims=dims, in_channels=d[-1], out_channels=out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # an export: the trace fixes the input size
            if x.shape[1] != self.encoder.in_channels:
                raise ValueError(f"expected {self.encoder.in_channels} input channel(s), got {x.shape[1]}")
            if any(s % self.encoder.reduction for s in x.shape[2:]):
                raise ValueError(f"input size {tuple(x.shape[2:])} must be a multiple of {self.encoder.reduction}")
        features, attn = self.encode(x)
        h = self.bottleneck(features, attn)
        for block, skip in zip(self.up, features.skips):
            h = block(h, skip)
        return self.outputs(self.out(h), attn, x.shape[2:])


class MosmosUNet2D(MosmosUNet):
    """The paper's 2D U-Net: CLIP's ResNet (stem + layer1-4, :class:`~mosmos_components.networks.resnet.
    ClipResNetEncoder`), skips at 1/2, 1/4, 1/8, 1/16 and the input.

    Args:
        in_channels: 1 (grey, repeated to RGB) or 3.
        out_channels: output classes K, background included.
        layers: ResNet blocks per stage ((3, 4, 6, 3) for ResNet-50).
        width: ResNet stem width (64).
        embed_dim: CLIP projection width (1024 for RN50); the PTA branch works in this space.
        attn_heads: heads of CLIP's attention pool (32 for RN50); only its value/output projections are used.
        decoder_channels: widths of the five decoder stages, deepest first.
        use_pta, class_names, pta_mode, pta_sigmoid, decoder_layers, decoder_heads, norm_name, radiological_flip:
            as :class:`MosmosUNet`.
        resnet_style: ``"clip"`` (CLIP's ModifiedResNet) or ``"torchvision"`` (torchvision's ResNet with ImageNet
            input standardisation, for the ImageNet baseline: :func:`mosmos_components.transfer.load_imagenet_resnet`;
            ``width`` 64 and no PTA). Both give the decoder the same skip widths.

    Inputs (B, C, H, W) in [0, 1] with H, W multiples of 32.

    >>> net = MosmosUNet2D(1, 14, layers=(1, 1, 1, 1), width=16, embed_dim=64, use_pta=False,
    ...                    decoder_channels=(64, 32, 16, 16, 8)).eval()
    >>> net(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 14, 64, 64])
    """

    # before 0.5 the PTA projection sat on the network, not on its encoder
    renamed_keys = {"v_proj.": "encoder.v_proj.", "c_proj.": "encoder.c_proj."}

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
        if resnet_style not in RESNET_STYLES:
            raise ValueError(f"resnet_style must be one of {tuple(RESNET_STYLES)}, got {resnet_style!r}")
        if resnet_style == "torchvision" and (use_pta or width != 64):
            raise ValueError(
                "resnet_style='torchvision' (the ImageNet baseline) needs use_pta=False (no text encoder "
                f"for class embeddings) and width=64 (torchvision's stem), got use_pta={use_pta}, "
                f"width={width}"
            )
        if resnet_style == "clip":
            args = dict(layers=layers, width=width, embed_dim=embed_dim, attn_heads=attn_heads, with_projection=use_pta)
        else:
            args = dict(layers=layers)
        super().__init__(
            in_channels,
            out_channels,
            RESNET_STYLES[resnet_style],
            args,
            decoder_channels,
            use_pta,
            class_names,
            pta_mode,
            pta_sigmoid,
            decoder_layers,
            decoder_heads,
            norm_name,
            radiological_flip,
        )
        self.resnet_style = resnet_style


class StockUNet(SegmentationNetMixin, UNet):
    """MONAI's stock :class:`monai.networks.nets.UNet` (residual units, strided convolutions) as a reference
    arm: no pre-trained encoder and no pixel-tag attention, saved, reloaded and run for inference like the
    project's networks (its sidecar records these arguments and ``class_names``). It answers "is it the network
    or the pipeline?" when a MOSMOS network trails a stock one on the same data and budget.

    >>> net = StockUNet(2, 1, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    >>> net(torch.zeros(1, 1, 32, 32)).shape, net.config()["network"]
    (torch.Size([1, 4, 32, 32]), 'StockUNet')
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
        )
        self.pta = None
        self.class_names = list(class_names) if class_names is not None else None

    def config(self) -> dict:
        return dict(self._config, format="mosmos-seg/1", network=type(self).__name__)
