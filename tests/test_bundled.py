"""The model that ships in the package: used when no --ckpt_path is given, loadable in one line, and
the commands beyond the core install naming their extra when its libraries are missing."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

import mnist_rnn
from mnist_rnn.commands import bundled
from mnist_rnn.data.images import read_digit
from mnist_rnn.data.mnist_files import load_split
from mnist_rnn.data.normalization import normalize
from mnist_rnn.run.checkpoints import read_checkpoint
from tests.conftest import REPO, TINY, cli_error, run_cli, run_main, subprocess_env
from tests.test_serve import start_server

INFO = read_checkpoint(bundled.BUNDLED_CKPT)[bundled.INFO]
ANNOUNCED = f"using the bundled model: default config, seed {INFO['seed']}, test accuracy {100 * INFO['test_acc']:.2f}%"
# Every library the serve, export and sweep extras bring, hidden at once for the core commands.
EXTRA_LIBRARIES = ("fastapi", "starlette", "uvicorn", "python_multipart", "multipart", "onnx", "onnxscript",
                   "onnxruntime", "optuna", "optuna_integration")  # fmt: skip


def write_pngs(folder: Path, count: int) -> tuple[list[Path], torch.Tensor]:
    """The first `count` official test digits as PNG files, named so that they sort in order."""
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = load_split("test")
    paths = []
    for i in range(count):
        path = folder / f"digit_{i:02d}.png"
        Image.fromarray(images[i].numpy()).save(path)
        paths.append(path)
    return paths, images[:count]


def predicted(csv_path: Path) -> dict[str, int]:
    with open(csv_path, newline="") as file:
        return {Path(row["path"]).name: int(row["prediction"]) for row in csv.DictReader(file)}


def own_checkpoint(path: Path, always: int) -> Path:
    """A checkpoint of the user's own that is unmistakable: the bundled model's, answering `always` to everything."""
    checkpoint = read_checkpoint(bundled.BUNDLED_CKPT)
    del checkpoint[bundled.INFO]
    state = checkpoint["state_dict"]
    state["net.head.weight"] = torch.zeros_like(state["net.head.weight"])
    state["net.head.bias"] = torch.nn.functional.one_hot(torch.tensor(always), 10).float()
    torch.save(checkpoint, path)
    return path


def test_the_bundled_checkpoint_is_small_and_carries_what_using_it_needs():
    checkpoint = read_checkpoint(bundled.BUNDLED_CKPT)
    assert bundled.BUNDLED_CKPT.stat().st_size <= 1_000_000
    assert "optimizer_states" not in checkpoint and "callbacks" not in checkpoint  # weights only
    assert checkpoint["hyper_parameters"]["hidden_size"] == 128  # conf/default.yaml's model
    assert {"mean", "std"} <= set(checkpoint["datamodule_hyper_parameters"])
    assert checkpoint["precision"] == "32-true"
    assert INFO["config"] == "default" and INFO["seed"] == 42


def test_test_without_ckpt_path_scores_the_bundled_models_stated_accuracy(tmp_path, capsys):
    cli, _ = run_cli("test", cwd=tmp_path)
    assert cli.config.test.ckpt_path == str(bundled.BUNDLED_CKPT)
    # Exactly: the stated figure is what `mnist-rnn test` measured on this file, in its precision
    # (32-true, saved in the checkpoint), on the same 10,000 images.
    assert cli.trainer.callback_metrics["test/acc"].item() == INFO["test_acc"]
    assert INFO["test_acc"] >= 0.99  # the product's promise for the default config
    assert ANNOUNCED in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # evaluating opens no run folder


def test_validate_without_ckpt_path_uses_the_bundled_model(tmp_path, capsys):
    cli, _ = run_cli("validate", "--trainer.limit_val_batches", "1", cwd=tmp_path)
    assert cli.config.validate.ckpt_path == str(bundled.BUNDLED_CKPT)
    assert cli.trainer.callback_metrics["val/acc"].item() > 0.98  # an untrained network scores about 0.1
    assert ANNOUNCED in capsys.readouterr().err


def test_predict_without_ckpt_path_answers_with_the_bundled_model_and_a_given_one_wins(tmp_path):
    paths, digits = write_pngs(tmp_path / "digits", 12)
    model = mnist_rnn.load_model()
    expected = model(torch.stack([read_digit(p) for p in paths])).argmax(dim=1).tolist()
    status, stdout, stderr = run_main(
        "predict", "--data.predict_path", str(tmp_path / "digits"), "--predictions.output", str(tmp_path / "b.csv"),
        cwd=tmp_path,
    )  # fmt: skip
    assert status == 0, stderr
    assert ANNOUNCED in stderr
    assert list(predicted(tmp_path / "b.csv").values()) == expected
    assert sum(e == label for e, label in zip(expected, load_split("test")[1][:12].tolist())) >= 11  # 99% model

    mine = own_checkpoint(tmp_path / "mine.ckpt", always=7)
    status, _, stderr = run_main(
        "predict", "--ckpt_path", str(mine), "--data.predict_path", str(tmp_path / "digits"),
        "--predictions.output", str(tmp_path / "mine.csv"), cwd=tmp_path,
    )  # fmt: skip
    assert status == 0, stderr
    assert "using the bundled model" not in stderr
    assert set(predicted(tmp_path / "mine.csv").values()) == {7}


def stop_serve(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return err


def check_serves_the_bundled_model(tmp_path: Path, env: dict) -> None:
    """serve without --ckpt_path: the drawing page, and the bundled model's answer to a test digit."""
    (path,), _ = write_pngs(tmp_path / "digits", 1)
    process, url = start_server(cwd=tmp_path, env=env)
    try:
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "<canvas" in page.text
        assert Path(httpx.get(url + "model", timeout=30).json()["checkpoint"]).name == "bundled.ckpt"
        reply = httpx.post(url + "predict", content=path.read_bytes(), headers={"Content-Type": "image/png"}, timeout=30)
    finally:
        err = stop_serve(process)
    assert ANNOUNCED in err
    assert reply.json()["prediction"] == int(mnist_rnn.load_model()(read_digit(path)[None]).argmax())


