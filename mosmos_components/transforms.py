"""MONAI dictionary transforms that MONAI does not have (pre-training inputs)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import open_clip
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["ToRGBd", "TokenizeReportd", "ValidateSegmentationPaird"]


def _source(data: Mapping, key: Hashable) -> str:
    img = data.get(key)
    meta = getattr(img, "meta", None) or data.get(f"{key}_meta_dict") or {}
    return str(meta.get("filename_or_obj", data.get("id", "<unknown file>")))


class ToRGBd(MapTransform):
    """Make a channel-first 2D image 3-channel: grey is repeated, an alpha channel dropped; anything else is
    an error that names the file."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            c = img.shape[0]
            if img.ndim != 3:
                raise ValueError(f"{_source(d, key)}: expected a 2D image (C, H, W), got shape {tuple(img.shape)}")
            if c == 1:
                img = img.repeat(3, 1, 1)
            elif c in (2, 4):  # grey+alpha / RGBA
                img = img[:1].repeat(3, 1, 1) if c == 2 else img[:3]
            elif c != 3:
                raise ValueError(f"{_source(d, key)}: image has {c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
            d[key] = img
        return d


class TokenizeReportd(MapTransform):
    """Report text -> CLIP BPE token ids (``context_length``,) long tensor under ``output_key``.

    An empty report is an error naming the sample; longer reports are truncated (EOT kept), as open_clip does.
    """

    def __init__(
        self, keys: KeysCollection = "report", context_length: int = 77, output_key: str = "text",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        self.output_key = output_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            text = d[key]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"empty report for sample {d.get('id', d.get('image', '?'))}")
            d[self.output_key] = self.tokenizer([text])[0].to(torch.long)
        return d


class ValidateSegmentationPaird(MapTransform):
    """Check a loaded channel-first image/label pair before anything else touches it: the image's channel count,
    the label's grid against the image's (shape and affine) and the label's values. Errors name the file.

    Args:
        keys: ``(image_key, label_key)``; the label may be absent (inference).
        in_channels: expected image channels.
        label_values: the allowed raw label values (e.g. ``range(14)`` for BTCV); ``None`` skips the check.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), in_channels: int = 1,
                 label_values: Sequence[int] | None = None, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.label_key = list(self.keys)[:2]
        self.in_channels = in_channels
        self.label_values = None if label_values is None else {int(v) for v in label_values}

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        img = d[self.image_key]
        if img.shape[0] != self.in_channels:
            raise ValueError(f"{_source(d, self.image_key)}: {img.shape[0]} channel(s), expected {self.in_channels}")
        if self.label_key not in d:
            return d
        lab = d[self.label_key]
        if lab.shape[0] != 1:
            raise ValueError(f"{_source(d, self.label_key)}: a label map has 1 channel, this one {lab.shape[0]}")
        same_affine = True
        if hasattr(img, "affine") and hasattr(lab, "affine"):
            same_affine = torch.allclose(img.affine.double(), lab.affine.double(), atol=1e-3)
        if tuple(img.shape[1:]) != tuple(lab.shape[1:]) or not same_affine:
            raise ValueError(f"image/label grid mismatch: {_source(d, self.image_key)} {tuple(img.shape[1:])} vs "
                             f"{_source(d, self.label_key)} {tuple(lab.shape[1:])}"
                             + ("" if same_affine else " (affines differ)"))
        if self.label_values is not None:
            values = {int(v) for v in torch.unique(torch.as_tensor(lab)).tolist()}
            unknown = sorted(values - self.label_values)
            if unknown:
                raise ValueError(f"{_source(d, self.label_key)}: unknown label value(s) {unknown[:10]}; "
                                 f"allowed: {sorted(self.label_values)}")
        return d
