"""Where a 2D segmentation model's test Dice is lost: the same model scored on the whole slice (as the bundles'
evaluate.json does), on a 160 x 160 field around the image centre (how a field-limited evaluation sees it), and
with only the largest connected component of each class kept (fragments away from the organ removed).

    python scripts/eval_field_of_view.py CELL_DIR DATALIST [--modality mri] [--norm_stats batch] [--json out.json]

CELL_DIR: a trained run (``models/model.pt`` + sidecar, e.g. an experiment cell's folder); DATALIST: the split it
was trained on (its ``test`` items are scored; relative paths resolve from the working directory). Images go
through the bundles' orientation (RAS) and intensity handling; slices through MONAI's SliceInferer.
``--norm_stats batch`` normalises each batch-norm layer with the statistics of the batch of slices being
segmented instead of the running statistics of training: when that scores much higher, the training images'
statistics do not describe the test patients' (few training patients, other scanners). ``--windows``: every slice
cut into 96 x 96 windows (stride 48, at least half of each inside the body) segmented one by one; the share of
pixels predicted as each class in windows whose label holds no structure, against windows that hold one — a
network whose attention is normalised over the window (pixel-tag attention) must put it somewhere even where
there is nothing to find. ``--panel PNG``: a picture of where that happens — the slice holding a structure on
which this model predicts the most pixels farther than ``--far_mm`` (20) from any labelled one, with its ground truth
and the predictions of this model and of each ``--compare CELL_DIR`` on the same slice.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from monai.inferers import SliceInferer
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd
from scipy import ndimage

from mosmos_components.checkpoint import load_segmentation_network, read_sidecar
from mosmos_components.inference.labels import keep_largest_components
from mosmos_components.transforms import ModalityIntensityd


def dice(p: np.ndarray, g: np.ndarray, c: int) -> float:
    a, b = p == c, g == c
    return float("nan") if b.sum() == 0 else 2.0 * (a & b).sum() / (a.sum() + b.sum())


def window_shares(net, image: torch.Tensor, label: np.ndarray, n_classes: int, size: int = 96) -> dict:
    """Pixels predicted as each class (share per class, background first) in the ``size``-square windows of each
    slice (stride ``size // 2``) whose label is empty (``"empty"``) or not (``"holding"``), each window segmented
    alone; windows less than half inside the body (intensity above the slice's minimum) are skipped."""
    h, w, depth = label.shape
    sums = {"empty": np.zeros(n_classes), "holding": np.zeros(n_classes)}
    counts = {"empty": 0, "holding": 0}
    for z in range(depth):
        body = image[0, :, :, z] > image[0, :, :, z].min()
        corners = [(y, x) for y in range(0, h - size + 1, size // 2) for x in range(0, w - size + 1, size // 2)]
        corners = [(y, x) for y, x in corners if float(body[y : y + size, x : x + size].float().mean()) >= 0.5]
        if not corners:
            continue
        batch = torch.stack([image[:, y : y + size, x : x + size, z] for y, x in corners])
        with torch.no_grad():
            pred = net(batch).argmax(1).numpy()
        for (y, x), p in zip(corners, pred):
            kind = "holding" if label[y : y + size, x : x + size, z].any() else "empty"
            sums[kind] += np.bincount(p.ravel(), minlength=n_classes)[:n_classes] / p.size
            counts[kind] += 1
    return {k: {"windows": counts[k], "share": (sums[k] / max(counts[k], 1)).tolist()} for k in sums}


def far_pixels(pred: np.ndarray, label: np.ndarray, spacing, far_mm: float) -> np.ndarray:
    """Per slice (last axis) of a label volume that holds a structure: the pixels predicted as one (any class > 0)
    farther than ``far_mm`` from every labelled pixel (in-plane distance); 0 for slices without one."""
    counts = np.zeros(label.shape[-1], dtype=np.int64)
    for z in range(label.shape[-1]):
        if label[..., z].any():
            distance = ndimage.distance_transform_edt(label[..., z] == 0, sampling=spacing[:2])
            counts[z] = int(((pred[..., z] > 0) & (distance > far_mm)).sum())
    return counts


def _segment(net, inferer, x: torch.Tensor) -> np.ndarray:
    """A frame (1, H, W, D) segmented slice by slice, padded to a multiple of 32 in plane: labels (H, W, D)."""
    h, w = x.shape[1:3]
    padded = torch.nn.functional.pad(x[None], (0, 0, 0, (-w) % 32, 0, (-h) % 32))
    with torch.no_grad():
        return inferer(padded, net).argmax(1)[0, :h, :w].numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cell")
    parser.add_argument("datalist")
    parser.add_argument("--modality", default="mri")
    parser.add_argument("--field", type=int, default=160)
    parser.add_argument("--norm_stats", choices=("running", "batch"), default="running")
    parser.add_argument("--windows", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--panel", default=None)
    parser.add_argument("--compare", nargs="*", default=[])
    parser.add_argument("--far_mm", type=float, default=20.0)
    args = parser.parse_args(argv)
    net = load_segmentation_network(f"{args.cell}/models/model.pt").eval()
    if args.norm_stats == "batch":
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False  # F.batch_norm with the batch's own mean and variance
                m.running_mean = m.running_var = None
    classes = list(range(1, len(read_sidecar(f"{args.cell}/models/model.pt")["class_names"])))  # any network
    pre = Compose(
        [
            LoadImaged(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            Orientationd(["image", "label"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            ModalityIntensityd("image", default=args.modality),
        ]
    )
    inferer = SliceInferer(roi_size=(96, 96), spatial_dim=2, sw_batch_size=16, overlap=0.5)
    half = args.field // 2
    rows, worst = [], (-1, None, 0)  # the most far-predicted pixels on one slice: (count, test item, slice)
    for it in json.load(open(args.datalist, encoding="utf-8"))["test"]:
        d = pre({"image": it["image"], "label": it["label"]})
        x, gt = torch.as_tensor(d["image"]).float(), np.asarray(d["label"][0]).astype(np.int64)
        h, w = gt.shape[:2]
        pred = _segment(net, inferer, x)
        if args.panel:
            far = far_pixels(pred, gt, [float(v) for v in d["image"].pixdim], args.far_mm)
            if far.max() > worst[0]:
                worst = (int(far.max()), it, int(far.argmax()))
        centre = (slice(max(0, h // 2 - half), h // 2 + half), slice(max(0, w // 2 - half), w // 2 + half))
        kept = keep_largest_components(torch.as_tensor(pred), classes).numpy()
        row = {"case": it["label"].split("/")[-1]}
        for name, p, g in (("whole", pred, gt), ("centre", pred[centre], gt[centre]), ("largest", kept, gt)):
            row[name] = [dice(p, g, c) for c in classes]
        if args.windows:
            row["windows"] = window_shares(net, x, gt, len(classes) + 1)
        rows.append(row)
    for name in ("whole", "centre", "largest"):
        m = np.nanmean([r[name] for r in rows], axis=0)
        print(f"{name:8s} Dice % per class {np.round(100 * m, 1).tolist()}  mean {100 * float(np.mean(m)):.1f}")
    if args.windows:
        for kind in ("empty", "holding"):
            n = sum(r["windows"][kind]["windows"] for r in rows)
            share = np.sum([np.multiply(r["windows"][kind]["share"], r["windows"][kind]["windows"]) for r in rows], 0)
            share = share / max(n, 1)
            print(f"windows {kind:8s}{n:6d}: % of pixels per class {np.round(100 * share[1:], 3).tolist()}")
    if args.json:
        json.dump(rows, open(args.json, "w", encoding="utf-8"), indent=1)
    if args.panel and worst[1] is not None:
        _panel(args, worst, pre, inferer)
    return 0


def _panel(args, worst, pre, inferer) -> None:
    """The ``--panel`` picture: ``worst``'s slice under its ground truth and each model's prediction."""
    from pathlib import Path

    from mosmos_components.visualize import label_row

    count, item, z = worst
    d = pre({"image": item["image"], "label": item["label"]})
    x = torch.as_tensor(d["image"]).float()
    panels = [("ground truth", np.asarray(d["label"][0]).astype(np.int64)[..., z])]
    for cell in [args.cell, *args.compare]:
        model = load_segmentation_network(f"{cell}/models/model.pt").eval()
        panels.append((Path(cell).name.split("__")[0], _segment(model, inferer, x)[..., z]))
    names = read_sidecar(f"{args.cell}/models/model.pt")["class_names"][1:]
    case = Path(item["label"]).name.split(".")[0]
    title = f"{case}, slice {z}: {count} pixels predicted > {args.far_mm:g} mm from any labelled one"
    label_row(np.asarray(x[0, ..., z]), panels, names, args.panel, title)
    print(f"panel: {args.panel} ({case}, slice {z}, {count} far pixels)")


if __name__ == "__main__":
    sys.exit(main())
