"""What the machine decides: the precision and the CPU threads (`null` settings), whether a precision runs here,
and the hardware a run asks for; the CLI and the benchmark share these, so both make the same choice."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
import re
from pathlib import Path
from typing import Any, Optional

import torch

from mnist_rnn.errors import ConfigError


def cpuinfo(field: str) -> Optional[str]:
    """The value of the first `field` line of /proc/cpuinfo; None where there is none (not Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1]
    return None


def cpu_flags() -> set[str]:
    return set((cpuinfo("flags") or "").split())


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), read from the kernel's flags: torch has no
    public query for these. Unknown (not Linux) is no, so `precision: null` keeps fp32, which runs everywhere."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_name() -> str:
    """The processor's model name, as lscpu shows it (what a figure or a refusal names)."""
    name = cpuinfo("model name")
    return name.strip() if name is not None else platform.processor() or platform.machine()


def out_of_memory(err: BaseException, data: Any) -> Optional[ConfigError]:
    """torch's allocation failure (CPU or GPU) as one line naming the batch sizes of `data`; None for any other error."""
    text = " ".join(str(err).split())
    if not isinstance(err, torch.OutOfMemoryError) and not (isinstance(err, RuntimeError) and "can't allocate memory" in text):
        return None
    tried = re.search(r"[Tt]ried to allocate [^.;(]*", text)
    return ConfigError(
        f"out of memory ({tried.group(0).strip() if tried else text[:80]}) at --data.batch_size {data.batch_size}"
        f" (evaluation: --data.eval_batch_size {data.eval_batch_size}); pass smaller ones, e.g. --data.batch_size"
        f" {max(1, data.batch_size // 2)} --data.eval_batch_size {max(1, data.eval_batch_size // 2)}, or free memory"
    )


# Lightning's short names of the precisions whose CPU kernels can be missing.
_LOW_PRECISION = {"bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed", "bf16-true": "bf16-true",
                  "16": "16-mixed", "16-mixed": "16-mixed", "16-true": "16-true"}  # fmt: skip


def on_cpu(accelerator: Any) -> bool:
    return str(accelerator) == "cpu" or (str(accelerator) == "auto" and not torch.cuda.is_available())


@functools.lru_cache(maxsize=None)
def cpu_kernel_runs(cell: str, precision: str) -> bool:
    """Whether this CPU has a kernel for `cell` (lstm or gru) in `precision`: one tiny step, tried (a few ms, once
    per process, and right on CPUs and torch releases not measured). Measured with torch 2.14.1 on an AVX2 AMD EPYC
    without AVX512-BF16 (docs/precision.md): under autocast torch hands the LSTM to oneDNN, which has no low-precision
    LSTM kernel there ("could not create a primitive descriptor for the LSTM forward propagation primitive");
    -true LSTMs, and GRUs in every precision (autocast leaves a CPU GRU in fp32), run."""
    precision = _LOW_PRECISION.get(str(precision))
    if precision is None:
        return True  # fp32 and fp64 kernels exist everywhere
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    # The layer's random init must not move the run's seeded generator: only the first run of a process probes.
    with torch.random.fork_rng(devices=[]):
        layer = torch.nn.LSTM(2, 2) if cell == "lstm" else torch.nn.GRU(2, 2)
    x = torch.ones(3, 1, 2, requires_grad=True)
    try:
        if precision.endswith("-true"):
            out = layer.to(dtype)(x.to(dtype))[0]
        else:
            with torch.autocast("cpu", dtype=dtype):
                out = layer(x)[0]
        out.float().sum().backward()
    except RuntimeError:
        return False
    return True


def missing_feature(precision: str) -> str:
    """The instruction sets whose absence leaves a CPU without native kernels of a precision."""
    return "AVX512-BF16 or AMX" if str(precision).startswith("bf16") else "AVX512-FP16 or AMX-FP16"


def _a(cell: str) -> str:
    return f"an {cell.upper()}" if cell == "lstm" else f"a {cell.upper()}"


def precision_runs(precision: Any, accelerator: Any, cell: str) -> bool:
    """Whether `precision` runs a `cell` model on this machine (GPUs are not probed here)."""
    return not on_cpu(accelerator) or cpu_kernel_runs(cell, str(precision))


def check_precision(precision: Any, accelerator: Any, cell: str) -> None:
    """An explicit `--trainer.precision` this CPU cannot run is refused in one line, before any run starts."""
    if not precision_runs(precision, accelerator, cell):
        raise ConfigError(
            f"--trainer.precision {precision} cannot run {_a(cell)} on this CPU ({cpu_name()}): it has no"
            f" {missing_feature(str(precision))}, and torch has no {precision} {cell.upper()} kernel without them;"
            " pass --trainer.precision 32-true, or leave it out (null picks what this machine runs)"
        )


