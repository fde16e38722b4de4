"""The self-supervised baseline of docs/method.md §5: Swin UNETR's three proxy tasks (masked-patch inpainting,
rotation prediction, contrastive coding of two views; Tang et al., CVPR 2022) trained on the pre-training images
alone, with the same open_clip image tower as MOSMOS, so the same transfer carries its weights into the
segmentation networks (without PTA: the text side is never trained).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mosmos_components.networks.mosmos_clip import MosmosPretrainNet

__all__ = ["SSLPretrainNet", "mask_patches"]

logger = logging.getLogger(__name__)


def mask_patches(
    image: torch.Tensor, patch: int, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero a random ``ratio`` of the ``patch`` x ``patch`` squares of each image (B, C, H, W)."""
    b, _, h, w = image.shape
    keep = torch.rand(b, 1, h // patch, w // patch, generator=generator, device=image.device) >= ratio
    keep = keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return image * keep.to(image.dtype)


class SSLPretrainNet(nn.Module):
    """A :class:`MosmosPretrainNet` (``pretrain``; only its image tower is trained) with the three proxy-task heads.

    Args:
        pretrain: the network whose image tower is pre-trained (and saved, in its own checkpoint format).
        mask_ratio: fraction of patches zeroed for inpainting (Swin UNETR masks ~30 % of the volume).
        projection_dim: width of the contrastive head.

    ``forward(image (B, 3, H, W), text=None)`` makes two views (independent masks and 90-degree rotations),
    and returns a dict with ``rotation_logits`` (B, 2, 4), ``rotation`` (B, 2), ``reconstruction`` and ``target``
    (B, 2, 3, H, W), ``embedding`` (B, 2, projection_dim), the second axis being the view. ``text`` is accepted
    and ignored (the pre-training bundle passes the reports). In ``eval()`` the masks and rotations are drawn
    from a fixed seed, so validation losses are comparable between epochs.
    """

    def __init__(self, pretrain: MosmosPretrainNet, mask_ratio: float = 0.3, projection_dim: int = 128) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.pretrain, self.mask_ratio = pretrain, mask_ratio
        # only the image tower learns: the text tower, prompt, tag decoder and classifier stay as they are (also
        # keeps DistributedDataParallel from waiting for gradients that never come)
        for name, p in pretrain.named_parameters():
            p.requires_grad_(name.startswith("clip.visual."))
        d = pretrain.embed_dim
        self.rotation_head = nn.Linear(d, 4)
        self.projection_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, projection_dim))
        with torch.no_grad():
            _, _, grid = pretrain.encode_image(torch.zeros(1, 3, pretrain.image_size, pretrain.image_size))
        self.stride = pretrain.image_size // grid[0]
        self.reconstruction_head = nn.Linear(d, 3 * self.stride * self.stride)

    def config(self) -> dict:
        return self.pretrain.config()

    def parameter_groups(
        self, learning_rate: float, image_tower_lr: float | None = None, text_tower_lr: float | None = None
    ) -> list[dict]:
        """Optimiser parameter groups, as :meth:`MosmosPretrainNet.parameter_groups` gives MOSMOS's: the image tower
        at ``image_tower_lr`` (``None``: ``learning_rate``), its projection and the proxy-task heads at
        ``learning_rate``. The text tower never learns here, so a ``text_tower_lr`` other than ``None``/``0`` is
        ignored with a warning, and ``image_tower_lr`` 0 (nothing left to pre-train) is an error."""
        if image_tower_lr is not None and float(image_tower_lr) == 0.0:
            raise ValueError("image_tower_lr is 0: the SSL proxy tasks train only the image tower, nothing would learn")
        if text_tower_lr is not None and float(text_tower_lr) != 0.0:
            logger.warning("text_tower_lr %s ignored: the SSL proxy tasks never train the text tower", text_tower_lr)
        tower = self.pretrain.tower_parameters("image")
        taken = {id(p) for p in tower}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        lr = float(learning_rate if image_tower_lr is None else image_tower_lr)
        return [
            {"params": tower, "lr": lr, "name": "image"},
            {"params": rest, "lr": float(learning_rate), "name": "heads"},
        ]

    def _view(self, image: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        k = torch.randint(0, 4, (image.shape[0],), generator=generator, device=image.device)
        target = torch.stack([torch.rot90(im, int(r), dims=(1, 2)) for im, r in zip(image, k)])
        return mask_patches(target, self.stride, self.mask_ratio, generator), target, k

    def forward(self, image: torch.Tensor, text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if image.shape[2] != image.shape[3]:
            raise ValueError(f"SSL views are rotated by 90 degrees: images must be square, got {tuple(image.shape)}")
        gen = None
        if not self.training:
            gen = torch.Generator(device=image.device).manual_seed(0)
        v1, t1, k1 = self._view(image, gen)
        v2, t2, k2 = self._view(image, gen)
        g, s, grid = self.pretrain.encode_image(torch.cat([v1, v2]))
        n = s.shape[0]
        rec = self.reconstruction_head(s).reshape(n, grid[0], grid[1], 3, self.stride, self.stride)
        rec = rec.permute(0, 3, 1, 4, 2, 5).reshape(n, 3, grid[0] * self.stride, grid[1] * self.stride)

        def pair(t: torch.Tensor) -> torch.Tensor:  # (2B, ...) -> (B, 2, ...): one item per image, two views
            return t.reshape(2, n // 2, *t.shape[1:]).transpose(0, 1)

        return {
            "rotation_logits": pair(self.rotation_head(g)),
            "rotation": pair(torch.cat([k1, k2])),
            "reconstruction": pair(rec),
            "target": pair(torch.cat([t1, t2])),
            "embedding": pair(self.projection_head(g)),
        }
