"""serve, export and sweep as typed functions: a signature is the command's options, its docstring their help
(options.command_parser builds the parser from them). A body imports its command's module, which brings torch and
the command's extra, only when the command runs: this module imports neither, so every `--help` answers at once."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from types import ModuleType
from typing import Optional

from mnist_rnn.commands.options import Count, constrained
from mnist_rnn.errors import MissingExtraError

# The libraries each command beyond the core needs, and the extra that installs them.
EXTRAS = {
    "serve": ("fastapi", "starlette", "uvicorn", "python_multipart"),  # serve.py imports starlette itself too
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "sweep": ("optuna", "optuna_integration"),
}
CHECK_IMAGES = 10_000  # export checks the exported model on the official test set, all of it by default

Port = constrained("Port", int, lambda n: 0 <= n <= 65535, "an integer in 0..65535")
Megabytes = constrained("Megabytes", float, lambda n: 0 < n < math.inf, "a finite number above 0")
TestImages = constrained("TestImages", int, lambda n: 1 <= n <= CHECK_IMAGES, f"an integer in 1..{CHECK_IMAGES}")


def serve(ckpt_path: Optional[str] = None, host: str = "127.0.0.1", port: Port = 8000, max_upload_mb: Megabytes = 10.0) -> None:
    """Serve a checkpoint's model to draw on in the browser, with a JSON API.

    Args:
        ckpt_path: checkpoint written by `mnist-rnn fit`; null: the bundled model
        host: address to listen on; 127.0.0.1: this machine only, 0.0.0.0: every interface
        port: port to listen on; 0 picks a free one
        max_upload_mb: largest image accepted, in MB; a larger one gets 413
    """
    command_module("serve").run(ckpt_path=ckpt_path, host=host, port=port, max_upload_mb=max_upload_mb)


def export(*, ckpt_path: Optional[str] = None, output: str, pt2: Optional[str] = None, overwrite: bool = False,
           check_images: TestImages = CHECK_IMAGES) -> None:  # fmt: skip
    """Export a checkpoint's model to ONNX (and torch.export), checked against PyTorch.

    Args:
        ckpt_path: checkpoint written by `mnist-rnn fit`; null: the bundled model
        output: the ONNX file to write, e.g. model.onnx
        pt2: also write a torch.export program (.pt2) here
        overwrite: replace --output (and --pt2) if they exist
        check_images: official test images the exported model is checked on (the first N)
    """
    command_module("export").run(ckpt_path=ckpt_path, output=output, pt2=pt2, overwrite=overwrite, check_images=check_images)


def sweep(config: str, resume: bool = False, parallel: Count = 1, storage: Optional[str] = None) -> None:
    """One fit config over seeds, or an Optuna search (docs/sweep.md).

    Args:
        config: the sweep file, e.g. conf/sweeps/seeds.yaml
        resume: continue the sweep in runs/<name>/ after a stop or a kill
        parallel: N worker processes, each with cores // N threads
        storage: an Optuna RDB URL shared by machines; null: SQLite in runs/<name>/
    """
    command_module("sweep").run(config=config, resume=resume, parallel=parallel, storage=storage)


COMMANDS = {"serve": serve, "export": export, "sweep": sweep}
ALIASES = {"sweep": {"config": ("-c", "--config")}}  # option strings other than --<parameter>


def missing_extra(name: str, missing: list[str]) -> MissingExtraError:
    return MissingExtraError(
        f"mnist-rnn {name} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed;"
        f' pip install "mnist-rnn[{name}]"'
    )


def installed(library: str) -> bool:
    if library in sys.modules:  # imported already (optuna_integration's lazy module has no __spec__ then)
        return sys.modules[library] is not None  # None: hidden on purpose (the tests' import hook)
    return importlib.util.find_spec(library) is not None


def command_module(name: str) -> ModuleType:
    """serve.py, export.py or sweep.py; a library it imports that is not installed is one line naming the extra."""
    try:
        return importlib.import_module(f"mnist_rnn.commands.{name}")
    except ModuleNotFoundError as err:
        if not err.name or err.name.split(".")[0] == "mnist_rnn":
            raise
        raise missing_extra(name, [err.name.split(".")[0]]) from None
