"""How a network's outputs become a label map, one convention per data set, the same from every path.

* ``"argmax"``: softmax outputs with a background channel; label k is class k.
* ``"regions"``: sigmoid outputs of overlapping regions; label k is region k, nested regions painted largest
  first so that the smaller ones stay visible.
* ``"msd_brats"``: BraTS's TC/WT/ET sigmoid regions as the Medical Segmentation Decathlon's own labels, what
  users compare against: 1 edema (WT but not TC), 2 non-enhancing tumour (TC but not ET), 3 enhancing tumour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["LabelDecoding", "LABEL_DECODINGS", "decoding_of", "decode_labels", "keep_largest_components"]


@dataclass(frozen=True)
class LabelDecoding:
    """``decode(logits (K, *size)) -> int16 labels (*size)``; ``names`` of the label values 1..N when they are not
    the model's classes (``None``: the classes, background excluded for softmax outputs)."""

    decode: Callable[[torch.Tensor], torch.Tensor]
    names: tuple[str, ...] | None = None


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.argmax(logits, dim=0).to(torch.int16)


def _regions(logits: torch.Tensor) -> torch.Tensor:
    present = torch.sigmoid(logits) > 0.5
    label = torch.zeros(logits.shape[1:], dtype=torch.int16, device=logits.device)
    for k in sorted(range(present.shape[0]), key=lambda c: -int(present[c].sum())):
        label[present[k]] = k + 1
    return label


def _msd_brats(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[0] != 3:
        raise ValueError(f"the msd_brats labels need 3 region channels (TC, WT, ET), the model has {logits.shape[0]}")
    tc, wt, et = torch.sigmoid(logits) > 0.5
    label = torch.zeros(logits.shape[1:], dtype=torch.int16, device=logits.device)
    label[wt] = 1
    label[tc] = 2
    label[et] = 3
    return label


LABEL_DECODINGS: dict[str, LabelDecoding] = {
    "argmax": LabelDecoding(_argmax),
    "regions": LabelDecoding(_regions),
    "msd_brats": LabelDecoding(_msd_brats, ("edema", "non-enhancing tumor", "enhancing tumor")),
}


def decoding_of(output_labels: str | None, sigmoid: bool) -> str:
    """The decoding's name: ``output_labels`` when given, else ``argmax`` (softmax) or ``regions`` (sigmoid)."""
    name = output_labels or ("regions" if sigmoid else "argmax")
    if name not in LABEL_DECODINGS:
        raise ValueError(f"output_labels must be one of {sorted(LABEL_DECODINGS)}, got {name!r}")
    if (name == "argmax") == bool(sigmoid):
        raise ValueError(f"output_labels {name!r} does not fit {'sigmoid' if sigmoid else 'softmax'} outputs")
    return name


def decode_labels(logits: torch.Tensor, name: str) -> torch.Tensor:
    """The label map (int16, on ``logits``' grid) of ``logits`` (K, *size) by the decoding ``name``."""
    return LABEL_DECODINGS[name].decode(logits)


def keep_largest_components(label: torch.Tensor, values) -> torch.Tensor:
    """``label`` (an integer label map, ``(*size)``) with only the largest connected component of each label value
    in ``values`` kept, the rest of that value set to background (0)
    (:func:`~mosmos_components.transforms.largest_component`); ``label`` itself is left as it is. Fragments far
    from an organ go; so does a second piece of a structure that really has two."""
    from mosmos_components.transforms import largest_component

    if not len(values):
        return label
    kept = largest_component(values, is_onehot=False)(label[None].clone())  # MONAI's transform works in place
    return torch.as_tensor(kept)[0].to(label.dtype)
