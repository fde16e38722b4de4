"""Engine pieces MONAI does not have."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import PrepareBatch, default_prepare_batch

__all__ = ["PrepareBatchWithClassMask"]


class PrepareBatchWithClassMask(PrepareBatch):
    """Batch -> ``(image, (label, class_mask))``: the target carries each case's mask of annotated classes (see
    :class:`~mosmos_components.transforms.ClassMaskd`) to :class:`~mosmos_components.losses.MosmosSegLoss`."""

    def __init__(self, mask_key: str = "class_mask") -> None:
        self.mask_key = mask_key

    def __call__(
        self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if self.mask_key not in batchdata:
            raise KeyError(
                f"batch has no '{self.mask_key}': add mosmos_components.transforms.ClassMaskd to the preprocessing"
            )
        mask = torch.as_tensor(batchdata[self.mask_key]).to(device=device, non_blocking=non_blocking)
        return image, (label, mask), (), {}
