"""MONAI's transforms that read a scan as the model was trained, with the checks that refuse what no scan is."""

from __future__ import annotations

import logging

import torch

from mosmos_components.inference.model import SegmentationModel

logger = logging.getLogger(__name__)


def preprocessing(
    m: SegmentationModel,
    keep_raw: bool = True,
    nonfinite: str = "error",
    device: str | torch.device | None = None,
    crop_foreground: bool = True,
    geometry_limits: dict | None = None,
):
    """MONAI's transforms that read a scan as the model was trained (its sidecar's orientation, spacing and
    intensity handling; the channel count checked): ``{"image": path}`` -> ``image`` on the model's grid, and with
    ``keep_raw`` the input as read under ``raw``. Invertible: ``Invertd`` takes predictions back to the input.
    With a GPU ``device`` the resampling and intensity steps run there (``raw`` stays on the CPU).

    ``crop_foreground``: cut the image to the box around the body (:func:`~mosmos_components.transforms.crop_to_body`),
    as training and validation do, so that no window is spent on the air around it; ``Invertd`` pads the prediction
    back with background.

    Before any resampling the scan's geometry is checked (:class:`~mosmos_components.transforms.CheckNiftiHeaderd`,
    :class:`~mosmos_components.transforms.CheckGeometryd`; ``geometry_limits`` overrides
    :data:`~mosmos_components.transforms.GEOMETRY_LIMITS`, ``False`` skips the checks)."""
    from monai.transforms import Compose, CopyItemsd, EnsureChannelFirstd, EnsureTyped, Orientationd, Spacingd

    from mosmos_components.transforms import (
        RAS_LABELS,
        CheckGeometryd,
        CheckNiftiHeaderd,
        LoadImageNamed,
        ModalityIntensityd,
        ValidateSegmentationPaird,
        crop_to_body,
    )

    check = geometry_limits is not False
    limits = geometry_limits if isinstance(geometry_limits, dict) else None
    return Compose(
        [
            *([CheckNiftiHeaderd(keys="image")] if check else []),
            LoadImageNamed(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            ValidateSegmentationPaird(keys=["image", "label"], in_channels=m.in_channels, nonfinite=nonfinite),
            *([CheckGeometryd("image", m.pixdim, len(m.class_names) + 1, limits)] if check else []),
            *([CopyItemsd(keys="image", names="raw")] if keep_raw else []),  # the input grid and intensities
            *(
                [EnsureTyped(keys="image", device=device)]
                if device is not None and torch.device(device).type == "cuda"
                else []
            ),
            Orientationd(keys="image", axcodes=m.axcodes, labels=RAS_LABELS),
            Spacingd(keys="image", pixdim=m.pixdim, mode="bilinear"),
            ModalityIntensityd(keys="image", default=m.modality, ct_range=m.intensity_range),
            *([crop_to_body("image")] if crop_foreground else []),
        ]
    )
