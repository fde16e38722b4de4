"""``mosmos demo``: the MOSMOS pipeline end to end on generated data, through the bundles.

Stages (each a bundle run through MONAI's bundle API, with the bundle's ``demo.json`` override):
1. synthetic ROCO pairs -> ``mosmos_pretrain`` (train, then evaluate on the validation split);
2. synthetic BTCV volumes -> ``btcv_seg`` fine-tuned from those weights, and the same network trained from
   random initialisation; both evaluated (Dice, HD95) on the same held-out test split;
3. inference on a held-out volume; pictures: curves, tag attention, and an overlay of image, ground truth,
   prediction and one pixel-tag attention map.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from mosmos_components.bundle_runner import run_bundle
from mosmos_components.data.synthetic import write_demo_data, write_roco
from mosmos_components.evaluation import wilcoxon_test

__all__ = ["run_demo", "pretrain_stage", "btcv_stage", "segmentation_stage", "BUNDLE_KINDS"]


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
    run_bundle(
        "mosmos_pretrain", ["train.json", "demo.json", "evaluate.json"], **overrides, **{"validate#split": "validation"}
    )
    metrics = _read_metrics_csv(eval_dir / "metrics.csv")
    return {
        "data": data,
        "ckpt": ckpt_dir / "model.pt",
        "eval_dir": eval_dir,
        "metrics": metrics,
        "wall_s": time.time() - t0,
    }


def _bundle_parser(bundle: str, configs: list[str], overrides: dict):
    """The bundle's parsed configuration (to reuse its transforms and network exactly as the runs did)."""
    from monai.bundle import ConfigParser

    from mosmos_components.bundle_runner import bundles_dir

    root = bundles_dir() / bundle
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / c) for c in configs])
    parser.update({**overrides, "bundle_root": str(root), "device": "$torch.device('cpu')"})
    return parser


def _pretrain_pictures(stage: dict, out: Path) -> list[str]:
    from mosmos_components.checkpoint import load_pretrain_network
    from mosmos_components.data.roco import load_roco
    from mosmos_components.visualize import plot_curves, plot_tag_attention

    pics = [
        plot_curves(
            {"train": stage["eval_dir"] / "train_history.csv", "validation": stage["eval_dir"] / "val_history.csv"},
            out / "pretrain_curves.png",
            "MOSMOS pre-training (demo)",
        )
    ]
    net = load_pretrain_network(stage["ckpt"]).eval()
    item = next(d for d in load_roco(stage["data"], "validation") if sum(d["tags"]) >= 2)
    parser = _bundle_parser("mosmos_pretrain", ["train.json", "demo.json"], {"dataset_dir": str(stage["data"])})
    img = parser.get_parsed_content("validate#preprocessing")(dict(item, label=item["tags"]))["image"].unsqueeze(0)
    with torch.no_grad():
        _, s, grid = net.encode_image(img)
        _, attn = net.decoder(net.tag_queries(), s, grid, output="attention")
    idx = [i for i, v in enumerate(item["tags"]) if v]
    grey = img[0, 0].numpy() * net.image_std[0] + net.image_mean[0]
    # MONAI's PIL reader gives (W, H): transpose back to the picture's orientation
    maps = attn[0, idx].reshape(len(idx), *grid).numpy()
    pics.append(
        plot_tag_attention(
            grey.T,
            np.transpose(maps, (0, 2, 1)),
            [net.tags[i] for i in idx],
            out / "pretrain_tag_attention.png",
            item["report"],
        )
    )
    return pics


# fine-tuning epochs of `mosmos demo` (demo.json has 50 for one bundle's demo): two fine-tunings of 40 epochs keep
# the demo within 8 minutes on a 2-core CPU (issue 12), validation at epochs 20 and 40
DEMO_FINETUNE_EPOCHS = 40

BUNDLE_KINDS = {"btcv_seg": "btcv", "amos_seg": "amos", "mmwhs_seg": "mmwhs", "brats_seg": "brats"}


