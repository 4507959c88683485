"""What the machine decides: the training precision and the number of CPU threads.

Used by the CLI when `trainer.precision` or `threads` is null, when a checkpoint's training
precision or an explicit `--trainer.precision` may not run here, and by the benchmark, so that
all of them make the same choice.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from mnist_rnn.errors import ConfigError

# Lightning's model summary cannot size bf16 weights; the parameter count it shows is right.
warnings.filterwarnings("ignore", message=r".*is not supported by the model summary.*")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), not by conversion.

    Read from the kernel's flags: torch has no public query for these instruction sets. Where
    they cannot be read (not Linux), the answer is no, so `precision: null` keeps fp32, which runs
    everywhere.
    """
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_name() -> str:
    """The processor's model name, as lscpu shows it (what a figure or a refusal names)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    """Whether a run with this `trainer.accelerator` computes on the CPU."""
    return str(accelerator) == "cpu" or (str(accelerator) == "auto" and not torch.cuda.is_available())


@functools.lru_cache(maxsize=None)
def cpu_kernel_runs(cell: str, precision: str) -> bool:
    """Whether this CPU has a kernel for `cell` (lstm or gru) in `precision`: one tiny step, tried.

    Measured with torch 2.14.1 on an AMD EPYC with AVX2 and no AVX512-BF16 (docs/precision.md):
    under autocast (bf16-mixed, 16-mixed) torch hands the LSTM to oneDNN, which has no
    low-precision LSTM kernel on such a CPU ("could not create a primitive descriptor for the LSTM
    forward propagation primitive"); bf16-true and 16-true LSTMs, and GRUs in every precision
    (autocast leaves a CPU GRU in fp32), run. Trying costs a few milliseconds, once per process,
    and stays right on CPUs and torch releases that were not measured.
    """
    precision = _LOW_PRECISION.get(str(precision))
    if precision is None:
        return True  # fp32 and fp64 kernels exist everywhere
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    layer = torch.nn.LSTM(2, 2) if cell == "lstm" else torch.nn.GRU(2, 2)
    x = torch.ones(3, 1, 2, requires_grad=True)
    try:
        if precision.endswith("-true"):
            layer.to(dtype)(x.to(dtype))[0].float().sum().backward()
        else:
            with torch.autocast("cpu", dtype=dtype):
                out = layer(x)[0]
            out.float().sum().backward()
    except RuntimeError:
        return False
    return True


def missing_feature(precision: str) -> str:
    """The instruction sets whose absence leaves a CPU without native kernels of a precision."""
    if str(precision).startswith("bf16"):
        return "AVX512-BF16 or AMX"
    return "AVX512-FP16 or AMX-FP16"


def _a(cell: str) -> str:
    return f"an {cell.upper()}" if cell == "lstm" else f"a {cell.upper()}"


def precision_runs(precision: Any, accelerator: Any, cell: str) -> bool:
    """Whether `precision` runs a `cell` model on this machine (GPUs are not probed here)."""
    return not on_cpu(accelerator) or cpu_kernel_runs(cell, str(precision))


def check_precision(precision: Any, accelerator: Any, cell: str) -> None:
    """An explicit `--trainer.precision` this CPU cannot run is refused in one line, before any run starts."""
    if precision_runs(precision, accelerator, cell):
        return
    raise ConfigError(
        f"--trainer.precision {precision} cannot run {_a(cell)} on this CPU ({cpu_name()}): it has no"
        f" {missing_feature(str(precision))}, and torch has no {precision} {cell.upper()} kernel without them;"
        " pass --trainer.precision 32-true, or leave it out (null picks what this machine runs)"
    )


def evaluation_precision(trained: str, accelerator: Any, cell: str) -> tuple[str, Optional[str]]:
    """The precision to evaluate or resume a checkpoint in, and a line to print when it is not `trained`.

    The checkpoint's training precision where this machine runs it; else fp32, the nearest that
    runs everywhere (a bf16-mixed checkpoint's weights are fp32 already; docs/precision.md
    measures what evaluating it in fp32 changes).
    """
    if precision_runs(trained, accelerator, cell):
        return trained, None
    return "32-true", (
        f"using 32-true: the checkpoint was trained in {trained}, which this CPU ({cpu_name()}) cannot run for"
        f" {_a(cell)} (it has no {missing_feature(trained)}); see docs/precision.md"
    )


def auto_precision(accelerator: Any, batch_size: int, sequence: str = "rows", cell: str = "lstm") -> str:
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
        return "bf16-mixed" if native_bf16_cpu() and cpu_kernel_runs(cell, "bf16-mixed") else "32-true"
    return "32-true"


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_threads(batch_size: int) -> int:
    """Threads for torch on the CPU.

    Small batches are bound by per-step overhead; a second thread gains little there and
    collapses the step rate when another process is busy on that core. Large batches are bound
    by matrix work and use every core this process may run on.
    """
    if batch_size < 32:
        return 1
    return cores()


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


def check_devices(accelerator: Any, devices: Any, threads: Optional[int], strategy: Any = "auto") -> None:
    """Hardware a run asks for that this machine lacks is one line, before anything is built."""
    from lightning.pytorch.strategies import StrategyRegistry

    if isinstance(strategy, str) and strategy != "auto" and strategy not in StrategyRegistry.available_strategies():
        raise ConfigError(f"--trainer.strategy {strategy} is not a strategy Lightning knows; pass auto, ddp or ddp_spawn")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}; or leave it out (null picks them from the batch size)")
    name = str(accelerator)
    if isinstance(accelerator, str) and name not in ("auto", "cpu", "gpu", "cuda", "mps", "tpu"):
        raise ConfigError(f"--trainer.accelerator {name} is not an accelerator; pass cpu, gpu or auto")
    lacks = {"mps": not torch.backends.mps.is_available(), "tpu": importlib.util.find_spec("torch_xla") is None}
    if lacks.get(name):
        raise ConfigError(f"--trainer.accelerator {name} asks for {'an Apple GPU' if name == 'mps' else 'a TPU (torch_xla)'},"
                          " which this machine lacks; pass --trainer.accelerator cpu (or auto)")  # fmt: skip
    text = str(devices).strip()
    count = int(text) if text.lstrip("-").isdigit() else None  # "-1": every GPU; "0,1" and lists: those GPUs
    if text != "auto" and not isinstance(devices, (list, tuple)) and not ("," in text and not on_cpu(accelerator)):
        if count is None or count < 1 and (count != -1 or on_cpu(accelerator)):
            raise ConfigError(f"--trainer.devices {devices} is not a number of devices; pass a count of at least 1, or auto")
    if str(accelerator) in ("gpu", "cuda"):
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