def evaluation_precision(trained: str, accelerator: Any, cell: str) -> tuple[str, Optional[str]]:
    """A checkpoint's training precision where this machine runs it, else fp32 with a line to print: the nearest
    that runs everywhere (bf16-mixed weights are fp32 already; docs/precision.md measures what that changes)."""
    if precision_runs(trained, accelerator, cell):
        return trained, None
    return "32-true", (
        f"using 32-true: the checkpoint was trained in {trained}, which this CPU ({cpu_name()}) cannot run for"
        f" {_a(cell)} (it has no {missing_feature(trained)}); see docs/precision.md"
    )


def auto_precision(accelerator: Any, batch_size: int, sequence: str = "rows", cell: str = "lstm") -> str:
    """bf16-mixed only where it was measured to lose nothing and is computed natively; else 32-true.

    Rows (28 steps) only: 784-step sequences stay fp32 (docs/precision.md, with the comparison over seeds).
    GPUs: bf16 where the GPU has it in hardware (not emulated, as on a T4 or V100). CPUs: at batch 32 or more;
    below, a step is bound by per-op overhead and autocast's casts slow it (LSTM(50) at batch 10: 12% slower).
    """
    if sequence != "rows":
        return "32-true"
    if str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "32-true"
    if str(accelerator) in ("auto", "cpu") and batch_size >= 32:
        return "bf16-mixed" if native_bf16_cpu() and cpu_kernel_runs(cell, "bf16-mixed") else "32-true"
    return "32-true"


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_threads(batch_size: int) -> int:
    """Threads for torch on the CPU. Below batch 32 a step is bound by its overhead: a second thread gains little
    and collapses the step rate when another process is busy on that core. Larger batches use every core."""
    return 1 if batch_size < 32 else cores()


def skip_gpu_probe_without_gpu() -> None:
    """On a machine with no NVIDIA GPU, stop torch from probing for one at every optimizer step.

    Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (lightning 2.6.6, fabric/__init__.py) so that asking
    for CUDA cannot initialize it before a fork; a CUDA build of torch training on the CPU then asks NVML at every
    Adam step (torch 2.14.1, Optimizer._accelerator_graph_capture_health_check): 158 us a step instead of 39 for a
    10-weight Adam, a tenth of a seed-model step. With no GPU there is no CUDA to protect: torch's default check.
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def check_devices(accelerator: Any, devices: Any, strategy: Any = "auto") -> None:
    """Hardware a run asks for that this machine lacks is one line, before anything is built. Where Lightning's own
    refusal is one clear line (mps without an Apple GPU: a MisconfigurationException), it is left to Lightning; these
    are the ones it raises as a plain ValueError or TypeError, or words unclearly (docs/layout.md, Hand checks kept)."""
    from lightning.pytorch.strategies import StrategyRegistry

    if isinstance(strategy, str) and strategy != "auto" and strategy not in StrategyRegistry.available_strategies():
        raise ConfigError(f"--trainer.strategy {strategy} is not a strategy Lightning knows; pass auto, ddp or ddp_spawn")
    name = str(accelerator)
    if isinstance(accelerator, str) and name not in ("auto", "cpu", "gpu", "cuda", "mps", "tpu"):
        raise ConfigError(f"--trainer.accelerator {name} is not an accelerator; pass cpu, gpu or auto")
    if name == "tpu" and importlib.util.find_spec("torch_xla") is None:  # Lightning: a ModuleNotFoundError
        raise ConfigError("--trainer.accelerator tpu asks for a TPU (torch_xla), which this machine lacks;"
                          " pass --trainer.accelerator cpu (or auto)")  # fmt: skip
    text = str(devices).strip()
    count = int(text) if text.lstrip("-").isdigit() else None  # "-1": every GPU; "0,1" and lists: those GPUs
    if text != "auto" and not isinstance(devices, (list, tuple)) and not ("," in text and not on_cpu(accelerator)):
        if count is None or count < 1 and (count != -1 or on_cpu(accelerator)):
            raise ConfigError(f"--trainer.devices {devices} is not a number of devices; pass a count of at least 1, or auto")
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--trainer.accelerator {accelerator} asks for a GPU, but torch sees no CUDA device on this machine;"
                " pass --trainer.accelerator cpu (or auto, which uses a GPU where there is one)"
            )
        if isinstance(devices, str) and devices.isdigit():
            devices = int(devices)  # the command line gives "4"; "auto" and "-1" mean every GPU there is
        wanted = devices if isinstance(devices, int) and devices > 0 else len(devices) if isinstance(devices, (list, tuple)) else None
        if wanted is not None and wanted > torch.cuda.device_count():
            raise ConfigError(
                f"--trainer.devices {devices} asks for {wanted} GPUs, but this machine has {torch.cuda.device_count()};"
                f" pass --trainer.devices {torch.cuda.device_count()} or fewer"
            )