def test_serve_without_ckpt_path_answers_with_the_bundled_model(tmp_path):
    check_serves_the_bundled_model(tmp_path, subprocess_env())


def test_a_given_checkpoint_wins_over_the_bundled_one_in_serve_and_export(tmp_path, capsys):
    mine = own_checkpoint(tmp_path / "mine.ckpt", always=3)
    assert bundled.command_model(str(mine)).path == mine  # what serve and export load
    assert capsys.readouterr().err == ""
    assert bundled.command_model(None).path == bundled.BUNDLED_CKPT
    assert capsys.readouterr().err.startswith(ANNOUNCED)


def test_torch_hub_load_gives_the_clis_logits(tmp_path):
    model = torch.hub.load(str(REPO), "mnist_rnn", source="local")
    assert isinstance(model, torch.nn.Module) and not model.training
    images, _ = load_split("test")
    images = images[:1000]
    with torch.inference_mode():
        logits = model(images)
        as_float = model(images.float())
    assert logits.shape == (1000, 10) and logits.dtype == torch.float32
    assert torch.equal(as_float, logits)  # uint8 or float pixels in 0..255: the same input

    # The CLI's predict on the official test set (its CSV's first 1,000 rows are these images), in its precision.
    cli, _ = run_cli("predict", "--predictions.output", str(tmp_path / "p.csv"), cwd=tmp_path)
    with torch.inference_mode():
        cli_logits = cli.model(normalize(images, cli.datamodule.hparams.mean, cli.datamodule.hparams.std)).float()
    assert torch.equal(logits, cli_logits)
    with open(tmp_path / "p.csv", newline="") as file:
        rows = list(csv.DictReader(file))[:1000]
    assert [r["path"] for r in rows] == [f"test#{i}" for i in range(1000)]
    assert [int(r["prediction"]) for r in rows] == logits.argmax(dim=1).tolist()
    written = torch.tensor([[float(r[f"p{k}"]) for k in range(10)] for r in rows])
    assert (written - logits.softmax(dim=1)).abs().max() <= 5e-5 + 1e-7  # the CSV's 4 decimals, rounded
    with torch.inference_mode():
        assert torch.equal(mnist_rnn.load_model()(images), logits)  # the package's own one line


def test_the_loaded_model_names_a_wrong_input_shape():
    with pytest.raises(ValueError, match=r"pixels must be \(batch, 28, 28\), got \(28, 28\); add the batch axis"):
        mnist_rnn.load_model()(torch.zeros(28, 28, dtype=torch.uint8))


@pytest.mark.parametrize(
    "command, hidden, extra",
    [
        ("serve", "fastapi", "serve"),
        ("serve", "starlette", "serve"),  # imported by serve.py itself; its cached submodules outlive hiding it: asked for first
        ("export", "onnxscript", "export"),  # imported by torch.onnx deep inside an export: asked for first
        ("sweep", "optuna", "sweep"),
    ],
)
def test_a_command_without_its_extras_libraries_names_the_extra(monkeypatch, capsys, command, hidden, extra):
    monkeypatch.setitem(sys.modules, hidden, None)  # `import fastapi` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, f"mnist_rnn.{command}", raising=False)
    message = cli_error(capsys, command, "--output", "m.onnx") if command == "export" else cli_error(capsys, command)
    assert message == f'mnist-rnn {command} needs {hidden}, which is not installed; pip install "mnist-rnn[{extra}]"'


def test_fit_needs_none_of_the_extras(tmp_path):
    hide = "; ".join(f"sys.modules[{name!r}] = None" for name in EXTRA_LIBRARIES)
    script = f"import sys; {hide}; from mnist_rnn.commands import main; main(['fit', '-c', {TINY!r}, '--trainer.max_epochs', '1'])"
    fit = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt").is_file()
