"""3D UNETR whose ViT encoder is open_clip's own transformer (so CLIP's 2D ViT transfers into it), with the
optional pixel-tag attention branch (docs/method.md §4)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from open_clip.transformer import LayerNorm, QuickGELU, Transformer
from torch import nn

from mosmos_components.networks.base import SegmentationNetMixin
from mosmos_components.networks.pta import PixelTagAttention

__all__ = ["ClipViT3DEncoder", "MosmosUNETR", "CLIP_GREY_MEAN", "CLIP_GREY_STD", "VIT_STYLES"]

# inputs in [0, 1] are standardised like CLIP's images (mean/std of its RGB statistics), so that a transferred
# encoder sees the distribution it was pre-trained on
CLIP_GREY_MEAN, CLIP_GREY_STD = 0.4490, 0.2686
VIT_STYLES = ("clip", "timm")


class ClipViT3DEncoder(nn.Module):
    """CLIP's vision transformer for volumes: a 3D patch embedding and position grid around open_clip's
    ``Transformer``; parameter names follow open_clip's ``VisionTransformer`` (``conv1``,
    ``class_embedding``, ``positional_embedding``, ``ln_pre``, ``transformer``, ``ln_post``, ``proj``).

    Args:
        in_channels: image channels.
        img_size: input size (H, W, D); each a multiple of ``patch_size``.
        patch_size: cubic patch edge.
        width: token width (768 for ViT-B).
        layers: transformer blocks (12).
        heads: attention heads (12).
        mlp_ratio: MLP width ratio (4).
        embed_dim: projection width (CLIP's joint space, 512); ``None`` builds no projection.
        quick_gelu: QuickGELU (OpenAI CLIP weights) instead of GELU.
        vit_style: ``"clip"`` (open_clip's ViT: bias-free patch embedding, ``ln_pre``) or ``"timm"`` (the ImageNet
            ViT of timm/Google: patch embedding with bias, no pre-norm, LayerNorm eps 1e-6), for the ImageNet
            baseline (:func:`mosmos_components.transfer.load_imagenet_vit`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: Sequence[int] = (96, 96, 96),
        patch_size: int = 16,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        embed_dim: int | None = 512,
        quick_gelu: bool = False,
        vit_style: str = "clip",
    ) -> None:
        super().__init__()
        if any(s % patch_size for s in img_size):
            raise ValueError(f"img_size {tuple(img_size)} must be a multiple of patch_size {patch_size}")
        if vit_style not in VIT_STYLES:
            raise ValueError(f"vit_style must be one of {VIT_STYLES}, got {vit_style!r}")
        timm_style = vit_style == "timm"
        norm = functools.partial(LayerNorm, eps=1e-6) if timm_style else LayerNorm
        self.grid = tuple(int(s) // patch_size for s in img_size)
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=patch_size, stride=patch_size, bias=timm_style)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        n = self.grid[0] * self.grid[1] * self.grid[2]
        self.positional_embedding = nn.Parameter(scale * torch.randn(n + 1, width))
        self.ln_pre = nn.Identity() if timm_style else LayerNorm(width)
        self.transformer = Transformer(
            width, layers, heads, mlp_ratio, act_layer=QuickGELU if quick_gelu else nn.GELU, norm_layer=norm
        )
        self.ln_post = norm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim)) if embed_dim else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W, D) -> tokens (B, 1 + N, width) with class token, positions and ``ln_pre``."""
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward(self, x: torch.Tensor, indices: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the last patch tokens after ``ln_post`` (B, N, width) and the patch tokens after each block in
        ``indices`` (0-based)."""
        if not indices:
            return self.ln_post(self.transformer(self.embed(x))[:, 1:]), []
        x, inter = self.transformer.forward_intermediates(self.embed(x), indices=list(indices))
        return self.ln_post(x[:, 1:]), [t[:, 1:] for t in inter]


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
        pta_mode: ``"decoder"`` (MOSMOS pixel-tag attention) or ``"score"`` (the CLIP+DenseCLIP baseline's
            pixel-text score maps; see :class:`~mosmos_components.networks.pta.PixelTagAttention`).
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
        vit_style: ``"clip"`` or ``"timm"`` (the ImageNet baseline's ViT; see :class:`ClipViT3DEncoder`); inputs
            in [0, 1] are standardised with CLIP's statistics, or with timm's ViT ones (0.5, 0.5).

    In ``train()`` mode with PTA the output is ``(B, 2, K, H, W, D)``: the segmentation logits and the PTA
    logits ``LI(A)/tau_2`` stacked (see :class:`~mosmos_components.losses.MosmosSegLoss`); otherwise (eval,
    inference, export) only the segmentation logits ``(B, K, H, W, D)``.

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
    ) -> None:
        super().__init__()
        if patch_size not in (16, 32):
            raise ValueError(f"MosmosUNETR supports patch_size 16 or 32 (ViT-B/16, ViT-B/32), got {patch_size}")
        if num_layers < 4:
            raise ValueError("num_layers must be >= 4 (three skip connections and the bottleneck)")
        self.use_pta = use_pta
        # each encoder sees the input distribution of its pre-training: CLIP's statistics, or timm ViTs' 0.5 / 0.5
        self.input_mean, self.input_std = (0.5, 0.5) if vit_style == "timm" else (CLIP_GREY_MEAN, CLIP_GREY_STD)
        self.flip_dims = (2, 3) if radiological_flip else ()
        self.skip_indices = [num_layers * k // 4 - 1 for k in (1, 2, 3)]
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
        )
        self.grid = self.encoder.grid
        self.pta = (
            PixelTagAttention(
                out_channels,
                embed_dim,
                decoder_layers,
                decoder_heads,
                class_names=class_names,
                mode=pta_mode,
                sigmoid_offset=pta_sigmoid,
                depth=self.grid[2],
            )
            if use_pta
            else None
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

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, C, h, w, d)."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)

    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The pixel-tag attention maps ``A`` (B, K, h, w, d) for an input (B, C, H, W, D)."""
        if self.pta is None:
            raise ValueError("this network was built with use_pta=False: it has no attention maps")
        tokens, _ = self.encoder((self._flip(x) - self.input_mean) / self.input_std)
        return self._flip(self._attention(tokens))

    def _attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last patch tokens (B, N, width) -> pixel-tag attention (B, K, h, w, d) over CLIP's projected tokens."""
        return self.pta(tokens @ self.encoder.proj, self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(s * self.patch_size for s in self.grid)
        if not torch.jit.is_tracing() and tuple(x.shape[2:]) != size:
            raise ValueError(f"input spatial size {tuple(x.shape[2:])} != img_size {size}")
        z = (self._flip(x) - self.input_mean) / self.input_std
        tokens, skips = self.encoder(z, self.skip_indices)
        enc1 = self.encoder1(z)
        enc2 = self.encoder2(self._grid(skips[0]))
        enc3 = self.encoder3(self._grid(skips[1]))
        enc4 = self.encoder4(self._grid(skips[2]))
        bottleneck = self._grid(tokens)
        attn = None
        if self.pta is not None:
            attn = self._attention(tokens)
            bottleneck = torch.cat([bottleneck, attn], dim=1)
        dec3 = self.decoder5(bottleneck, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        logits = self._flip(self.out(self.decoder2(dec1, enc1)))
        if self.training and attn is not None:
            return torch.stack([logits, self.pta.aux_logits(self._flip(attn), x.shape[2:])], dim=1)
        return logits
