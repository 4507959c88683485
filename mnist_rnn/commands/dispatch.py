"""The `mnist-rnn` command: which subcommand runs, the options of serve, export and sweep, and one-line errors.

Nothing here imports torch or Lightning, so every `--help` answers at once. fit/validate/test/predict are
LightningCLI's (cli.py); serve, export and sweep are argparse commands run by their own module, behind an extra.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
import threading
from typing import NoReturn, Optional

from mnist_rnn.errors import MissingExtraError, MnistRnnError, TrainingStopped, disk_full, is_disk_full, usage_error

LIGHTNING_COMMANDS = {
    "fit": "Train a model (conf/default.yaml unless -c FILE), with checkpoints and TensorBoard logs.",
    "validate": "Score a checkpoint (default: the bundled model) on the validation split.",
    "test": "Score a checkpoint (default: the bundled model) on MNIST's official test set.",
    "predict": "Predict digits in your own image files; writes a CSV.",
}
OWN_COMMANDS = {
    "serve": "Serve a checkpoint's model to draw on in the browser, with a JSON API.",
    "export": "Export a checkpoint's model to ONNX (and torch.export), checked against PyTorch.",
    "sweep": "One fit config over seeds, or an Optuna search (docs/sweep.md).",
}
# The libraries each command beyond the core needs, and the extra that installs them.
EXTRAS = {
    "serve": ("fastapi", "starlette", "uvicorn", "python_multipart"),  # serve.py imports starlette itself too
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "sweep": ("optuna", "optuna_integration"),
}
CHECK_IMAGES = 10_000  # export checks the exported model on the official test set, all of it by default


class CommandParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        usage_error(message, self.prog)


def add_options(name: str, parser: argparse.ArgumentParser) -> None:
    if name in ("serve", "export"):
        parser.add_argument("--ckpt_path", default=None, help="checkpoint written by `mnist-rnn fit` (default: the bundled model)")
    if name == "serve":
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
        parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default 8000)")
        parser.add_argument("--max_upload_mb", type=float, default=10.0,
                            help="largest image accepted, in MB; larger gets 413 (default 10)")  # fmt: skip
    elif name == "export":
        parser.add_argument("--output", required=True, help="the ONNX file to write, e.g. model.onnx")
        parser.add_argument("--pt2", default=None, help="also write a torch.export program (.pt2) here")
        parser.add_argument("--overwrite", action="store_true", help="replace --output (and --pt2) if they exist")
        parser.add_argument("--check_images", type=int, default=CHECK_IMAGES,
                            help=f"official test images the exported model is checked on (default: all {CHECK_IMAGES:,})")
    else:
        parser.add_argument("-c", "--config", required=True, help="the sweep file, e.g. conf/sweeps/seeds.yaml")
        parser.add_argument("--resume", action="store_true", help="continue the sweep in runs/<name>/ after a stop or a kill")
        parser.add_argument("--parallel", type=int, default=1, metavar="N", help="N worker processes, each with cores // N threads")
        parser.add_argument("--storage", metavar="URL", help="an Optuna RDB URL shared by machines; default: SQLite in runs/<name>/")


def missing_extra(name: str, missing: list[str]) -> MissingExtraError:
    return MissingExtraError(
        f"mnist-rnn {name} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed;"
        f' pip install "mnist-rnn[{name}]"'
    )


def installed(library: str) -> bool:
    if library in sys.modules:  # imported already (optuna_integration's lazy module has no __spec__ then)
        return sys.modules[library] is not None  # None: hidden on purpose (the tests' import hook)
    return importlib.util.find_spec(library) is not None


def run_own_command(name: str, args: list[str]) -> None:
    """serve, export or sweep: its options, its extra's libraries (asked before importing: some are imported only
    deep inside a run, onnxscript by torch.onnx.export), then its module's run; a missing library is one line."""
    parser = CommandParser(prog=f"mnist-rnn {name}", description=OWN_COMMANDS[name], allow_abbrev=False)
    add_options(name, parser)
    if not {"-h", "--help"} & set(args):  # the options can be read without the extra; nothing else can
        missing = [lib for lib in EXTRAS[name] if not installed(lib)]
        if missing:
            raise missing_extra(name, missing)
    options = parser.parse_args(args)  # --help ends here, before any import of torch
    try:
        module = importlib.import_module(f"mnist_rnn.{name}")
    except ModuleNotFoundError as err:
        if not err.name or err.name.split(".")[0] == "mnist_rnn":
            raise
        raise missing_extra(name, [err.name.split(".")[0]]) from None
    module.run(options)


