"""The machine's choices: precision and threads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_rnn.errors import ConfigError
from mnist_rnn.run import hardware


def test_the_bf16_flags_agree_with_torchs_own_probe():
    # torch's own answer (private helpers of torch 2.14.1, read here only as a cross-check): the
    # kernel's flags, which hardware.native_bf16_cpu reads, must say the same on every CPU.
    torchs = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert hardware.native_bf16_cpu() == torchs
    assert ("avx2" in hardware.cpu_flags()) == (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


def test_small_batches_train_in_fp32_on_one_thread():
    assert hardware.auto_precision("cpu", 10) == "32-true"
    assert hardware.auto_threads(10) == 1


def test_large_batches_use_bf16_only_where_the_cpu_has_it():
    expected = "bf16-mixed" if hardware.native_bf16_cpu() else "32-true"
    assert hardware.auto_precision("cpu", 128) == expected


def test_the_kernel_probe_matches_what_was_measured_on_this_kind_of_cpu():
    # Measured with torch 2.14.1 (docs/precision.md): fp32 runs everywhere; a GRU runs in every
    # precision (autocast leaves a CPU GRU in fp32); an LSTM in bf16-mixed needs native bf16 (oneDNN).
    for cell in ("lstm", "gru"):
        assert hardware.cpu_kernel_runs(cell, "32-true")
        assert hardware.cpu_kernel_runs(cell, "bf16-true")
    assert hardware.cpu_kernel_runs("gru", "bf16-mixed")
    if hardware.native_bf16_cpu():
        assert hardware.cpu_kernel_runs("lstm", "bf16-mixed")
    if torch.backends.cpu.get_cpu_capability() == "AVX2":  # no AVX-512 at all: the CPU of issue 18
        assert not hardware.cpu_kernel_runs("lstm", "bf16-mixed")
        assert not hardware.cpu_kernel_runs("lstm", "bf16")  # Lightning's short name of bf16-mixed


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "16-mixed"])
def test_the_kernel_probe_leaves_the_seeded_generator_alone(cell, precision):
    # It runs once per process, in the first fit (after the seed): on a CPU with AVX512-BF16 its layer's init drew
    # from the global generator, so a process's first fit and its later ones started from other weights (issue 28).
    before = torch.get_rng_state()
    hardware.cpu_kernel_runs.__wrapped__(cell, precision)  # the probe itself, past the per-process cache
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("kernel_runs", [True, False])
def test_a_checkpoints_precision_is_kept_where_it_runs_else_fp32_with_a_reason(monkeypatch, kernel_runs):
    # Both kinds of CPU, whichever this one is: the probe is simulated.
    monkeypatch.setattr(hardware, "cpu_kernel_runs", lambda cell, precision: kernel_runs or precision == "32-true")
    precision, note = hardware.evaluation_precision("bf16-mixed", "cpu", "lstm")
    if kernel_runs:
        assert (precision, note) == ("bf16-mixed", None)
    else:
        assert precision == "32-true"
        assert note.startswith("using 32-true: the checkpoint was trained in bf16-mixed, which this CPU (")
        assert note.endswith(") cannot run for an LSTM (it has no AVX512-BF16 or AMX); see docs/precision.md")
    assert hardware.evaluation_precision("32-true", "cpu", "lstm") == ("32-true", None)


def test_an_impossible_explicit_precision_is_refused_and_a_possible_one_passes(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_kernel_runs", lambda cell, precision: cell == "gru" or precision == "32-true")
    with pytest.raises(ConfigError, match=r"^--trainer.precision 16-mixed cannot run an LSTM on this CPU .*no AVX512-FP16 or AMX-FP16"):
        hardware.check_precision("16-mixed", "cpu", "lstm")
    hardware.check_precision("bf16-mixed", "cpu", "gru")
    hardware.check_precision("32-true", "cpu", "lstm")
    # A GPU run is not judged by the CPU's kernels.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    hardware.check_precision("bf16-mixed", "auto", "lstm")
    hardware.check_precision("bf16-mixed", "gpu", "lstm")


def test_784_step_sequences_train_in_fp32():
    # docs/precision.md: bf16 was only shown to lose nothing on the 28-step rows model.
    for sequence in ("pixels", "permuted"):
        assert hardware.auto_precision("cpu", 128, sequence) == "32-true"


def test_without_a_gpu_the_per_step_nvml_probe_is_turned_off():
    # In a child process: the setting is the process's environment.
    code = (
        "import os, lightning, torch\n"
        "print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'))\n"  # Lightning sets it on import (2.6.6)
        "from mnist_rnn.run.hardware import skip_gpu_probe_without_gpu\n"
        "skip_gpu_probe_without_gpu()\n"
        "print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'), torch.cuda.device_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "1"  # when this fails, Lightning no longer sets it and skip_gpu_probe_without_gpu can go
    gpus = int(out[1].split()[1])
    assert out[1].split()[0] == ("0" if gpus == 0 else "1")  # with a GPU, Lightning's setting stays


def test_hardware_a_run_asks_for_that_is_not_there_is_one_line(tmp_path, monkeypatch, capsys):
    # Issue 23: each ended in a stack trace (MisconfigurationException, a RuntimeError) or was taken silently.
    from tests.conftest import TINY, cli_error

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flags in (["-c", "gpu"], ["--trainer.accelerator", "gpu"], ["--trainer.accelerator", "cuda"]):
        message = cli_error(capsys, "fit", "-c", TINY, *flags)
        assert message.endswith("asks for a GPU, but torch sees no CUDA device on this machine; pass --trainer.accelerator"
                                " cpu (or auto, which uses a GPU where there is one)"), message  # fmt: skip
    for threads in ("0", "-3"):
        assert cli_error(capsys, "fit", "-c", TINY, "--threads", threads) == (  # its type, Optional[PositiveInt]
            f"--threads {threads} is not valid here: it takes PositiveInt, null (options: mnist-rnn fit --help)"
        )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cli_error(capsys, "fit", "-c", TINY, "--trainer.accelerator", "gpu", "--trainer.devices", "4") == (
        "--trainer.devices 4 asks for 4 GPUs, but this machine has 1; pass --trainer.devices 1 or fewer"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "native_bf16, expected", [(True, "bf16-mixed"), (False, "32-true")], ids=["avx512_bf16", "avx2_only"]
)
def test_a_fit_on_each_kind_of_cpu_trains_in_its_precision_and_resumes_in_it(tmp_path, monkeypatch, native_bf16, expected):
    # Both kinds on whichever CPU runs the suite (issue 18): the flags and the kernel probe are simulated. A CPU
    # without AVX512-BF16 has no bf16 LSTM kernel (docs/precision.md), so the probe answers only 32-true there.
    from mnist_rnn.commands import main
    from mnist_rnn.run.checkpoints import read_checkpoint
    from tests.conftest import TINY, run_cli

    if native_bf16 and not hardware.cpu_kernel_runs("lstm", "bf16-mixed"):
        pytest.skip("bf16-mixed needs the kernel this CPU lacks: the branch runs on CPUs with AVX512-BF16")
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: native_bf16)
    monkeypatch.setattr(hardware, "cpu_kernel_runs", lambda cell, precision: native_bf16 or precision == "32-true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    sender = json.dumps({"class_path": "tests.interrupts.SendSignal", "init_args": {"step": 24}})
    with pytest.raises(SystemExit):  # stopped after step 25, in epoch 2
        main(["fit", "-c", TINY, f"--trainer.callbacks+={sender}"])
    last = "runs/tiny/version_0/checkpoints/last.ckpt"
    assert read_checkpoint(Path(last))["precision"] == expected
    cli, out = run_cli("fit", "-c", TINY, "--ckpt_path", "last", cwd=tmp_path)
    assert str(cli.trainer.precision) == expected and cli.trainer.global_step == 40
    assert f"from {last} (epoch 2, after step 25)" in out
