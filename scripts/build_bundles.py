"""Write the AMOS, MM-WHS and BraTS bundles' configs from ``btcv_seg``'s and each bundle's ``bundle_spec.json``.

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
CONFIGS = ["train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "demo.json", "unet2d.json"]
COPIED = ["configs/logging.conf", "LICENSE"]


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
    return out


def specs() -> list[str]:
    return sorted(p.parent.name for p in ROOT.glob("*/bundle_spec.json"))


def main(check: bool = False) -> int:
    stale = []
    for name in specs():
        for rel, text in build(name).items():
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
