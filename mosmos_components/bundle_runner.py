"""Running a MOSMOS bundle from Python through MONAI's bundle API (the same path as ``python -m monai.bundle
run``), for the command line, the demo and the experiment runner."""

from __future__ import annotations

from pathlib import Path

__all__ = ["bundles_dir", "run_bundle", "parsed_entries"]


def bundles_dir() -> Path:
    """The bundles: ``bundles/`` of a checkout (editable install), else the copy an installed wheel carries."""
    here = Path(__file__).resolve().parent
    for path in (here.parent / "bundles", here / "_bundles"):
        if (path / "btcv_seg" / "configs").is_dir():
            return path
    raise FileNotFoundError(
        f"MOSMOS bundles not found next to {here} (neither a checkout's bundles/ nor an installed "
        "wheel's _bundles/): reinstall MOSMOS (pip install .) or run from a clone"
    )


def run_bundle(bundle: str, configs: list[str], **overrides) -> None:
    """Run ``bundle``'s workflow from its ``configs`` (file names in its ``configs/``) with ``overrides``."""
    from monai.bundle import run

    root = bundles_dir() / bundle
    files = [str(root / "configs" / c) for c in configs]
    run(config_file=files, bundle_root=str(root), logging_file=str(root / "configs" / "logging.conf"), **overrides)


def parsed_entries(bundle: str, configs: list[str], keys: list[str], **overrides) -> dict:
    """The values ``bundle``'s ``configs`` with ``overrides`` give the config ids ``keys`` (parsed as a run would
    parse them, without running anything), e.g. the datalist a cell trains on."""
    from monai.bundle import ConfigParser

    root = bundles_dir() / bundle
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(root), **overrides})
    parser.get_parsed_content("imports")
    return {k: parser.get_parsed_content(k) for k in keys}
