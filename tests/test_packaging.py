"""What a user who installs the wheel gets: the package, its data, its configs and its trained model, without this checkout."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

import mnist_rnn
from mnist_rnn.commands import bundled
from tests.test_bundled import ANNOUNCED, check_serves_the_bundled_model, write_pngs

REPO = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # One build at a time: two pytest-xdist workers building at once collide in the checkout's build/ folder
    # ("File exists: build/bdist.linux-x86_64/wheel/mnist_rnn-0.2.0.dist-info", 2026-12-07). The lock file is in
    # the folder above the workers' own temporary folders, which they share.
    with FileLock(tmp_path_factory.getbasetemp().parent / "wheel.lock"):
        subprocess.run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)], check=True)
    (built,) = dist.glob("mnist_rnn-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """The wheel installed on its own into a folder that comes first on the path: the wheel's files,
    not this checkout's, are imported (its dependencies, torch among them, are those of this environment)."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([*PIP, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    return {**os.environ, "PYTHONPATH": str(site)}


def test_the_wheel_holds_the_bundled_model_and_no_other_checkpoint(wheel):
    with zipfile.ZipFile(wheel) as archive:
        checkpoints = [name for name in archive.namelist() if name.endswith((".ckpt", ".pt", ".pth"))]
        assert checkpoints == ["mnist_rnn/assets/bundled.ckpt"]
        assert archive.read("mnist_rnn/assets/bundled.ckpt") == bundled.BUNDLED_CKPT.read_bytes()


def test_an_installed_wheel_trains_with_its_bundled_config_from_an_empty_folder(installed, tmp_path):
    where = subprocess.run(
        [sys.executable, "-c", "import mnist_rnn; print(mnist_rnn.__file__)"], cwd=tmp_path, env=installed,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(installed["PYTHONPATH"])
    fit = subprocess.run(
        [sys.executable, "-m", "mnist_rnn", "fit", "-c", "tiny", "--trainer.max_epochs", "1"],
        cwd=tmp_path, env=installed, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_an_installed_wheel_predicts_and_serves_without_any_training(installed, tmp_path):
    write_pngs(tmp_path / "digits", 3)
    predict = subprocess.run(
        [sys.executable, "-m", "mnist_rnn", "predict", "--data.predict_path", "digits"],
        cwd=tmp_path, env=installed, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert ANNOUNCED in predict.stderr
    (written,) = (tmp_path / "predictions").glob("predictions_*.csv")
    assert len(written.read_text().splitlines()) == 1 + 3  # header and one row per image
    check_serves_the_bundled_model(tmp_path, installed)


def test_the_version_is_the_same_in_pyproject_the_package_the_changelog_and_the_citation():
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    releases = re.findall(r"^## \[(\d[^\]]*)\] - (\d{4}-\d\d-\d\d)$", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert mnist_rnn.__version__ == version == releases[0][0] == str(citation["version"])
    assert citation["cff-version"] == "1.2.0" and citation["date-released"] == releases[0][1]
    assert "MIT License" in (REPO / "LICENSE").read_text()