def print_help() -> None:
    commands = {**LIGHTNING_COMMANDS, **OWN_COMMANDS}
    width = max(map(len, commands))
    lines = ["usage: mnist-rnn COMMAND [options]   (mnist-rnn COMMAND --help lists a command's options)", "",
             "MNIST digits read row by row by an LSTM, trained with PyTorch Lightning.", "", "commands:"]  # fmt: skip
    lines += [f"  {name:<{width}}  {text}" for name, text in commands.items()]
    print("\n".join(lines))


RECEIVED: list[str] = []  # the signals stop_on_signal saw, outside training (StopOnSignal has its own there)


def stop_on_signal(signum: int, frame) -> NoReturn:
    RECEIVED.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(RECEIVED[-1])  # main() says so in one line


def main(args: Optional[list[str]] = None) -> None:
    """The command; a signal or an error anywhere outside training ends in one line (SIGTERM too, not silently)."""
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    main_thread = threading.current_thread() is threading.main_thread()  # the only one that may set handlers
    previous = {s: signal.signal(s, stop_on_signal) for s, d in defaults.items() if main_thread and signal.getsignal(s) is d}
    try:
        run(args)
    finally:
        for signum, handler in previous.items():  # an in-process caller (the tests) gets its handlers back
            signal.signal(signum, handler)


def run(args: Optional[list[str]]) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    RECEIVED.clear()
    try:
        if argv[:1] in ([], ["-h"], ["--help"]):
            print_help()
        elif argv[0] in OWN_COMMANDS:
            run_own_command(argv[0], argv[1:])
        else:
            from mnist_rnn.commands.cli import cli_main  # LightningCLI: torch and Lightning come in here

            cli_main(args)
    except MnistRnnError as err:
        if os.environ.get("MNIST_RNN_DEBUG"):
            raise
        if isinstance(err, TrainingStopped):
            if err.report:
                from mnist_rnn.run.resume import resume_command

                print(f"mnist-rnn: {err}\nresume with: {resume_command(argv)}", file=sys.stderr)
        else:
            print(f"mnist-rnn: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except SystemExit as err:
        # Outside training, Lightning's SIGTERM handling (a SystemExit, only once Lightning is imported) would exit
        # with status 0, and a KeyboardInterrupt in trainer.fit before training (stop_on_signal's) with 1.
        exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
        if exceptions is not None and isinstance(err, exceptions.SIGTERMException):
            stopped("SIGTERM")
        if err.code == 1 and RECEIVED:
            stopped(RECEIVED[-1])
        raise
    except KeyboardInterrupt as err:  # outside training: there StopOnSignal saves a checkpoint and says so
        if os.environ.get("MNIST_RNN_DEBUG"):
            raise
        stopped(str(err) if str(err) in ("SIGTERM", "SIGINT") else "SIGINT")
    except Exception as err:  # the last net: every kind in docs/resume-and-errors.md has its own message
        if os.environ.get("MNIST_RNN_DEBUG"):
            raise
        if isinstance(err, OSError) and is_disk_full(err):  # in a write no writer of this project names (a download)
            then = "free space, then run the same command again"
            print(f"mnist-rnn: error: {disk_full(err.filename, then) if err.filename else f'the disk is full; {then}'}", file=sys.stderr)
            raise SystemExit(2) from None
        text = " ".join(str(err).split()) or "(no message)"
        print(f"mnist-rnn: error: unexpected {type(err).__name__}: {text}; rerun with MNIST_RNN_DEBUG=1 for the stack"
              " trace and report it", file=sys.stderr)  # fmt: skip
        raise SystemExit(1) from None


def stopped(name: str) -> NoReturn:
    print(f"mnist-rnn: stopped by {name} outside training (what was already saved is kept); run the command again",
          file=sys.stderr)  # fmt: skip
    raise SystemExit(128 + signal.Signals[name]) from None
