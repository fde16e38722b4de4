"""``mosmos demo``: the MOSMOS pipeline end to end on generated data, through the bundles.

Stages (each a bundle run through MONAI's bundle API, with the bundle's ``demo.json`` override):
1. synthetic ROCO pairs -> ``mosmos_pretrain`` (train, then evaluate on the validation split);
2. pictures: training curves and the tag decoder's attention maps on a validation image.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

from mosmos_components.cli import run_bundle
from mosmos_components.data.demo import write_roco

__all__ = ["run_demo", "pretrain_stage"]


def _read_metrics_csv(path: Path) -> dict[str, float]:
    """MONAI ``MetricsSaver`` writes ``metrics.csv`` as ``name,value`` lines."""
    out = {}
    with open(path, encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) >= 2:
                out[row[0]] = float(row[1])
    return out


def pretrain_stage(out: Path, seed: int = 0, n_pairs: int = 512, max_epochs: int | None = None) -> dict:
    """Generate ROCO-layout pairs, pre-train and evaluate; returns paths, metrics and wall time."""
    t0 = time.time()
    data = write_roco(out / "roco", n=n_pairs, seed=seed)
    ckpt_dir, eval_dir = out / "pretrain" / "models", out / "pretrain" / "eval"
    overrides = {"dataset_dir": str(data), "ckpt_dir": str(ckpt_dir), "output_dir": str(eval_dir), "seed": seed}
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    run_bundle("mosmos_pretrain", ["train.json", "demo.json"], **overrides)
    run_bundle("mosmos_pretrain", ["train.json", "demo.json", "evaluate.json"], **overrides,
               **{"validate#split": "validation"})
    metrics = _read_metrics_csv(eval_dir / "metrics.csv")
    return {"data": data, "ckpt": ckpt_dir / "model.pt", "eval_dir": eval_dir, "metrics": metrics,
            "wall_s": time.time() - t0}


def _pretrain_pictures(stage: dict, out: Path) -> list[str]:
    from mosmos_components.checkpoint import load_pretrain_network
    from mosmos_components.data.roco import load_roco
    from mosmos_components.visualize import plot_curves, plot_tag_attention
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, Resized
    from monai.transforms import ScaleIntensityRanged

    from mosmos_components.networks import CLIP_MEAN, CLIP_STD
    from mosmos_components.transforms import ToRGBd

    pics = [plot_curves({"train": stage["eval_dir"] / "train_history.csv",
                         "validation": stage["eval_dir"] / "val_history.csv"},
                        out / "pretrain_curves.png", "MOSMOS pre-training (demo)")]
    net = load_pretrain_network(stage["ckpt"]).eval()
    item = next(d for d in load_roco(stage["data"], "validation") if sum(d["tags"]) >= 2)
    tf = Compose([LoadImaged("image", reader="PILReader", image_only=True), EnsureChannelFirstd("image"),
                  ToRGBd("image"), Resized("image", (net.image_size, net.image_size)),
                  ScaleIntensityRanged("image", 0, 255, 0.0, 1.0, clip=True),
                  NormalizeIntensityd("image", subtrahend=CLIP_MEAN, divisor=CLIP_STD, channel_wise=True)])
    img = tf(item)["image"].as_tensor().unsqueeze(0)
    with torch.no_grad():
        _, s, grid = net.encode_image(img)
        _, attn = net.decoder(net.tag_queries(), s, grid)
    idx = [i for i, v in enumerate(item["tags"]) if v]
    grey = img[0, 0].numpy() * CLIP_STD[0] + CLIP_MEAN[0]
    # MONAI's PIL reader gives (W, H): transpose back to the picture's orientation
    maps = attn[0, idx].reshape(len(idx), *grid).numpy()
    pics.append(plot_tag_attention(grey.T, np.transpose(maps, (0, 2, 1)), [net.tags[i] for i in idx],
                                   out / "pretrain_tag_attention.png", item["report"]))
    return pics


def run_demo(out_dir: str = "demo_output", seed: int = 0, quick: bool = False) -> str:
    """Run every stage; returns the printed summary. ``quick`` shortens training (for tests)."""
    t0 = time.time()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stage = pretrain_stage(out, seed=seed, n_pairs=64 if quick else 512, max_epochs=2 if quick else None)
    pics = _pretrain_pictures(stage, out)
    m = stage["metrics"]
    lines = [
        f"MOSMOS demo finished in {time.time() - t0:.0f} s (outputs in {out})",
        f"pre-training ({stage['wall_s']:.0f} s): val_loss {m.get('val_loss', float('nan')):.4f} "
        f"(irc {m.get('val_irc', float('nan')):.4f}, mlr {m.get('val_mlr', float('nan')):.4f}), "
        f"recall@1/5/10 {m.get('recall_at_1', 0):.3f}/{m.get('recall_at_5', 0):.3f}/{m.get('recall_at_10', 0):.3f}, "
        f"tag mAP {m.get('tag_map', 0):.3f}",
        f"pre-trained weights: {stage['ckpt']}",
        *[f"picture: {p}" for p in pics],
    ]
    summary = "\n".join(lines)
    (out / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    return summary
