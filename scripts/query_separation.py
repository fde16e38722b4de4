"""How distinguishable segmentation classes are to pixel-tag attention from the text side: the cosines between the
class embeddings that the learned prompt and the text tower give a bundle's class names.

    python scripts/query_separation.py CKPT [CKPT ...] [--bundles acdc_seg btcv_seg] [--json out.json]

CKPT: a ``mosmos_pretrain`` checkpoint (``model.pt`` + sidecar), or a network before any pre-training written as
``init:BACKBONE`` (random towers, seed 0) or ``init:BACKBONE:TEXT_TOWER_FOLDER`` (e.g.
``init:mosmos-lite:.towers/all-MiniLM-L6-v2``): the initial state a pre-training starts from. For each bundle's
class names it prints the mean cosine between two different classes and the closest pair, and the cosine of
right and left ventricle.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _network(source: str):
    import torch

    from mosmos_components.checkpoint import load_pretrain_network
    from mosmos_components.networks import MosmosPretrainNet

    if source.startswith("init:"):
        backbone, _, tower = source[len("init:") :].partition(":")
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MosmosPretrainNet(backbone, text_tower=tower or None, _warn_random=False).eval()
    return load_pretrain_network(source).eval()


def main(argv: list[str] | None = None) -> int:
    from mosmos_components.transfer import class_query_separation

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--bundles", nargs="+", default=["acdc_seg", "btcv_seg"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    names = {
        b: json.loads((ROOT / "bundles" / b / "bundle_spec.json").read_text())["configs"]["train.json"]["class_names"]
        for b in args.bundles
    }
    rows = []
    for source in args.sources:
        net = _network(source)
        row = {"source": source}
        for bundle, classes in names.items():
            sep = class_query_separation(net, classes)
            row[bundle] = {k: sep[k] for k in ("mean_cosine", "max_cosine", "closest")}
        row["right_vs_left_ventricle"] = class_query_separation(net, ["right ventricle", "left ventricle"])[
            "max_cosine"
        ]
        rows.append(row)
        cells = "  ".join(f"{b}: mean {row[b]['mean_cosine']:.3f} max {row[b]['max_cosine']:.4f}" for b in names)
        print(f"{source}\n    {cells}  RV/LV {row['right_vs_left_ventricle']:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
