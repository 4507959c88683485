"""The `mnist-rnn` command: which subcommand runs, the extra serve, export or sweep needs, and one-line errors.

Nothing here imports torch or Lightning, so every `--help` answers at once. fit/validate/test/predict are
LightningCLI's (cli.py); serve, export and sweep are typed functions (own_commands.py) parsed by jsonargparse
(options.py), each behind an extra.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import threading
from typing import NoReturn, Optional

from mnist_rnn.commands.options import command_parser, plain
from mnist_rnn.commands.own_commands import ALIASES, COMMANDS, EXTRAS, installed, missing_extra
from mnist_rnn.errors import MnistRnnError, TrainingStopped, disk_full, is_disk_full

LIGHTNING_COMMANDS = {
    "fit": "Train a model (conf/default.yaml unless -c FILE), with checkpoints and TensorBoard logs.",
    "validate": "Score a checkpoint (default: the bundled model) on the validation split.",
    "test": "Score a checkpoint (default: the bundled model) on MNIST's official test set.",
    "predict": "Predict digits in your own image files; writes a CSV.",
}
OWN_COMMANDS = {name: inspect.getdoc(command).splitlines()[0] for name, command in COMMANDS.items()}


def run_own_command(name: str, args: list[str]) -> None:
    """serve, export or sweep: its options (a typed function's, own_commands.py), its extra's libraries (asked before
    importing: some are imported only deep inside a run, onnxscript by torch.onnx.export), then the function runs."""
    parser = command_parser(COMMANDS[name], f"mnist-rnn {name}", ALIASES.get(name))
    if not {"-h", "--help"} & set(args):  # the options can be read without the extra; nothing else can
        missing = [lib for lib in EXTRAS[name] if not installed(lib)]
        if missing:
            raise missing_extra(name, missing)
    options = parser.parse_args(args)  # --help ends here, before any import of torch
    COMMANDS[name](**plain(options.as_dict()))


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
