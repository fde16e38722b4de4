"""Running a MOSMOS bundle from Python through MONAI's bundle API (the same path as ``python -m monai.bundle
run``), for the command line, the demo and the experiment runner."""

from __future__ import annotations

from pathlib import Path

__all__ = ["bundles_dir", "run_bundle"]


def bundles_dir() -> Path:
    """The ``bundles/`` folder of this checkout."""
    path = Path(__file__).resolve().parent.parent / "bundles"
    if not path.is_dir():
        raise FileNotFoundError(f"bundles folder not found at {path}: run from a clone of the MOSMOS repository")
    return path


def run_bundle(bundle: str, configs: list[str], **overrides) -> None:
    """Run ``bundle``'s workflow from its ``configs`` (file names in its ``configs/``) with ``overrides``."""
    from monai.bundle import run

    root = bundles_dir() / bundle
    files = [str(root / "configs" / c) for c in configs]
    run(config_file=files, bundle_root=str(root), logging_file=str(root / "configs" / "logging.conf"), **overrides)
