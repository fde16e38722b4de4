"""What a person reads when a run fails: the cause, on the last line.

MONAI's bundle runner and ignite wrap an error several times ("Failed to evaluate ConfigExpression ...", "applying
transform ..."), so the message that names the file and the problem ends up in the middle of a long traceback.
:func:`install_summary_hook` (run by every bundle's ``initialize`` and by the ``mosmos`` command) keeps Python's
traceback and adds one line after it: the innermost error, e.g.
``MOSMOS error: ValueError: /data/img0001.nii.gz: 12 NaN/Inf voxel(s); ...``.
"""

from __future__ import annotations

import sys

__all__ = ["root_cause", "summary_line", "install_summary_hook"]


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first (``__cause__``, else ``__context__``)."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        out.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def _raised_by_mosmos(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and "mosmos_components" in last.tb_frame.f_code.co_filename


def root_cause(exc: BaseException) -> BaseException:
    """The error to show: the outermost one raised by MOSMOS's own code (its messages name the file and the
    problem; the errors inside it are what it explains, e.g. a bare ``EOFError`` re-raised with the path, and the
    ones around it are MONAI's and ignite's wrappers), else the innermost of the chain."""
    chain = _chain(exc)
    ours = [e for e in chain if _raised_by_mosmos(e)]
    return ours[0] if ours else chain[-1]


def summary_line(exc: BaseException, limit: int = 600) -> str:
    """``MOSMOS error: Type: message`` of :func:`root_cause`, on one line."""
    cause = root_cause(exc)
    text = " ".join(str(cause).split()) or "(no message)"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"MOSMOS error: {type(cause).__name__}: {text}"


def install_summary_hook() -> None:
    """After Python prints an uncaught exception's traceback, print :func:`summary_line` as the last line."""
    previous = sys.excepthook
    if getattr(previous, "_mosmos_summary", False):
        return

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        if not issubclass(exc_type, KeyboardInterrupt):
            print(summary_line(exc), file=sys.stderr)

    hook._mosmos_summary = True
    sys.excepthook = hook


def removed_name(value, old: str, new: str, since: str = "0.8.0"):
    """Refuse ``value`` given under a setting's former name ``old`` (docs/architecture.md, "Glossary"): the name was
    renamed ``new`` and kept working, with a warning, for one release; from ``since`` it is refused rather than
    ignored, so that an old command never runs on a default in its place. ``None`` when it was not given."""
    if value is not None:
        raise ValueError(f"'{old}' was renamed '{new}' (removed in {since}): give {new} instead")
    return value
