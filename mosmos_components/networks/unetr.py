"""3D UNETR whose ViT encoder is open_clip's own transformer (so CLIP's 2D ViT transfers into it), with the
optional pixel-tag attention branch (docs/method.md §4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from mosmos_components.networks.base import SegmentationNetMixin
from mosmos_components.networks.vit3d import ClipViT3DEncoder

__all__ = ["MosmosUNETR"]


class MosmosUNETR(SegmentationNetMixin, nn.Module):
    """UNETR (Hatamizadeh et al.) on a CLIP ViT encoder, with pixel-tag attention (MOSMOS).

    Args:
        in_channels: image channels (1 for CT/MRI, 4 for BraTS).
        out_channels: output classes K, background included.
        img_size: crop size (H, W, D) (96^3 in the paper).
        patch_size: 16 (ViT-B/16, the paper's default) or 32 (ViT-B/32, Table 5; PubMedCLIP's ViT). UNETR's
            pyramid stays at 1/8, 1/4, 1/2 of the input: with patch 32 every skip path gets one more 2x
            up-sampling and the bottleneck is up-sampled 4x.
        hidden_size: ViT width (768).
        num_layers: ViT depth (12); skips come after blocks depth/4, depth/2, 3 depth/4.
        num_heads: ViT heads (12).
        mlp_ratio: ViT MLP ratio.
        embed_dim: CLIP projection width (512); the PTA branch works in this space.
        feature_size: UNETR decoder base width (16).
        use_pta: ``False`` gives the plain network (Random/CLIP baselines).
        class_names: names of the K classes (their embeddings come with the pre-trained weights).
        pta_mode: ``"decoder"`` (MOSMOS pixel-tag attention), ``"denseclip"`` (the CLIP+DenseCLIP baseline's
            pixel-text score maps with context-aware prompting) or ``"score"`` (the score maps of fixed prompts);
            see :class:`~mosmos_components.networks.pta.PixelTagAttention`.
        pta_sigmoid: the outputs are read with a sigmoid (overlapping regions, BraTS): the PTA branch gets a
            learnable per-class offset so that it can predict a region as absent.
        decoder_layers: PTA tag-decoder layers (as pre-trained).
        decoder_heads: PTA tag-decoder heads (as pre-trained).
        quick_gelu: QuickGELU activations (OpenAI CLIP weights).
        norm_name: decoder normalisation.
        radiological_flip: flip the two in-plane axes of a RAS volume before the encoder (and the outputs
            back), so the encoder sees slices the way its 2D pre-training images were laid out (MONAI's PIL reader
            puts a radiologically displayed JPEG's columns, patient right to left, on axis 0 and its rows,
            anterior to posterior, on axis 1: the opposite of RAS on both axes).
        vit_style: ``"clip"`` or ``"timm"`` (the ImageNet baseline's ViT; see
            :class:`~mosmos_components.networks.vit3d.ClipViT3DEncoder`); inputs in [0, 1] are standardised with
            CLIP's statistics, or with timm's ViT ones (0.5, 0.5).
        image_mean, image_std: the pre-training's RGB standardisation when it is not the style's (a CLIP with a
            timm ViT such as BiomedCLIP: ``vit_style="timm"`` with CLIP's statistics).

    In ``train()`` mode with PTA the output is a :class:`~mosmos_components.networks.base.TrainingOutput`: the
    segmentation logits and the PTA logits ``LI(A)/tau_2``, each ``(B, K, H, W, D)`` (see
    :class:`~mosmos_components.losses.MosmosSegLoss`); otherwise (eval, inference, export) only the segmentation
    logits ``(B, K, H, W, D)``.

    >>> net = MosmosUNETR(1, 14, img_size=(64, 64, 32), hidden_size=64, num_layers=4, num_heads=2,
    ...                   embed_dim=64, feature_size=8, decoder_heads=4, use_pta=False).eval()
    >>> net(torch.zeros(1, 1, 64, 64, 32)).shape
    torch.Size([1, 14, 64, 64, 32])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        img_size: Sequence[int] = (96, 96, 96),
        patch_size: int = 16,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        embed_dim: int = 512,
        feature_size: int = 16,
        use_pta: bool = True,
        class_names: Sequence[str] | None = None,
        pta_mode: str = "decoder",
        pta_sigmoid: bool = False,
        decoder_layers: int = 2,
        decoder_heads: int = 8,
        quick_gelu: bool = False,
        norm_name: str = "instance",
        radiological_flip: bool = True,
        vit_style: str = "clip",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if patch_size not in (16, 32):
            raise ValueError(f"MosmosUNETR supports patch_size 16 or 32 (ViT-B/16, ViT-B/32), got {patch_size}")
        self.use_pta = use_pta
        self.flip_dims = (2, 3) if radiological_flip else ()
        self.encoder = ClipViT3DEncoder(
            in_channels,
            img_size,
            patch_size,
            hidden_size,
            num_layers,
            num_heads,
            mlp_ratio,
            embed_dim if use_pta else None,
            quick_gelu,
            vit_style,
            image_mean,
            image_std,
        )
        self.grid = self.encoder.grid
        self.pta = self.build_pta(
            use_pta,
            out_channels,
            embed_dim,
            decoder_layers,
            decoder_heads,
            class_names,
            pta_mode,
            pta_sigmoid,
            self.grid,
        )
        fs, h = feature_size, hidden_size
        kw = dict(spatial_dims=3, kernel_size=3, norm_name=norm_name, res_block=True)
        self.encoder1 = UnetrBasicBlock(in_channels=in_channels, out_channels=fs, stride=1, **kw)
        extra = patch_size // 32  # one more 2x step per skip path for /32 patches
        self.patch_size = patch_size
        self.encoder2 = UnetrPrUpBlock(
            in_channels=h,
            out_channels=fs * 2,
            num_layer=2 + extra,
            stride=1,
            upsample_kernel_size=2,
            conv_block=True,
            **kw,
        )
        self.encoder3 = UnetrPrUpBlock(
            in_channels=h,
            out_channels=fs * 4,
            num_layer=1 + extra,
            stride=1,
            upsample_kernel_size=2,
            conv_block=True,
            **kw,
        )
        self.encoder4 = UnetrPrUpBlock(
            in_channels=h,
            out_channels=fs * 8,
            num_layer=0 + extra,
            stride=1,
            upsample_kernel_size=2,
            conv_block=True,
            **kw,
        )
        bottleneck = h + (out_channels if use_pta else 0)  # concat[S, A]
        self.decoder5 = UnetrUpBlock(
            in_channels=bottleneck, out_channels=fs * 8, upsample_kernel_size=patch_size // 8, **kw
        )
        self.decoder4 = UnetrUpBlock(in_channels=fs * 8, out_channels=fs * 4, upsample_kernel_size=2, **kw)
        self.decoder3 = UnetrUpBlock(in_channels=fs * 4, out_channels=fs * 2, upsample_kernel_size=2, **kw)
        self.decoder2 = UnetrUpBlock(in_channels=fs * 2, out_channels=fs, upsample_kernel_size=2, **kw)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=fs, out_channels=out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(s * self.patch_size for s in self.grid)
        if not torch.jit.is_tracing() and tuple(x.shape[2:]) != size:
            raise ValueError(f"input spatial size {tuple(x.shape[2:])} != img_size {size}")
        features, attn = self.encode(x)
        skip4, skip3, skip2, z = features.skips
        dec3 = self.decoder5(self.bottleneck(features, attn), self.encoder4(skip4))
        dec2 = self.decoder4(dec3, self.encoder3(skip3))
        dec1 = self.decoder3(dec2, self.encoder2(skip2))
        return self.outputs(self.out(self.decoder2(dec1, self.encoder1(z))), attn, x.shape[2:])
