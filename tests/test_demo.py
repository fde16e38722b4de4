import subprocess
import sys

from conftest import REPO


def test_demo_data_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mosmos_components.cli", "demo-data", str(tmp_path / "r"),
                          "--kind", "roco", "--n", "6", "--seed", "2"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r" / "data" / "train" / "radiology" / "captions.txt").is_file()
    bad = subprocess.run([sys.executable, "-m", "mosmos_components.cli", "demo-data", str(tmp_path / "x"),
                          "--kind", "mnist"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "--kind must be one of" in bad.stderr


def test_demo_end_to_end_quick(tmp_path):
    """`mosmos demo` in its quick form: every stage through the bundles, the table and the pictures."""
    from mosmos_components.demo import run_demo

    summary = run_demo(str(tmp_path), quick=True)
    assert "MOSMOS Dice" in summary and "Random Dice" in summary and "\nmean" in summary
    for png in ("pretrain_curves.png", "pretrain_tag_attention.png", "btcv_mosmos_curves.png", "btcv_overlay.png"):
        assert (tmp_path / png).stat().st_size > 1000
    preds = list((tmp_path / "btcv_mosmos" / "predictions").glob("*_seg.nii.gz"))
    assert len(preds) == 1
    assert (tmp_path / "summary.txt").read_text().strip() == summary.strip()


def test_bundle_demo_cli(tmp_path, pretrained):
    out = subprocess.run([sys.executable, "-m", "mosmos_components.cli", "bundle-demo", "brats_seg",
                          "--pretrained_ckpt", str(pretrained["mosmos-tiny-vit"]), "--out_dir", str(tmp_path),
                          "--n", "4", "--max_epochs", "1"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tumor core" in out.stdout and "enhancing tumor" in out.stdout and "_seg.nii.gz" in out.stdout
