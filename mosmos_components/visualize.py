"""Pictures of results: training curves, tag attention maps, segmentation overlays (matplotlib, Agg)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "read_history",
    "distinct_colours",
    "curve_figure",
    "plot_curves",
    "plot_tag_attention",
    "radiological",
    "radiological_view",
    "plot_segmentation_overlay",
    "label_row",
]


def read_history(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a :class:`~mosmos_components.handlers.MetricsHistory` CSV (a blank cell, a metric a row did not
    report, reads as NaN)."""
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k] or "nan") for r in rows] for k in (rows[0].keys() if rows else [])}


def distinct_colours(n: int) -> list:
    """``n`` colours no two alike: tab10 / tab20 up to 20, evenly spaced on a perceptual map beyond."""
    if n <= 20:
        cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
        return [cmap(i) for i in range(n)]
    return list(plt.get_cmap("turbo")(np.linspace(0.05, 0.95, n)))


def curve_figure(histories: dict[str, str | os.PathLike], title: str = ""):
    """The figure of :func:`plot_curves`: per metric file, small multiples (losses and summary metrics; HD95;
    Dice per class; a pre-training's retrieval, tag mAP and class-query cosines apart from its losses), every
    line its own colour, legends outside the axes."""
    panels = []
    for label, path in histories.items():
        h = read_history(path)
        cols = [k for k in h if k not in ("epoch", "epoch_s")]  # wall times are not curves of learning
        per_class = [k for k in cols if k.startswith("dice_")]
        hd = [k for k in cols if "hd95" in k]
        retrieval = [k for k in cols if k.startswith(("recall_at", "tag_map", "pointing"))]
        queries = [k for k in cols if k.startswith("query_cosine")]
        rest = [k for k in cols if k not in per_class + hd + retrieval + queries]
        panels += [
            (name, h, keys)
            for name, keys in (
                (label, rest),
                (f"{label}: HD95 (mm)", hd),
                (f"{label}: Dice per class", per_class),
                (f"{label}: retrieval and tags", retrieval),
                (f"{label}: class-query cosines", queries),
            )
            if keys
        ]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.4 * max(len(panels), 1), 3.6), squeeze=False)
    for ax, (name, h, keys) in zip(axes[0], panels):
        for colour, k in zip(distinct_colours(len(keys)), keys):
            ax.plot(h["epoch"], h[k], marker=".", color=colour, label=k.removeprefix("dice_").replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, ncol=2 if len(keys) > 12 else 1
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(histories: dict[str, str | os.PathLike], out_png: str | os.PathLike, title: str = "") -> str:
    """Training curves of metric files (``{label: csv}``) as a PNG (see :func:`curve_figure`)."""
    fig = curve_figure(histories, title)
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return str(out_png)


def plot_tag_attention(
    image: np.ndarray, attention: np.ndarray, names: Sequence[str], out_png: str | os.PathLike, caption: str = ""
) -> str:
    """``image`` (H, W) and ``attention`` (K, h, w): the image, then each map upsampled over it."""
    k = len(names)
    fig, axes = plt.subplots(1, k + 1, figsize=(2.6 * (k + 1), 2.9), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image", fontsize=8)
    h, w = image.shape
    for ax, name, a in zip(axes[1:], names, attention):
        up = np.kron(a, np.ones((int(np.ceil(h / a.shape[0])), int(np.ceil(w / a.shape[1])))))[:h, :w]
        ax.imshow(image, cmap="gray")
        ax.imshow(up, cmap="jet", alpha=0.45)
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.axis("off")
    if caption:
        fig.suptitle(caption if len(caption) < 110 else caption[:107] + "...", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return str(out_png)


def radiological(axial: np.ndarray) -> np.ndarray:
    """An axial RAS slice (x, y) as a radiologist looks at it: anterior up, the patient's right on the left."""
    return np.asarray(axial)[::-1, ::-1].T


def radiological_view(plane: np.ndarray, view: str) -> np.ndarray:
    """A plane of a RAS volume as displayed: ``"axial"`` (x, y) as :func:`radiological`; ``"coronal"`` (x, z) and
    ``"sagittal"`` (y, z) with superior up and the patient's right (coronal) or anterior (sagittal) on the left."""
    if view == "axial":
        return radiological(plane)
    return np.asarray(plane)[::-1, :].T[::-1]


def draw_labels(ax, labels: np.ndarray, cmap, n_colours: int, alpha: float, first: int = 0, aspect=None) -> None:
    """A label map over the image already on ``ax``: background (0) transparent, label ``v`` in colour ``v - first``
    of ``cmap`` (``n_colours`` of them), drawn pixel for pixel."""
    ax.imshow(
        np.ma.masked_where(labels == 0, labels - first),
        cmap=cmap,
        vmin=0,
        vmax=n_colours - 1,
        alpha=alpha,
        interpolation="nearest",
        aspect=aspect,
    )


def label_row(
    image: np.ndarray, panels: Sequence[tuple[str, np.ndarray]], classes: Sequence[str], out_png, title: str = ""
) -> str:
    """One 2D slice (RAS array order, shown rotated to the usual view) under several label maps side by side —
    ``panels``: (title, labels 0..K) each, e.g. the ground truth and each method's prediction; ``classes``: the
    names of labels 1..K, in a shared legend."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")(np.arange(len(classes)))
    cmap = ListedColormap(colours)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0), squeeze=False)
    shown = np.rot90(image)
    for ax, (name, labels) in zip(axes[0], panels):
        ax.imshow(shown, cmap="gray")
        draw_labels(ax, np.rot90(labels), cmap, len(classes), alpha=0.5, first=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.legend(
        handles=[Patch(color=colours[k], label=c) for k, c in enumerate(classes)],
        loc="lower center",
        ncol=min(len(classes), 7),
        fontsize=7,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return str(out_png)


def plot_segmentation_overlay(
    image: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    attention: np.ndarray | None,
    attention_name: str,
    out_png: str | os.PathLike,
    title: str = "",
    num_classes: int = 14,
    class_names: Sequence[str] | None = None,
) -> str:
    """Image, ground truth, prediction (and one pixel-tag attention map), each a 2D slice already oriented; with
    ``class_names`` (background first) a legend of the classes shown."""
    panels = [("image", None), ("ground truth", label), ("prediction", pred)]
    if attention is not None:
        panels.append((f"attention: {attention_name}", attention))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    cmap = plt.get_cmap("tab20", num_classes)
    for ax, (name, overlay) in zip(axes, panels):
        ax.imshow(image, cmap="gray")
        if overlay is not None and name.startswith("attention"):
            ax.imshow(overlay, cmap="jet", alpha=0.5)
        elif overlay is not None:
            draw_labels(ax, overlay, cmap, num_classes, alpha=0.6)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if class_names is not None:
        from matplotlib.patches import Patch

        shown = sorted(({int(v) for v in np.unique(label)} | {int(v) for v in np.unique(pred)}) - {0})
        fig.legend(
            handles=[Patch(color=cmap(v), label=class_names[v]) for v in shown if v < len(class_names)],
            loc="lower center",
            ncol=min(len(shown), 6) or 1,
            fontsize=7,
            frameon=False,
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1 if class_names is not None else 0, 1, 1))
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return str(out_png)
