"""What the image-report readers (ROCO, MedPix 2.0) share: checking an image file and building a pair's item."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from mosmos_components.tags import TagExtractor, extract_tags, tags_to_multi_hot

__all__ = ["image_problem", "pair_item"]


def image_problem(path: Path, check: bool = True) -> str | None:
    """``None`` for a usable image; else ``"missing"`` or ``"unreadable: <error type>"`` (``check`` opens it)."""
    if not path.is_file():
        return "missing"
    if check:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001 - any decoder error means unusable
            return f"unreadable: {type(e).__name__}"
    return None


def pair_item(
    image: Path, report: str, item_id: str, tags: Sequence[str], extractor: TagExtractor | None, **extra
) -> dict:
    """A pre-training data dict: ``image``, ``report``, ``id``, the multi-hot ``tags`` of the report's tags that
    are in ``tags``, and ``extra`` keys."""
    found = extract_tags(report, extractor)
    return {
        "image": str(image),
        "report": report,
        "id": item_id,
        "tags": tags_to_multi_hot([t for t in found if t in tags], tags).tolist(),
        **extra,
    }
