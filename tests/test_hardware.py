"""The machine's choices: precision and threads."""

import subprocess
import sys

import torch

from mnist_rnn import hardware


def test_the_private_bf16_probes_still_exist():
    # hardware.native_bf16_cpu relies on these private torch helpers (checked with torch 2.14.1).
    assert callable(torch.cpu._is_avx512_bf16_supported) and callable(torch.cpu._is_amx_tile_supported)
    assert isinstance(hardware.native_bf16_cpu(), bool)


def test_small_batches_train_in_fp32_on_one_thread():
    assert hardware.auto_precision("cpu", 10) == "32-true"
    assert hardware.auto_threads(10) == 1


def test_large_batches_use_bf16_only_where_the_cpu_has_it():
    expected = "bf16-mixed" if hardware.native_bf16_cpu() else "32-true"
    assert hardware.auto_precision("cpu", 128) == expected


def test_784_step_sequences_train_in_fp32():
    # docs/precision.md: bf16 was only shown to lose nothing on the 28-step rows model.
    for sequence in ("pixels", "permuted"):
        assert hardware.auto_precision("cpu", 128, sequence) == "32-true"


def test_without_a_gpu_the_per_step_nvml_probe_is_turned_off():
    # In a child process: the setting is the process's environment.
    code = (
        "import os, lightning, torch\n"
        "print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'))\n"  # Lightning sets it on import (2.6.6)
        "from mnist_rnn.hardware import skip_gpu_probe_without_gpu\n"
        "skip_gpu_probe_without_gpu()\n"
        "print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'), torch.cuda.device_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "1"  # when this fails, Lightning no longer sets it and skip_gpu_probe_without_gpu can go
    gpus = int(out[1].split()[1])
    assert out[1].split()[0] == ("0" if gpus == 0 else "1")  # with a GPU, Lightning's setting stays
