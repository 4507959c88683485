"""What a user who installs the wheel gets: the package, its data and its configs, without this checkout."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_an_installed_wheel_trains_with_its_bundled_config_from_an_empty_folder(tmp_path):
    dist, site, empty = tmp_path / "dist", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)], check=True)
    (wheel,) = dist.glob("mnist_rnn-*.whl")
    # Installed on its own into a folder that comes first on the path: the wheel's files, not this
    # checkout's, are imported (its dependencies, torch among them, are those of this environment).
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import mnist_rnn; print(mnist_rnn.__file__)"], cwd=empty, env=env,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(site))
    fit = subprocess.run(
        [sys.executable, "-m", "mnist_rnn.cli", "fit", "-c", "tiny", "--trainer.max_epochs", "1"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (empty / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt").is_file()
