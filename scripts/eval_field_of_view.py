"""Where a 2D segmentation model's test Dice is lost: the same model scored on the whole slice (as the bundles'
evaluate.json does), on a 160 x 160 field around the image centre (how a field-limited evaluation sees it), and
with only the largest connected component of each class kept (fragments away from the organ removed).

    python scripts/eval_field_of_view.py CELL_DIR DATALIST [--modality mri] [--norm_stats batch] [--json out.json]

CELL_DIR: a trained run (``models/model.pt`` + sidecar, e.g. an experiment cell's folder); DATALIST: the split it
was trained on (its ``test`` items are scored; relative paths resolve from the working directory). Images go
through the bundles' orientation (RAS) and intensity handling; slices through MONAI's SliceInferer.
``--norm_stats batch`` normalises each batch-norm layer with the statistics of the batch of slices being
segmented instead of the running statistics of training: when that scores much higher, the training images'
statistics do not describe the test patients' (few training patients, other scanners).
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
from mosmos_components.transforms import ModalityIntensityd


def largest_components(pred: np.ndarray, labels) -> np.ndarray:
    out = np.zeros_like(pred)
    for c in labels:
        lab, n = ndimage.label(pred == c)
        if n:
            sizes = ndimage.sum(np.ones_like(lab), lab, range(1, n + 1))
            out[lab == 1 + int(np.argmax(sizes))] = c
    return out


def dice(p: np.ndarray, g: np.ndarray, c: int) -> float:
    a, b = p == c, g == c
    return float("nan") if b.sum() == 0 else 2.0 * (a & b).sum() / (a.sum() + b.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cell")
    parser.add_argument("datalist")
    parser.add_argument("--modality", default="mri")
    parser.add_argument("--field", type=int, default=160)
    parser.add_argument("--norm_stats", choices=("running", "batch"), default="running")
    parser.add_argument("--json", default=None)
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
    rows = []
    for it in json.load(open(args.datalist, encoding="utf-8"))["test"]:
        d = pre({"image": it["image"], "label": it["label"]})
        x, gt = torch.as_tensor(d["image"]).float(), np.asarray(d["label"][0]).astype(np.int64)
        h, w = gt.shape[:2]
        padded = torch.nn.functional.pad(x[None], (0, 0, 0, (-w) % 32, 0, (-h) % 32))
        with torch.no_grad():
            pred = inferer(padded, net).argmax(1)[0, :h, :w].numpy()
        centre = (slice(max(0, h // 2 - half), h // 2 + half), slice(max(0, w // 2 - half), w // 2 + half))
        kept = largest_components(pred, classes)
        row = {"case": it["label"].split("/")[-1]}
        for name, p, g in (("whole", pred, gt), ("centre", pred[centre], gt[centre]), ("largest", kept, gt)):
            row[name] = [dice(p, g, c) for c in classes]
        rows.append(row)
    for name in ("whole", "centre", "largest"):
        m = np.nanmean([r[name] for r in rows], axis=0)
        print(f"{name:8s} Dice % per class {np.round(100 * m, 1).tolist()}  mean {100 * float(np.mean(m)):.1f}")
    if args.json:
        json.dump(rows, open(args.json, "w", encoding="utf-8"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
