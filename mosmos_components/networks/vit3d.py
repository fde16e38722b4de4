"""CLIP's vision transformer for volumes (the encoder of :class:`~mosmos_components.networks.MosmosUNETR`), so
that CLIP's 2D ViT transfers into a 3D network (:mod:`mosmos_components.transfer`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from open_clip.transformer import LayerNorm, QuickGELU, Transformer
from torch import nn

from mosmos_components.networks.encoders import EncoderFeatures, PTAEncoder, tokens_to_map

__all__ = ["ClipViT3DEncoder", "CLIP_GREY_MEAN", "CLIP_GREY_STD", "VIT_STYLES"]

# inputs in [0, 1] are standardised like CLIP's images (mean/std of its RGB statistics), so that a transferred
# encoder sees the distribution it was pre-trained on
CLIP_GREY_MEAN, CLIP_GREY_STD = 0.4490, 0.2686
VIT_STYLES = ("clip", "timm")


class ClipViT3DEncoder(PTAEncoder, name="clip_vit3d"):
    """CLIP's vision transformer for volumes: a 3D patch embedding and position grid around open_clip's
    ``Transformer``; parameter names follow open_clip's ``VisionTransformer`` (``conv1``,
    ``class_embedding``, ``positional_embedding``, ``ln_pre``, ``transformer``, ``ln_post``, ``proj``).

    A token encoder (:class:`~mosmos_components.networks.encoders.PTAEncoder`): the tokens are the last block's
    patch tokens after ``ln_post``; the skips are the patch tokens after blocks depth/4, depth/2, 3 depth/4
    (deepest first, as maps on the token grid, UNETR's) and the standardised input.

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
        vit_style: ``"clip"`` (open_clip's ViT: bias-free patch embedding, ``ln_pre``; inputs standardised with
            CLIP's statistics) or ``"timm"`` (the ImageNet ViT of timm/Google: patch embedding with bias, no
            pre-norm, LayerNorm eps 1e-6, inputs standardised with 0.5 / 0.5), for the ImageNet baseline
            (:func:`mosmos_components.transfer.load_imagenet_vit`) and CLIPs with a timm ViT (BiomedCLIP).
        image_mean, image_std: the RGB standardisation of the pre-training when it is not the style's (BiomedCLIP:
            CLIP's statistics with a timm ViT); a grey input is standardised with their channel means.
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
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if any(s % patch_size for s in img_size):
            raise ValueError(f"img_size {tuple(img_size)} must be a multiple of patch_size {patch_size}")
        if vit_style not in VIT_STYLES:
            raise ValueError(f"vit_style must be one of {VIT_STYLES}, got {vit_style!r}")
        if layers < 4:
            raise ValueError("layers must be >= 4 (three skip connections and the bottleneck)")
        timm_style = vit_style == "timm"
        # each encoder sees the input distribution of its pre-training: CLIP's statistics, or timm ViTs' 0.5 / 0.5
        self.input_mean, self.input_std = (0.5, 0.5) if timm_style else (CLIP_GREY_MEAN, CLIP_GREY_STD)
        if image_mean is not None or image_std is not None:  # the pre-training's own (e.g. BiomedCLIP's timm ViT)
            if image_mean is None or image_std is None:
                raise ValueError("give image_mean and image_std together")
            self.input_mean = round(sum(image_mean) / len(image_mean), 4)
            self.input_std = round(sum(image_std) / len(image_std), 4)
        norm = functools.partial(LayerNorm, eps=1e-6) if timm_style else LayerNorm
        self.grid = tuple(int(s) // patch_size for s in img_size)
        self.spatial_dims, self.in_channels, self.token_channels = 3, in_channels, width
        self.skip_channels = (width, width, width, in_channels)
        self.skip_strides = (patch_size, patch_size, patch_size, 1)
        self.reduction, self.embed_dim = patch_size, embed_dim
        self.skip_indices = [layers * k // 4 - 1 for k in (1, 2, 3)]
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

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """An input in [0, 1] standardised as the encoder's pre-training images were."""
        return (x - self.input_mean) / self.input_std

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """A standardised (B, C, H, W, D) -> tokens (B, 1 + N, width) with class token, positions and ``ln_pre``."""
        z = self.conv1(z).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(z.dtype).expand(z.shape[0], 1, -1)
        z = torch.cat([cls, z], dim=1) + self.positional_embedding.to(z.dtype)
        return self.ln_pre(z)

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        z = self.standardise(x)
        tokens, inter = self.transformer.forward_intermediates(self.embed(z), indices=self.skip_indices)
        skips = [tokens_to_map(t[:, 1:], self.grid) for t in reversed(inter)]  # deepest first
        return EncoderFeatures(self.ln_post(tokens[:, 1:]), [*skips, z], self.grid)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().project(tokens) if self.proj is None else tokens @ self.proj
