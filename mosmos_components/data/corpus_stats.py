"""Tag statistics of an image-report corpus (the paper's Fig. 2, for any corpus): how often each organ tag is
found in the reports, how many tags a report has, and the share of reports with none."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

from mosmos_components.checkpoint import atomic_json_save
from mosmos_components.data.medpix import SPLITS, detect_layout, load_pairs
from mosmos_components.tags import DEFAULT_TAGS

__all__ = ["tag_statistics"]


def tag_statistics(
    root: str | os.PathLike, out_dir: str | os.PathLike, layout: str = "auto", vocab_files: list[str] | None = None
) -> dict:
    """Count the tags of every report of every split of the corpus at ``root`` (ROCO or MedPix 2.0) and write
    ``tag_frequencies.csv`` (tag, reports, share), ``tags_per_report.csv`` (n_tags, reports), ``tag_stats.json``
    and ``tag_frequencies.png`` (bar chart) to ``out_dir``. Returns the summary."""
    layout = detect_layout(root) if layout == "auto" else layout
    items = []
    for split in SPLITS:
        try:
            items += load_pairs(root, split, layout=layout, vocab_files=vocab_files, check_images=False)
        except (FileNotFoundError, ValueError):  # a corpus may lack a split
            continue
    if not items:
        raise ValueError(f"{root}: no report found in any split")
    tags = list(DEFAULT_TAGS)
    per_tag = Counter()
    per_report = Counter()
    for it in items:
        present = [t for t, v in zip(tags, it["tags"]) if v]
        per_tag.update(present)
        per_report[len(present)] += 1
    n = len(items)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "tag_frequencies.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["tag", "reports", "share"])
        for t in tags:
            w.writerow([t, per_tag[t], f"{per_tag[t] / n:.4f}"])
    with open(out / "tags_per_report.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["n_tags", "reports"])
        for k in range(max(per_report) + 1):
            w.writerow([k, per_report[k]])
    summary = {
        "corpus": str(root),
        "layout": layout,
        "reports": n,
        "reports_without_tag": per_report[0],
        "share_without_tag": per_report[0] / n,
        "mean_tags_per_report": sum(k * v for k, v in per_report.items()) / n,
        "tag_reports": {t: per_tag[t] for t in tags},
    }
    atomic_json_save(summary, out / "tag_stats.json")
    _plot(tags, per_tag, n, summary, out / "tag_frequencies.png")
    return summary


def _plot(tags, per_tag, n, summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(tags, key=lambda t: -per_tag[t])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(range(len(order)), [per_tag[t] for t in order], color="#4477aa")
    ax.set_xticks(range(len(order)), order, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("reports with the tag")
    ax.set_title(
        f"{Path(summary['corpus']).name}: {n} reports, {summary['share_without_tag']:.0%} without a tag, "
        f"{summary['mean_tags_per_report']:.2f} tags per report",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
