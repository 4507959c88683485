"""The ranges and choices of the model's and the data module's settings, declared once: as the annotations of their
`__init__` (jsonargparse's restricted number types and `Literal`s).

LightningCLI's parser refuses a value outside them itself, in one line naming the option. Annotations alone do nothing
for a call from Python (`RecurrentClassifier(hidden_size=0)`, `load_from_checkpoint`): `check` applies the same types
there. docs/layout.md lists the hand checks kept beside these, and why.
"""

from __future__ import annotations

import functools
import typing
from typing import Any, Callable, Literal, Union

import torch
from jsonargparse.typing import restricted_number_type

from mnist_rnn.errors import ConfigError

FLOAT32_MAX = torch.finfo(torch.float32).max  # the optimizers multiply float32 tensors by lr and weight_decay

DropoutRate = restricted_number_type("DropoutRate", float, [(">=", 0.0), ("<", 1.0)], docstring="float restricted to be >=0 and <1")
PositiveFloat32 = restricted_number_type(
    "PositiveFloat32", float, [(">", 0.0), ("<=", FLOAT32_MAX)], docstring="float restricted to be >0 and <=3.4e38, float32's largest"
)
NonNegativeFloat32 = restricted_number_type(
    "NonNegativeFloat32", float, [(">=", 0.0), ("<=", FLOAT32_MAX)], docstring="float restricted to be >=0 and <=3.4e38, float32's largest"
)
# A choice, not a measurement: MNIST centres each digit's 20x20 box in 28x28, so a shift of 8 pushes up to 4 of its rows out.
ShiftPixels = restricted_number_type("ShiftPixels", int, [(">=", 0), ("<=", 8)], docstring="int restricted to be >=0 and <=8")


def check(function: Callable, arguments: dict[str, Any], section: str) -> None:
    """Refuse the first of a call's arguments (`locals()`, in the signature's order) that its annotation's range or
    choices do not take, as a ConfigError naming `section.name`: what LightningCLI's parser refuses, from Python."""
    for name, annotation in _hints(function).items():
        if name in arguments and not _takes(annotation, arguments[name]):
            raise ConfigError(f"{section}.{name} must be {_describe(annotation)}, got {arguments[name]!r}")


def plain(*values: Any) -> tuple:
    """The values, jsonargparse's restricted numbers (what `load_from_checkpoint` passes) as plain int and float: hparams,
    checkpoints and hparams.yaml must hold plain numbers (the checked checkpoint reader refuses any other class)."""
    return tuple(v if isinstance(v, bool) else int(v) if isinstance(v, int) else float(v) if isinstance(v, float) else v
                 for v in values)  # fmt: skip


@functools.lru_cache(maxsize=None)
def _hints(function: Callable) -> dict[str, Any]:
    return typing.get_type_hints(function)


def _restricted(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, (int, float)) and annotation not in (int, float, bool)


def _takes(annotation: Any, value: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Union:
        return any(_takes(member, value) for member in typing.get_args(annotation))
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if _restricted(annotation):
        try:
            annotation(value)  # jsonargparse's restricted types check a value when built from it
        except (TypeError, ValueError):
            return False
        return not isinstance(value, str)
    return True  # a plain type: no range to check


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Union:
        return " or ".join(_describe(member) for member in typing.get_args(annotation))
    if origin is Literal:
        choices = typing.get_args(annotation)
        return repr(choices[0]) if len(choices) == 1 else f"one of {', '.join(map(repr, choices))}"
    if _restricted(annotation):
        return f"a {annotation.__name__} ({annotation.__doc__})"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))
