"""Segmentation metrics as the paper reports them (docs/method.md §7): per-case, per-class Dice and HD95 in mm,
CSV reports with a summary table, and the Wilcoxon signed-rank test between two methods (paired per class,
as the paper's Tables 2-3; per case as an option).

Empty masks: a class absent from a case's ground truth is *excluded* for that case (NaN, left out of means);
a class present in the ground truth but not predicted scores Dice 0 and HD95 = the volume's diagonal in mm.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import compute_hausdorff_distance

from mosmos_components.distributed import gather_lists, is_rank0

__all__ = [
    "case_scores",
    "summarize",
    "write_reports",
    "format_table",
    "wilcoxon_test",
    "wilcoxon_paired",
    "group_summaries",
    "SegmentationReport",
]


def case_scores(
    pred: torch.Tensor,
    label: torch.Tensor,
    spacing: Sequence[float],
    channels: Sequence[int],
    names: Sequence[str],
    hd95: bool = True,
) -> list[dict]:
    """Scores of one case. ``pred``/``label``: binary (C, *spatial) maps (one-hot classes or overlapping
    regions); ``channels``: which channels to score, ``names``: their names; ``spacing`` in mm."""
    pred, label = pred.bool(), label.bool()
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ")
    spacing = [float(s) for s in spacing]
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape[1:], spacing)))
    rows = []
    for c, name in zip(channels, names):
        p, g = pred[c], label[c]
        gs, ps = int(g.sum()), int(p.sum())
        if gs == 0:
            dice = hd = float("nan")
        elif ps == 0:
            dice, hd = 0.0, diagonal
        else:
            dice = 2.0 * int((p & g).sum()) / (gs + ps)
            hd = float("nan")
            if hd95:
                hd = float(
                    compute_hausdorff_distance(
                        p[None, None].float(), g[None, None].float(), percentile=95, spacing=spacing
                    )[0, 0]
                )
        rows.append({"class": name, "dice": dice, "hd95": hd if hd95 else float("nan")})
    return rows


def summarize(rows: Sequence[dict], names: Sequence[str]) -> list[dict]:
    """Per class: mean Dice, ``dice_std`` (the standard deviation over the cases scored, ddof 0: a description of this
    test set, not an estimate), mean HD95 and the number of cases scored; plus a 'mean' row (mean over classes)."""
    out = []
    for name in names:
        d = np.array([r["dice"] for r in rows if r["class"] == name], dtype=float)
        h = np.array([r["hd95"] for r in rows if r["class"] == name], dtype=float)
        ok = ~np.isnan(d)
        out.append(
            {
                "class": name,
                "dice": float(np.mean(d[ok])) if ok.any() else float("nan"),
                "dice_std": float(np.std(d[ok])) if ok.any() else float("nan"),
                "hd95": float(np.nanmean(h)) if (~np.isnan(h)).any() else float("nan"),
                "n": int(ok.sum()),
            }
        )
    means = [r for r in out if not math.isnan(r["dice"])]
    out.append(
        {
            "class": "mean",
            "dice": float(np.mean([r["dice"] for r in means])) if means else float("nan"),
            "dice_std": float("nan"),
            "hd95": float(np.nanmean([r["hd95"] for r in means]))
            if means and not all(math.isnan(r["hd95"]) for r in means)
            else float("nan"),
            "n": len(means),
        }
    )
    return out


def format_table(summary: Sequence[dict]) -> str:
    lines = [f"{'class':<30} {'Dice %':>8} {'HD95 mm':>9} {'cases':>6}", "-" * 56]
    for r in summary:
        d = "-" if math.isnan(r["dice"]) else f"{100 * r['dice']:.2f}"
        h = "-" if math.isnan(r["hd95"]) else f"{r['hd95']:.2f}"
        lines.append(f"{r['class']:<30} {d:>8} {h:>9} {r['n']:>6}")
    return "\n".join(lines)


def write_reports(rows: Sequence[dict], names: Sequence[str], out_dir: str | os.PathLike) -> list[dict]:
    """``per_case.csv`` (case, class, dice, hd95[, group]) and ``summary.csv``; where the rows carry a ``group``
    (AMOS: the modality), also ``summary_<group>.csv`` per group (the paper's Fig. 4 reports CT and MRI apart).
    Returns the pooled summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_group = group_summaries(rows, names)
    fields = ["case", "class", "dice", "hd95"] + (["group"] if by_group else [])
    with open(out / "per_case.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows, names)
    _write_summary(summary, out / "summary.csv")
    for g, s in by_group.items():
        _write_summary(s, out / f"summary_{g}.csv")
    return summary


def group_summaries(rows: Sequence[dict], names: Sequence[str]) -> dict[str, list[dict]]:
    """The summary of each ``group`` of rows (empty without groups)."""
    groups = sorted({r["group"] for r in rows if r.get("group") is not None})
    return {g: summarize([r for r in rows if r.get("group") == g], names) for g in groups}


def _write_summary(summary: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["class", "dice", "dice_std", "hd95", "n"])
        w.writeheader()
        w.writerows(summary)


WILCOXON_UNITS = ("class", "case")


def _read_per_case(per_case_csv: str | os.PathLike, metric: str) -> list[tuple[str, str, float]]:
    """(case, class, value) rows of a ``per_case.csv`` whose ``metric`` is not NaN."""
    rows = []
    with open(per_case_csv, encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"case", "class", metric} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{per_case_csv}: not a per_case.csv (columns {sorted(missing)} missing)")
        for r in reader:
            v = float(r[metric])
            if not math.isnan(v):
                rows.append((r["case"], r["class"], v))
    return rows


def _means_by(rows: Sequence[tuple[str, str, float]], unit: str) -> dict[str, float]:
    """Mean value per case (``unit="case"``: over its scored classes) or per class (over its scored cases)."""
    key = 0 if unit == "case" else 1
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r[2])
    return {k: float(np.mean(v)) for k, v in groups.items()}


def wilcoxon_paired(x: Sequence[float], y: Sequence[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired values (scipy's, exact for small n without ties).

    >>> round(wilcoxon_paired([1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6])["p"], 4)
    0.0156
    """
    from scipy.stats import wilcoxon

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two equally long vectors of at least 2 paired values, got {x.shape} and {y.shape}")
    out = {"n": len(x), "mean_a": float(x.mean()), "mean_b": float(y.mean())}
    if np.allclose(x, y):
        return {**out, "statistic": 0.0, "p": 1.0}
    res = wilcoxon(x, y)
    return {**out, "statistic": float(res.statistic), "p": float(res.pvalue)}


def holm_adjusted(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (family-wise error rate), in the order given: the
    ``i``-th smallest p times ``m - i + 1``, kept non-decreasing in that order, at most 1.

    >>> holm_adjusted([0.01, 0.04, 0.03, 0.005])
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty_like(p)
    out[order] = stepped
    return [round(float(v), 12) for v in out]


def wilcoxon_test(
    per_case_a: str | os.PathLike, per_case_b: str | os.PathLike, metric: str = "dice", unit: str = "class"
) -> dict:
    """Wilcoxon signed-rank test between two methods' ``per_case.csv``.

    ``unit="class"`` (the paper's, Tables 2-3): the pairs are the classes, each the test-set mean ``metric`` of
    that class over its scored cases. ``unit="case"`` (an extra, not the paper's): the pairs are the cases, each
    the mean over its scored classes. Pairs are matched by name; the result lists them under ``"pairs"``.
    """
    if unit not in WILCOXON_UNITS:
        raise ValueError(f"unit must be one of {WILCOXON_UNITS}, got {unit!r}")
    a = _means_by(_read_per_case(per_case_a, metric), unit)
    b = _means_by(_read_per_case(per_case_b, metric), unit)
    keys = sorted(set(a) & set(b))
    if len(keys) < 2:
        units = unit + ("es" if unit == "class" else "s")
        raise ValueError(
            f"need at least 2 {units} scored by both methods, found {len(keys)} ({per_case_a} vs {per_case_b})"
        )
    res = wilcoxon_paired([a[k] for k in keys], [b[k] for k in keys])
    return {**res, "unit": unit, "metric": metric, "pairs": keys}


class SegmentationReport:
    """Evaluator handler: score every case (decollated ``pred``/``label`` binary maps), put the mean and
    per-class Dice into ``engine.state.metrics`` (``dice_<class>``; for MLflow), and, with ``output_dir``, write
    ``per_case.csv`` and ``summary.csv`` and log the table.

    Args:
        class_names: names of the scored channels.
        channels: the channels to score (default: 1..K, background excluded).
        output_dir: where to write the CSVs (``None``: metrics only).
        hd95: compute HD95 (slower; off during training validation).
        group_key: an item key whose value groups the cases (AMOS's ``"modality"``): each group is also reported
            on its own (``summary_<group>.csv``, ``case_mean_dice_<group>``) next to the pooled table.
        slices: for the first ``slices`` cases, keep the slice with the most labelled voxels (last spatial axis)
            as ``<output_dir>/slices/<case>.npz`` (``image``, ``label``, ``pred``: label maps 0..K in the order of
            ``class_names``), for qualitative panels such as the experiment runner's (the paper's Fig. 7).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        channels: Sequence[int] | None = None,
        output_dir: str | None = None,
        hd95: bool = True,
        group_key: str | None = "modality",
        slices: int = 0,
    ) -> None:
        self.names = list(class_names)
        self.channels = list(channels) if channels is not None else list(range(1, len(self.names) + 1))
        self.output_dir, self.hd95, self.group_key, self.slices = output_dir, hd95, group_key, int(slices)
        self._cases_seen = 0
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish)

    def _reset(self, engine: Engine) -> None:
        self.rows = []
        self._cases_seen = 0

    def _collect(self, engine: Engine) -> None:
        # MONAI decollates the batch and the output separately: the group key (AMOS's modality) is in the batch
        batch = engine.state.batch if isinstance(engine.state.batch, (list, tuple)) else []
        sources = list(batch) + [None] * (len(engine.state.output) - len(batch))
        for item, src in zip(engine.state.output, sources):
            label = item["label"]
            meta = getattr(label, "meta", {}) or {}
            case = os.path.basename(str(meta.get("filename_or_obj", f"case{len(self.rows)}")))
            spacing = getattr(label, "pixdim", None)
            spacing = [float(s) for s in spacing] if spacing is not None else [1.0] * (label.dim() - 1)
            group = None
            if self.group_key:
                group = item.get(self.group_key)
                if group is None and isinstance(src, dict):
                    group = src.get(self.group_key)
            extra = {"group": str(group)} if isinstance(group, str) else {}
            for r in case_scores(item["pred"], label, spacing, self.channels, self.names, self.hd95):
                self.rows.append({"case": case, **r, **extra})
            if self._cases_seen < self.slices and self.output_dir is not None and "image" in item:
                self._save_slice(item, case)
            self._cases_seen += 1

    def _label_map(self, onehot: torch.Tensor) -> np.ndarray:
        """Binary channel maps -> one map of 1..K (the scored channels in order; a later channel wins overlaps)."""
        maps = np.asarray(torch.as_tensor(onehot).detach().cpu())
        out = np.zeros(maps.shape[1:], dtype=np.uint8)
        for k, ch in enumerate(self.channels):
            out[maps[ch] > 0.5] = k + 1
        return out

    def _save_slice(self, item: dict, case: str) -> None:
        from mosmos_components.checkpoint import _atomic_write

        label, pred = self._label_map(item["label"]), self._label_map(item["pred"])
        image = np.asarray(torch.as_tensor(item["image"]).detach().cpu().float())[0]
        if label.ndim == 3:  # volumes: the axial slice (last axis) with the most labelled voxels
            z = int(np.argmax((label > 0).reshape(-1, label.shape[-1]).sum(0)))
            image, label, pred = image[..., z], label[..., z], pred[..., z]
        stem = case.split(".")[0]
        path = Path(self.output_dir) / "slices" / f"{stem}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            path, lambda fh: np.savez_compressed(fh, image=image, label=label, pred=pred, names=np.array(self.names))
        )

    def _finish(self, engine: Engine) -> None:
        self.rows = gather_lists(self.rows)  # under torch.distributed every rank scored its shard of the cases
        summary = summarize(self.rows, self.names)
        for r in summary[:-1]:
            engine.state.metrics[f"dice_{r['class'].replace(' ', '_')}"] = r["dice"]
        engine.state.metrics["case_mean_dice"] = summary[-1]["dice"]
        if self.hd95:
            engine.state.metrics["mean_hd95"] = summary[-1]["hd95"]
        by_group = group_summaries(self.rows, self.names)
        for g, s in by_group.items():
            engine.state.metrics[f"case_mean_dice_{g}"] = s[-1]["dice"]
        if self.output_dir is not None and is_rank0():
            write_reports(self.rows, self.names, self.output_dir)
            engine.logger.info("segmentation report (%s):\n%s", self.output_dir, format_table(summary))
            for g, s in by_group.items():
                engine.logger.info("segmentation report, %s cases only:\n%s", g, format_table(s))
