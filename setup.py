"""Packaging hook: the wheel carries the bundles' configs and docs and the experiment specs as package data
(``mosmos_components/_bundles``, ``mosmos_components/_experiments``), so that ``mosmos demo``, ``mosmos
bundle-demo`` and ``mosmos segment`` work from an installed wheel outside the checkout. Everything else is in
pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
KEEP = ("configs", "docs")  # a bundle's trained weights and outputs (models/, eval/, runs/) stay out


class BuildWithBundles(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "mosmos_components"
        for bundle in sorted((ROOT / "bundles").iterdir()):
            if not (bundle / "configs" / "metadata.json").is_file():
                continue
            for part in KEEP + ("bundle_spec.json", "LICENSE", "README.md", "large_files.yml"):
                src = bundle / part
                dst = target / "_bundles" / bundle.name / part
                if src.is_dir():
                    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
                elif src.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
        specs = target / "_experiments"
        specs.mkdir(parents=True, exist_ok=True)
        for spec in sorted((ROOT / "experiments").glob("*.json")):
            shutil.copy2(spec, specs / spec.name)


setup(cmdclass={"build_py": BuildWithBundles})
