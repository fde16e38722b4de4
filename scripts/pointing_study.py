"""Does the pre-trained tag attention point at the organs? The pointing game over pre-training scale.

Pre-trains the demo model (``mosmos_pretrain`` with ``demo.json``) on generated ROCO-layout data, whose images come
with organ masks, under several settings, and writes each run's pointing accuracy per epoch next to its chance
level (``pointing_study.csv``) and as curves (``pointing_study.png``).

    python scripts/pointing_study.py OUT_DIR [--pairs 512,2048] [--epochs 12,60] [--mlr_only]

Used for the investigation in ``bundles/mosmos_pretrain/docs/README.md`` ("Does the tag attention localise?").
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from monai.bundle import run

ROOT = Path(__file__).resolve().parent.parent / "bundles" / "mosmos_pretrain"


def study(out: Path, pairs: list[int], epochs: list[int], mlr_only: bool) -> list[dict]:
    from mosmos_components.data.synthetic import write_roco

    rows = []
    settings = [(n, e, True) for n in pairs for e in epochs] + ([(max(pairs), max(epochs), False)] if mlr_only else [])
    for n, max_epochs, use_irc in settings:
        data = out / f"roco_{n}"
        if not (data / "data").is_dir():
            write_roco(data, n=n, seed=0)
        name = f"n{n}_e{max_epochs}" + ("" if use_irc else "_mlr_only")
        t0 = time.time()
        run(
            config_file=[str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "demo.json")],
            bundle_root=str(ROOT),
            dataset_dir=str(data / "data"),
            ckpt_dir=str(out / name / "models"),
            output_dir=str(out / name / "eval"),
            max_epochs=max_epochs,
            use_irc=use_irc,
            show_progress=False,
            resume=False,
            logging_file=str(ROOT / "configs" / "logging.conf"),
        )
        with open(out / name / "eval" / "val_history.csv", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                rows.append(
                    {
                        "run": name,
                        "pairs": n,
                        "use_irc": use_irc,
                        "epoch": int(r["epoch"]),
                        "pointing_acc": float(r["pointing_acc"]),
                        "pointing_chance": float(r["pointing_chance"]),
                        "tag_map": float(r["tag_map"]),
                        "val_loss": float(r["val_loss"]),
                        "wall_s": round(time.time() - t0, 1),
                    }
                )
        print(
            f"{name}: {time.time() - t0:.0f} s, last epoch pointing {rows[-1]['pointing_acc']:.3f} "
            f"(chance {rows[-1]['pointing_chance']:.3f}), tag mAP {rows[-1]['tag_map']:.3f}",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--pairs", default="512,2048")
    ap.add_argument("--epochs", default="12,60")
    ap.add_argument("--mlr_only", action="store_true", help="also the largest run without L_irc")
    a = ap.parse_args()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = study(out, [int(x) for x in a.pairs.split(",")], [int(x) for x in a.epochs.split(",")], a.mlr_only)
    with open(out / "pointing_study.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(r["run"] for r in rows):
        rs = [r for r in rows if r["run"] == name]
        ax.plot([r["epoch"] for r in rs], [r["pointing_acc"] for r in rs], label=name)
    chance = sum(r["pointing_chance"] for r in rows) / len(rows)
    ax.axhline(chance, color="k", linestyle=":", label=f"chance (flat map), {chance:.2f}")
    ax.set(xlabel="pre-training epoch", ylabel="pointing accuracy", title="Tag attention: pointing game (demo data)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pointing_study.png", dpi=120)
    print(f"wrote {out / 'pointing_study.csv'} and {out / 'pointing_study.png'}")


if __name__ == "__main__":
    main()
