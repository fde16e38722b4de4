"""Reader for the ROCO data set's real layout (docs/method.md §6).

``<root>/{train,validation,test}/radiology/captions.txt`` holds ``ROCO_ID<TAB> caption`` lines (the caption
starts with a space); the image is ``images/<ROCO_ID>.jpg`` or, in older downloads, the ``<PMCID>_<name>`` file
named in the third column of ``dlinks.txt``. Images that are missing or unreadable are counted, reported
and skipped; a missing root or captions file, or a captions file with no usable line, is an error.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mosmos_components.data.pairs import image_problem, pair_item
from mosmos_components.tags import DEFAULT_TAGS, TagExtractor, TagVocabulary

__all__ = ["roco_split_dir", "load_roco"]

logger = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")


def roco_split_dir(root: str | os.PathLike, split: str) -> Path:
    """``root`` may be the ROCO ``data`` folder or the folder above it."""
    if split not in SPLITS:
        raise ValueError(f"unknown ROCO split '{split}'; choose one of {SPLITS}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ROCO dataset folder not found: {root}")
    for candidate in (root / split / "radiology", root / "data" / split / "radiology"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no ROCO '{split}' split under {root} (expected {root}/{split}/radiology/)")


def _dlinks_names(folder: Path) -> dict[str, str]:
    f = folder / "dlinks.txt"
    names: dict[str, str] = {}
    if f.is_file():
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) >= 3 and parts[2]:
                names[parts[0]] = parts[2]
    return names


def load_roco(
    root: str | os.PathLike,
    split: str = "train",
    tags: Sequence[str] = DEFAULT_TAGS,
    vocab_files: Sequence[str] | None = None,
    check_images: bool = True,
    max_items: int | None = None,
) -> list[dict]:
    """Image-report pairs of one ROCO split as MONAI data dicts.

    Args:
        root: the ROCO ``data`` folder (or its parent).
        split: ``train``, ``validation`` or ``test``.
        tags: the tag list; each item's ``tags`` is a multi-hot list in this order.
        vocab_files: extra tag vocabulary files (see :class:`~mosmos_components.tags.TagVocabulary`).
        check_images: open every image header, so unreadable files are skipped here rather than failing later.
        max_items: keep the first N usable pairs (quick runs).

    Returns:
        ``[{"image": path, "report": caption, "id": ROCO_ID, "tags": [0./1. x K]}, ...]``, plus ``"mask"`` where
        the split has ``masks/<ROCO_ID>.png`` (organ masks, as the demo data writes; see
        :class:`~mosmos_components.metrics.PointingGame`).
    """
    folder = roco_split_dir(root, split)
    captions = folder / "captions.txt"
    if not captions.is_file():
        raise FileNotFoundError(f"ROCO captions file not found: {captions}")
    extractor = TagExtractor(TagVocabulary(vocab_files)) if vocab_files else None
    alt_names = _dlinks_names(folder)
    counts: Counter = Counter()
    items = []
    raw = captions.read_bytes()
    for lineno, bline in enumerate(raw.splitlines(), start=1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError:
            counts["non-UTF-8 caption"] += 1
            continue
        if not line.strip():
            continue
        roco_id, sep, caption = line.partition("\t")
        roco_id, caption = roco_id.strip(), caption.strip()
        if not sep or not roco_id:
            counts["malformed line"] += 1
            logger.debug("%s:%d: no 'ROCO_ID<TAB>caption'", captions, lineno)
            continue
        if not caption:
            counts["empty caption"] += 1
            continue
        image = folder / "images" / f"{roco_id}.jpg"
        if not image.is_file() and roco_id in alt_names:
            image = folder / "images" / alt_names[roco_id]
        problem = image_problem(image, check_images)
        if problem is not None:
            counts[f"{problem.split(':')[0]} image"] += 1
            if problem != "missing":
                logger.warning("ROCO %s: %s image %s skipped", split, problem, image)
            continue
        item = pair_item(image, caption, roco_id, tags, extractor)
        mask = folder / "masks" / f"{roco_id}.png"
        if mask.is_file():  # organ masks (the demo data has them): the pointing game of the tag attention
            item["mask"] = str(mask)
        items.append(item)
        if max_items is not None and len(items) >= max_items:
            break
    problems = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no problems"
    logger.info("ROCO %s (%s): %d usable pairs; skipped: %s", split, folder, len(items), problems)
    if counts:
        logger.warning("ROCO %s: skipped %s", split, problems)
    if not items:
        raise ValueError(f"ROCO captions file {captions} gave no usable image-report pair ({problems})")
    return items
