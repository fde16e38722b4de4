"""The built wheel carries the bundles: bundle-demo, segment and locate run from it outside the source tree."""

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def installed(tmp_path_factory, repo):
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(repo),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp / "dist").glob("mosmos-*.whl"))
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp / "site"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert inst.returncode == 0, inst.stderr[-2000:]
    return tmp


def _mosmos(installed, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(installed / "site"))
    return subprocess.run(
        [sys.executable, "-c", "from mosmos_components.cli import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,
    )


def test_cli_runs_from_the_installed_wheel_outside_the_checkout(installed, pretrained, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(installed / "site"))
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, mosmos_components as m, mosmos_components.bundle_runner"
            " as b; print(json.dumps([m.__file__, str(b.bundles_dir())]))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    module, bundles = json.loads(where.stdout)
    assert module.startswith(str(installed / "site")) and bundles.startswith(str(installed / "site"))
    demo = _mosmos(
        installed,
        "bundle-demo",
        "btcv_seg",
        "--pretrained_ckpt",
        pretrained["mosmos-tiny-vit"],
        "--output_dir",
        "out",
        "--n",
        4,
        "--max_epochs",
        1,
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    scan = next((tmp_path / "out" / "btcv" / "RawData" / "Training" / "img").glob("*.nii.gz"))
    seg = _mosmos(
        installed, "segment", scan, "seg", "--model", "out/btcv_mosmos", "--statistics", "--preview", cwd=tmp_path
    )
    assert seg.returncode == 0, seg.stderr[-3000:]
    assert (tmp_path / "seg" / scan.name).is_file() and (tmp_path / "seg" / f"{scan.name[:-7]}_preview.png").is_file()
    loc = _mosmos(
        installed,
        "locate",
        scan,
        "liver",
        "--model",
        pretrained["mosmos-tiny-vit"],
        "--output_dir",
        "loc",
        cwd=tmp_path,
    )
    assert loc.returncode == 0 and (tmp_path / "loc" / f"{scan.name[:-7]}_liver.nii.gz").is_file(), loc.stderr[-3000:]
