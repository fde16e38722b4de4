"""Reader for MedPix 2.0's layout (real CT and MR images with captions), and the choice between corpora.

MedPix 2.0 (Siragusa et al., 2025; images from the NLM's MedPix) as published in its repository::

    MedPix-2-0/Descriptions.json        one entry per image: image (file stem), U_id (clinical case), Type (CT/MR),
                                        Description.Caption, Location Category, ...
    MedPix-2-0/Case_topic.json          one entry per case
    MedPix-2-0/images/<image>.png       RGB or RGBA PNGs of varied sizes
    MedPix-2-0/splitted_dataset/descriptions_{train,dev,test}.jsonl   the data set's own split, by case

The caption is the report; its tags come from the project's extractor. The data set's own split is used when
present (``validation`` is its ``dev``); otherwise a seeded split **by case** (80/10/10), so no case has images in
two splits. An entry whose image is missing or unreadable is reported (counted, and named in the log), not
silently dropped; an entry without a caption likewise.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mosmos_components.data.pairs import image_problem, pair_item
from mosmos_components.tags import DEFAULT_TAGS, TagExtractor, TagVocabulary

__all__ = ["medpix_root", "load_medpix", "detect_layout", "load_pairs", "LAYOUTS"]

logger = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
_OWN_SPLIT = {"train": "train", "validation": "dev", "test": "test"}
_FRACTIONS = (0.8, 0.1, 0.1)
LAYOUTS = ("auto", "roco", "medpix")


def medpix_root(root: str | os.PathLike) -> Path:
    """The folder holding ``Descriptions.json``: ``root`` itself or its ``MedPix-2-0`` sub-folder."""
    root = Path(root)
    for candidate in (root, root / "MedPix-2-0"):
        if (candidate / "Descriptions.json").is_file():
            return candidate
    raise FileNotFoundError(f"no MedPix 2.0 data under {root} (expected {root}/MedPix-2-0/Descriptions.json)")


def _read_json_list(path: Path) -> list[dict]:
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid UTF-8 JSON: {e}") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of entries, got {type(data).__name__}")
    return data


def _split_of_cases(cases: Sequence[str], seed: int) -> dict[str, str]:
    order = sorted(set(cases))
    random.Random(seed).shuffle(order)
    n = len(order)
    n_val = max(1, int(round(_FRACTIONS[1] * n))) if n >= 3 else 0
    n_test = max(1, int(round(_FRACTIONS[2] * n))) if n >= 3 else 0
    out = {}
    for i, case in enumerate(order):
        out[case] = "train" if i < n - n_val - n_test else ("validation" if i < n - n_test else "test")
    return out


def load_medpix(
    root: str | os.PathLike,
    split: str = "train",
    tags: Sequence[str] = DEFAULT_TAGS,
    vocab_files: Sequence[str] | None = None,
    check_images: bool = True,
    max_items: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Image-caption pairs of one split as MONAI data dicts:
    ``{"image", "report", "id" (image stem), "case" (U_id), "modality" (CT/MR), "tags" (multi-hot)}``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; choose one of {SPLITS}")
    folder = medpix_root(root)
    entries = _read_json_list(folder / "Descriptions.json")
    own = folder / "splitted_dataset" / f"descriptions_{_OWN_SPLIT[split]}.jsonl"
    if own.is_file():
        wanted = {e.get("image") for e in _read_json_list(own)}
        source = f"the data set's own '{_OWN_SPLIT[split]}' split"
    else:
        assignment = _split_of_cases([str(e.get("U_id")) for e in entries], seed)
        wanted = {e.get("image") for e in entries if assignment[str(e.get("U_id"))] == split}
        source = f"a seeded split by case (seed {seed}, 80/10/10)"
    extractor = TagExtractor(TagVocabulary(vocab_files)) if vocab_files else None
    counts: Counter = Counter()
    skipped: list[str] = []
    items = []
    for e in entries:
        stem = e.get("image")
        if stem not in wanted:
            continue
        caption = ((e.get("Description") or {}).get("Caption") or "").strip()
        if not caption:
            counts["no caption"] += 1
            skipped.append(f"{stem} (no caption)")
            continue
        image = folder / "images" / f"{stem}.png"
        problem = image_problem(image, check_images)
        if problem is not None:
            counts[f"{problem.split(':')[0]} image"] += 1
            skipped.append(f"{image.name} ({problem})")
            continue
        items.append(
            pair_item(
                image, caption, str(stem), tags, extractor, case=str(e.get("U_id")), modality=str(e.get("Type", ""))
            )
        )
        if max_items is not None and len(items) >= max_items:
            break
    logger.info("MedPix 2.0 %s (%s, %s): %d usable pairs", split, folder, source, len(items))
    if counts:
        problems = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        logger.warning(
            "MedPix 2.0 %s: skipped %s: %s%s",
            split,
            problems,
            ", ".join(skipped[:10]),
            " ..." if len(skipped) > 10 else "",
        )
    if not items:
        raise ValueError(
            f"MedPix 2.0 {split} split under {folder} gave no usable image-caption pair "
            f"({dict(counts) or 'no entries in this split'})"
        )
    return items


def detect_layout(root: str | os.PathLike) -> str:
    """``"medpix"`` when ``root`` holds MedPix 2.0's ``Descriptions.json``, ``"roco"`` when it holds ROCO's
    split folders; otherwise an error saying what was looked for."""
    root = Path(root)
    try:
        medpix_root(root)
        return "medpix"
    except FileNotFoundError:
        pass
    for base in (root, root / "data"):
        if any((base / s / "radiology").is_dir() for s in ("train", "validation", "test")):
            return "roco"
    raise FileNotFoundError(
        f"{root} holds neither ROCO's layout (<root>/train/radiology/captions.txt) nor MedPix "
        "2.0's (<root>/MedPix-2-0/Descriptions.json)"
    )


def load_pairs(root: str | os.PathLike, split: str = "train", layout: str = "auto", **kwargs) -> list[dict]:
    """Image-report pairs of ``split`` from a ROCO or MedPix 2.0 folder (``layout="auto"`` recognises it)."""
    from mosmos_components.data.roco import load_roco

    if layout not in LAYOUTS:
        raise ValueError(f"dataset_layout must be one of {LAYOUTS}, got {layout!r}")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "medpix":
        return load_medpix(root, split, **kwargs)
    kwargs.pop("seed", None)
    return load_roco(root, split, **kwargs)
