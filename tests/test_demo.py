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
