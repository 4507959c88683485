"""benchmarks/gpu_check.py: its --smoke mode runs every step in seconds on the CPU, so the one call on a GPU has no surprises."""

import json

import pytest
import torch
from lightning.pytorch.callbacks import Timer

from benchmarks import gpu_check
from tests.conftest import run_cli


def test_smoke_mode_writes_every_figure_the_report_and_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "gpu-check"
    results = gpu_check.main(["--smoke", "--out", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads((out / gpu_check.JSON).read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["smoke"] is True and saved["budget_s"] == gpu_check.SMOKE_BUDGET_S
    assert saved["command"] == ["python", "-m", "benchmarks.gpu_check", "--smoke", "--out", str(out)]

    machine = saved["machine"]
    assert set(machine) == {"nvidia_smi", "device", "torch", "cuda", "cudnn", "lightning", "python",
                            "precision_null_picks", "startup_s", "cuda_init_s"}  # fmt: skip
    assert machine["torch"] == torch.__version__ and machine["nvidia_smi"]
    assert set(machine["precision_null_picks"].values()) <= {"bf16-mixed", "32-true"}
    pytest_gpu = saved["pytest_gpu"]
    assert pytest_gpu["command"].startswith("python -m pytest -m gpu ") and "tests/test_distributed.py" in pytest_gpu["command"]
    if not torch.cuda.is_available():
        assert pytest_gpu["returncode"] is None and pytest_gpu["summary"].startswith("not run: --smoke without a CUDA device")

    assert list(saved["fits"]) == list(gpu_check.FITS)
    for name, fit in saved["fits"].items():
        assert set(fit) == set(gpu_check.FIT_KEYS), fit.get("error")
        assert fit["config"] == gpu_check.FITS[name][0] and fit["hidden"] == 16  # the smoke scale reached every fit
        assert fit["wall_with_startup_s"] >= fit["wall_s"] > 0
        assert len(fit["epoch_s"]) == 2 and len(fit["val_acc_by_epoch"]) == 2  # max_epochs 2, validated after each
        assert fit["best_val_acc"] == pytest.approx(max(fit["val_acc_by_epoch"]))
        assert fit["steady_samples_per_s"] > 0 and fit["epoch_samples_per_s"] > 0 and 0 <= fit["test_acc"] <= 1
        assert ("--trainer.max_time" in fit["flags"]) == (name in gpu_check.BUDGETED)
    assert saved["fits"]["smnist"]["flags"][:2] == ["--trainer.max_time", "00:00:00:02"]
    # The pixel-by-pixel configs stay in fp32 (precision: null keeps 784-step sequences there).
    assert saved["fits"]["smnist"]["precision"] == saved["fits"]["pmnist"]["precision"] == "32-true"

    assert list(saved["bare"]) == list(gpu_check.BARE)
    for name, bare in saved["bare"].items():
        fit = saved["fits"][name]
        assert "error" not in bare, bare["error"]
        assert (bare["batch"], bare["hidden"], bare["precision"], bare["device"]) == (fit["batch"], 16, fit["precision"], fit["device"])
        assert bare["samples_per_s"] > 0 and bare["fit_over_bare"] == pytest.approx(fit["steady_samples_per_s"] / bare["samples_per_s"])

    # The copied checkpoint is the one whose test accuracy the check reported: testing the copy gives it again.
    ckpt = out / gpu_check.CHECKPOINT
    assert saved["checkpoint"]["file"] == ckpt.name and saved["checkpoint"]["test_acc"] == saved["fits"]["default"]["test_acc"]
    assert saved["checkpoint"]["check_with"] == f"mnist-rnn test --ckpt_path {ckpt} --trainer.accelerator cpu"
    smoke_test = ["--trainer.limit_test_batches", "2", "--data.eval_batch_size", "100"]  # as the smoke fits tested it
    cli, _ = run_cli("test", "--ckpt_path", str(ckpt), *smoke_test, cwd=tmp_path)
    assert float(cli.trainer.callback_metrics["test/acc"]) == pytest.approx(saved["checkpoint"]["test_acc"])

    report = (out / gpu_check.REPORT).read_text()
    assert report.strip() in printed and "(--smoke: figures mean nothing)" in report
    for config in ("default.yaml", "gpu.yaml", "smnist.yaml for 2 s", "pmnist.yaml for 2 s"):
        assert f"fit -c {config} on cpu" in report
    assert "pytest -m gpu" in report and "bare loop beside fit -c gpu.yaml" in report and "val/acc after each epoch" in report


def test_without_cuda_only_smoke_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "needs a CUDA device, and torch sees none; pass --smoke" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_budget_under_a_second_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--smoke", "--out", str(tmp_path / "out"), "--budget", "0"])
    assert exit_info.value.code == 2 and "--budget must be at least 1 second, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_earlier_results_are_not_overwritten(tmp_path, capsys):
    (tmp_path / gpu_check.JSON).write_text("keep me")
    with pytest.raises(SystemExit):
        gpu_check.main(["--smoke", "--out", str(tmp_path)])
    assert (tmp_path / gpu_check.JSON).read_text() == "keep me"
    assert "holds a gpu_check.json already" in capsys.readouterr().err


def test_a_failed_step_is_recorded_and_reported_and_the_steps_after_it_run(capsys):
    def out_of_memory(batch):
        raise RuntimeError(f"CUDA out of memory at batch {batch}")

    entry = gpu_check.guarded(out_of_memory, 1024)
    assert entry == {"error": "RuntimeError: CUDA out of memory at batch 1024"}
    assert "Traceback" in capsys.readouterr().err  # the whole error, in the call's log
    machine = dict.fromkeys(["nvidia_smi", "device", "torch", "cuda", "cudnn", "lightning", "python", "precision_null_picks"], "x")
    results = {"date": "today", "smoke": False, "command": ["python"], "budget_s": 120,
               "machine": {**machine, "startup_s": 1.0, "cuda_init_s": 0.5}, "fits": {"gpu": entry}, "bare": {"gpu": entry}}  # fmt: skip
    assert gpu_check.failed(results) == ["fits gpu", "bare gpu"]
    report = gpu_check.report(results)
    assert "fit -c gpu.yaml: failed: RuntimeError: CUDA out of memory at batch 1024" in report
    assert "bare loop beside fit -c gpu.yaml: failed: RuntimeError" in report


@pytest.mark.parametrize("seconds", [2, 120, 3599, 90061])
def test_budget_is_a_max_time_lightning_reads_back(seconds):
    assert Timer(duration=gpu_check.max_time(seconds)).time_remaining() == seconds


# Slow: a child pytest that imports torch and lightning (8 to 10 s on the 2-core CPU).
@pytest.mark.slow
def test_pytest_step_runs_the_gpu_tests_and_reports_their_summary():
    entry = gpu_check.pytest_gpu(run=True)
    assert entry["returncode"] == 0, entry["tail"]
    assert ("passed" if torch.cuda.is_available() else "skipped") in entry["summary"]
    assert entry["wall_s"] > 0 and entry["tail"][-1] == entry["summary"]
