"""Write the AMOS, MM-WHS, BraTS and ACDC bundles' configs from ``btcv_seg``'s and each bundle's
``bundle_spec.json``, and every segmentation bundle's standalone ``inference.json`` from
``bundles/_template/inference.json``.

The segmentation workflow (networks, weight transfer, losses, training, validation, evaluation, inference) is
defined once, in ``bundles/btcv_seg/configs``; what differs between data sets is data (readers, label maps,
class names, intensity handling, channels, sizes), and that is all a ``bundle_spec.json`` holds: config ids
(MONAI's ``a#b#c`` syntax) and their values, per config file. Each generated bundle stays self-contained, as
the model zoo wants.

    python scripts/build_bundles.py           # (re)write the generated configs
    python scripts/build_bundles.py --check   # exit 1 if any generated config is out of date (the tests run this)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parent.parent / "bundles"
BASE = "btcv_seg"
CONFIGS = ["train.json", "evaluate.json", "multi_gpu_train.json", "demo.json", "unet2d.json"]
COPIED = ["configs/logging.conf", "LICENSE"]
VARIANTS = ["baselines", "ablations"]
INFERENCE_TEMPLATE = ROOT / "_template" / "inference.json"


def build_inference(name: str, train: dict) -> str:
    """``configs/inference.json`` of bundle ``name``, standalone (the model zoo loads it alone): the template's
    workflow, which reads spacing, intensities and window from the model's sidecar, with this bundle's root,
    the class names and channels it expects of a model, and its spec's ``inference.json`` entries."""
    spec_file = ROOT / name / "bundle_spec.json"
    spec = json.loads(spec_file.read_text(encoding="utf-8")) if spec_file.is_file() else {}
    resolved = ConfigParser(train)
    parser = ConfigParser(json.loads(INFERENCE_TEMPLATE.read_text(encoding="utf-8")))
    parser["bundle_root"] = train["bundle_root"]
    parser["checkpoint_expect"] = {"class_names": resolved.get_parsed_content("class_names"),
                                   "in_channels": resolved.get_parsed_content("in_channels")}
    for key, value in spec.get("configs", {}).get("inference.json", {}).items():
        parser[key] = value
    return json.dumps(parser.get(), indent=4) + "\n"


def build(name: str) -> dict[str, str]:
    """The text of every generated file of bundle ``name`` (relative path -> content)."""
    spec = json.loads((ROOT / name / "bundle_spec.json").read_text(encoding="utf-8"))
    out = {}
    for cfg in CONFIGS:
        if cfg in spec.get("drop", []):
            continue
        parser = ConfigParser(json.loads((ROOT / BASE / "configs" / cfg).read_text(encoding="utf-8")))
        for key, value in spec.get("configs", {}).get(cfg, {}).items():
            parser[key] = value
        for key in spec.get("remove", {}).get(cfg, []):
            parent, _, leaf = key.rpartition("#")
            del (parser[parent] if parent else parser.get())[leaf]
        out[f"configs/{cfg}"] = json.dumps(parser.get(), indent=4) + "\n"
    for f in COPIED:
        out[f] = (ROOT / BASE / f).read_text(encoding="utf-8")
    keys = set().union(*(json.loads(out[f"configs/{c}"]) for c in ("train.json", "unet2d.json")
                         if f"configs/{c}" in out))
    for folder in VARIANTS:  # named variants (baselines, ablations): data-independent overrides, the same everywhere
        for f in sorted((ROOT / BASE / "configs" / folder).glob("*.json")):
            text = f.read_text(encoding="utf-8")
            if set(json.loads(text)) - {"_description"} <= keys:  # e.g. no ImageNet ResNet where there is no U-Net
                out[f"configs/{folder}/{f.name}"] = text
    out["configs/inference.json"] = build_inference(name, json.loads(out["configs/train.json"]))
    return out


def specs() -> list[str]:
    return sorted(p.parent.name for p in ROOT.glob("*/bundle_spec.json"))


def main(check: bool = False) -> int:
    stale = []
    base_train = json.loads((ROOT / BASE / "configs" / "train.json").read_text(encoding="utf-8"))
    generated = [(BASE, {"configs/inference.json": build_inference(BASE, base_train)})]
    for name in specs():
        generated.append((name, build(name)))
    for name, files in generated:
        for rel, text in files.items():
            path = ROOT / name / rel
            if check:
                if not path.is_file() or path.read_text(encoding="utf-8") != text:
                    stale.append(str(path))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if check and stale:
        print("out of date (run python scripts/build_bundles.py):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv))
