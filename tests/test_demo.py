import subprocess
import sys


def test_demo_data_cli(tmp_path, repo):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mosmos_components.cli",
            "demo-data",
            str(tmp_path / "r"),
            "--kind",
            "roco",
            "--n",
            "6",
            "--seed",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r" / "data" / "train" / "radiology" / "captions.txt").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "mosmos_components.cli", "demo-data", str(tmp_path / "x"), "--kind", "mnist"],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert bad.returncode != 0 and "--kind must be one of" in bad.stderr


def test_demo_end_to_end_quick(tmp_path):
    """`mosmos demo` in its quick form: every stage through the bundles, the table and the pictures."""
    from mosmos_components.demo import run_demo

    summary = run_demo(str(tmp_path), quick=True)
    assert "MOSMOS Dice" in summary and "Random Dice" in summary and "\nmean" in summary
    assert "Wilcoxon signed-rank" in summary  # 1 test case in the quick form: "not computed", with the reason
    for png in ("pretrain_curves.png", "pretrain_tag_attention.png", "btcv_mosmos_curves.png", "btcv_overlay.png"):
        assert (tmp_path / png).stat().st_size > 1000
    preds = list((tmp_path / "btcv_mosmos" / "predictions").glob("*_seg.nii.gz"))
    assert len(preds) == 1
    assert (tmp_path / "summary.txt").read_text().strip() == summary.strip()


def test_bundle_demo_cli(tmp_path, pretrained, repo):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mosmos_components.cli",
            "bundle-demo",
            "brats_seg",
            "--pretrained_ckpt",
            str(pretrained["mosmos-tiny-vit"]),
            "--output_dir",
            str(tmp_path),
            "--n",
            "4",
            "--max_epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tumor core" in out.stdout and "enhancing tumor" in out.stdout and "_seg.nii.gz" in out.stdout


def test_demo_wilcoxon_line_pairs_classes_and_says_when_too_few(tmp_path):
    from mosmos_components.demo import _wilcoxon_line

    runs = {}
    for name, dice in (("mosmos", [0.8, 0.7, 0.9]), ("random", [0.5, 0.6, 0.4])):
        path = tmp_path / f"{name}.csv"
        # two cases per class: the pairs are the three classes' means, not the two cases
        rows = "".join(
            f"case{j},organ{i},{d + (0.05 if j else -0.05)},3.0\n" for i, d in enumerate(dice) for j in (0, 1)
        )
        path.write_text("case,class,dice,hd95\n" + rows)
        runs[name] = {"per_case": str(path)}
    line = _wilcoxon_line(runs)
    assert "n = 3 classes" in line and "80.0 vs 50.0 %" in line and "p = 0.25" in line and "too few pairs" in line
    runs["random"]["per_case"] = str(tmp_path / "missing.csv")
    (tmp_path / "missing.csv").write_text("case,class,dice,hd95\nother,liver,0.5,1.0\n")
    assert "not computed" in _wilcoxon_line(runs)
