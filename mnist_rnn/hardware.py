"""What the machine decides: the training precision and the number of CPU threads.

Used by the CLI when `trainer.precision` or `threads` is null, and by the benchmark, so that both
make the same choice.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

# Lightning's model summary cannot size bf16 weights; the parameter count it shows is right.
warnings.filterwarnings("ignore", message=r".*is not supported by the model summary.*")


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), not by conversion."""
    # Private torch helpers (checked with torch 2.14.1): torch has no public query for these
    # instruction sets. tests/test_hardware.py fails if they disappear.
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def auto_precision(accelerator: Any, batch_size: int, sequence: str = "rows") -> str:
    """bf16-mixed only where it was measured to lose nothing and to be computed natively; else 32-true.

    - Rows (28 steps) at batch 32 or more: bf16 on hardware that computes it natively (docs/precision.md
      has the comparison over seeds). Below batch 32 on a CPU a step is bound by per-op overhead and
      autocast's casts make it slower (measured: LSTM(50) at batch 10 ran 12% slower in bf16).
    - Pixels and permuted pixels (784 steps): fp32, see docs/precision.md.
    - GPUs: bf16 only where the GPU has it in hardware (not emulated, as on a T4 or V100).
    """
    if sequence != "rows":
        return "32-true"
    on_gpu = str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "32-true"
    if str(accelerator) in ("auto", "cpu") and batch_size >= 32:
        return "bf16-mixed" if native_bf16_cpu() else "32-true"
    return "32-true"


def auto_threads(batch_size: int) -> int:
    """Threads for torch on the CPU.

    Small batches are bound by per-step overhead; a second thread gains little there and
    collapses the step rate when another process is busy on that core. Large batches are bound
    by matrix work and use every core this process may run on.
    """
    if batch_size < 32:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def skip_gpu_probe_without_gpu() -> None:
    """On a machine with no NVIDIA GPU, stop torch from probing for one at every optimizer step.

    Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (lightning 2.6.6, lightning/fabric/__init__.py),
    so that asking whether CUDA is available cannot initialize CUDA before a fork. With a CUDA
    build of torch that never initializes CUDA (training on the CPU), every Adam step then asks
    NVML afresh (torch 2.14.1, Optimizer._accelerator_graph_capture_health_check): measured
    158 us a step instead of 39 for a 10-weight Adam, about a tenth of a step of the seed model.
    Where NVML finds no GPU there is no CUDA to protect, and torch's default check is used instead.
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