def segmentation_stage(
    bundle: str,
    out: Path,
    pretrained_ckpt: Path,
    seed: int = 0,
    n_cases: int | None = None,
    max_epochs: int | None = None,
    inits: tuple[str, ...] = ("mosmos",),
) -> dict:
    """Generate ``bundle``'s demo data, fine-tune it (``demo.json``) from ``pretrained_ckpt`` (init ``mosmos``)
    and/or from random initialisation (``random``) on one split, evaluate each on the held-out split, and run
    inference on its first volume with the first init's model."""
    kind = BUNDLE_KINDS[bundle]
    data = write_demo_data(out / kind, kind=kind, n=n_cases, seed=seed)
    datalist = out / f"{kind}_datalist.json"
    common = {
        "dataset_dir": str(data),
        "datalist_file": str(datalist),
        "seed": seed,
        "pretrained_ckpt": str(pretrained_ckpt),
    }
    if max_epochs is not None:
        common.update(max_epochs=max_epochs, val_interval=max(1, max_epochs // 2))
    runs = {}
    for name in inits:
        t0 = time.time()
        d = out / f"{kind}_{name}"
        over = {
            **common,
            "ckpt_dir": str(d / "models"),
            "output_dir": str(d / "eval"),
            **({"use_pretrained": False} if name == "random" else {}),
        }
        run_bundle(bundle, ["train.json", "demo.json"], **over)
        train_s = time.time() - t0
        run_bundle(bundle, ["train.json", "demo.json", "evaluate.json"], **over)
        eval_s = time.time() - t0 - train_s
        with open(d / "eval" / "report" / "summary.csv", encoding="utf-8") as fh:  # written by evaluate.json
            summary = [
                {**r, "dice": float(r["dice"]), "hd95": float(r["hd95"]), "n": int(r["n"])} for r in csv.DictReader(fh)
            ]
        runs[name] = {
            "dir": d,
            "over": over,
            "summary": summary,
            "train_s": train_s,
            "eval_s": eval_s,
            "per_case": d / "eval" / "report" / "per_case.csv",
        }
    split = json.loads(datalist.read_text())
    test_case = (split.get("test") or split["validation"])[0]
    pred_dir = out / f"{kind}_{inits[0]}" / "predictions"
    t0 = time.time()
    run_bundle(
        bundle,
        ["train.json", "demo.json", "inference.json"],
        **{**runs[inits[0]]["over"], "dataset_dir": test_case["image"], "prediction_dir": str(pred_dir)},
    )
    return {
        "runs": runs,
        "test_case": test_case,
        "prediction": next(pred_dir.glob("*_seg.nii.gz")),
        "infer_s": time.time() - t0,
    }


def btcv_stage(
    out: Path, pretrained_ckpt: Path, seed: int = 0, n_cases: int = 12, max_epochs: int | None = None
) -> dict:
    """``btcv_seg`` from the pre-trained weights and from random initialisation, on the same split."""
    return segmentation_stage("btcv_seg", out, pretrained_ckpt, seed, n_cases, max_epochs, ("mosmos", "random"))


def _btcv_pictures(stage: dict, out: Path) -> list[str]:
    """Curves of both runs, and image / ground truth / prediction / attention on the test case (RAS grid)."""
    from monai.inferers import sliding_window_inference

    from mosmos_components.visualize import plot_curves, plot_segmentation_overlay, radiological

    pics = []
    for name, r in stage["runs"].items():
        pics.append(
            plot_curves(
                {"train": r["dir"] / "eval" / "train_history.csv", "validation": r["dir"] / "eval" / "val_history.csv"},
                out / f"btcv_{name}_curves.png",
                f"btcv_seg demo ({name} initialisation)",
            )
        )
    parser = _bundle_parser("btcv_seg", ["train.json", "demo.json", "evaluate.json"], stage["runs"]["mosmos"]["over"])
    net = parser.get_parsed_content("network").eval()
    item = parser.get_parsed_content("validate#preprocessing")(dict(stage["test_case"]))
    img = item["image"].as_tensor().unsqueeze(0)
    roi = tuple(parser.get_parsed_content("roi_size"))
    names = parser.get_parsed_content("class_names")
    with torch.no_grad():
        pred = sliding_window_inference(img, roi, 1, net, overlap=0.5).argmax(1)[0].numpy()
        attn = sliding_window_inference(
            img,
            roi,
            1,
            lambda x: torch.nn.functional.interpolate(net.attention_maps(x), size=x.shape[2:], mode="trilinear"),
            overlap=0.5,
        )[0].numpy()
    label = item["label"].as_tensor()[0].numpy().astype(int)
    z = int(np.argmax((label > 0).sum(axis=(0, 1))))
    k = int(np.argmax(np.bincount(label[:, :, z].ravel(), minlength=len(names))[1:])) + 1
    pics.append(
        plot_segmentation_overlay(
            radiological(img[0, 0, :, :, z].numpy()),
            radiological(label[:, :, z]),
            radiological(pred[:, :, z]),
            radiological(attn[k, :, :, z]),
            names[k],
            out / "btcv_overlay.png",
            f"held-out case {Path(stage['test_case']['image']).name}, axial slice {z} (MOSMOS initialisation)",
            num_classes=len(names),
            class_names=names,
        )
    )
    return pics


def _comparison_table(runs: dict) -> str:
    a, b = runs["mosmos"]["summary"], runs["random"]["summary"]
    lines = [f"{'class':<30} {'MOSMOS Dice':>11} {'HD95':>7} {'Random Dice':>11} {'HD95':>7}", "-" * 70]

    def fmt(v, pct=False):
        return "-" if v != v else (f"{100 * v:.1f}" if pct else f"{v:.1f}")

    for ra, rb in zip(a, b):
        lines.append(
            f"{ra['class']:<30} {fmt(ra['dice'], True):>11} {fmt(ra['hd95']):>7} "
            f"{fmt(rb['dice'], True):>11} {fmt(rb['hd95']):>7}"
        )
    return "\n".join(lines)


def _wilcoxon_line(runs: dict) -> str:
    """The paper's paired test between the two initialisations (per class, on each class's test-set mean Dice);
    with fewer than 6 pairs no p can fall below 0.05, and the line says so."""
    try:
        w = wilcoxon_test(runs["mosmos"]["per_case"], runs["random"]["per_case"])
    except ValueError as e:
        return f"Wilcoxon signed-rank test not computed: {e}"
    note = " (too few pairs for significance: the smallest possible p with n < 6 is above 0.05)" if w["n"] < 6 else ""
    return (
        f"Wilcoxon signed-rank, per-class mean Dice MOSMOS vs Random: n = {w['n']} classes, "
        f"{100 * w['mean_a']:.1f} vs {100 * w['mean_b']:.1f} %, p = {w['p']:.3g}{note}"
    )


def run_demo(output_dir: str = "demo_output", seed: int = 0, quick: bool = False) -> str:
    """Run every stage; returns the printed summary. ``quick`` shortens training (for tests)."""
    t0 = time.time()
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stage = pretrain_stage(out, seed=seed, n_pairs=64 if quick else 512, max_epochs=2 if quick else None)
    t1 = time.time()
    pics = _pretrain_pictures(stage, out)
    pics_s = time.time() - t1
    seg = btcv_stage(
        out, stage["ckpt"], seed=seed, n_cases=6 if quick else 12, max_epochs=2 if quick else DEMO_FINETUNE_EPOCHS
    )
    t1 = time.time()
    pics += _btcv_pictures(seg, out)
    pics_s += time.time() - t1
    runs = seg["runs"]
    m = stage["metrics"]
    lines = [
        f"MOSMOS demo finished in {time.time() - t0:.0f} s (outputs in {out})",
        f"pre-training ({stage['wall_s']:.0f} s): val_loss {m.get('val_loss', float('nan')):.4f} "
        f"(irc {m.get('val_irc', float('nan')):.4f}, mlr {m.get('val_mlr', float('nan')):.4f}), "
        f"recall@1/5/10 {m.get('recall_at_1', 0):.3f}/{m.get('recall_at_5', 0):.3f}/{m.get('recall_at_10', 0):.3f}, "
        f"tag mAP {m.get('tag_map', 0):.3f}",
        f"tag attention pointing game (peak inside the named organ): {m.get('pointing_acc', float('nan')):.3f} vs "
        f"{m.get('pointing_chance', float('nan')):.3f} for a flat map (chance)",
        f"pre-trained weights: {stage['ckpt']}",
        f"btcv_seg fine-tuning: {seg['runs']['mosmos']['train_s']:.0f} s from MOSMOS weights, "
        f"{seg['runs']['random']['train_s']:.0f} s from random initialisation; test split "
        f"({Path(seg['runs']['mosmos']['per_case']).parent}):",
        _comparison_table(seg["runs"]),
        _wilcoxon_line(seg["runs"]),
        f"inference on held-out {Path(seg['test_case']['image']).name}: {seg['prediction']}",
        *[f"picture: {p}" for p in pics],
        f"stages (s): pre-training and its evaluation {stage['wall_s']:.0f}, "
        f"fine-tuning {runs['mosmos']['train_s']:.0f}"
        f" (MOSMOS) + {runs['random']['train_s']:.0f} (random), evaluation {runs['mosmos']['eval_s']:.0f} + "
        f"{runs['random']['eval_s']:.0f}, inference {seg['infer_s']:.0f}, pictures {pics_s:.0f}",
    ]
    summary = "\n".join(lines)
    (out / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    return summary
