"""MONAI dictionary transforms that MONAI does not have (pre-training inputs)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import open_clip
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["ToRGBd", "TokenizeReportd"]


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
