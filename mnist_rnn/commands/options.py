"""Options from typed signatures, by jsonargparse: a command is a function whose signature gives its options (types,
defaults) and whose docstring gives their help; a sweep file is dataclasses parsed the same way. Whatever jsonargparse
refuses is one line naming the option (or the file's key) and what it takes. Imports no torch: `--help` answers at once.
"""

from __future__ import annotations

import inspect
import os
import re
import typing
from typing import Any, Callable, Literal, NoReturn, Optional, Union

import docstring_parser
from jsonargparse import ActionYesNo, ArgumentParser
from jsonargparse.typing import extend_base_type

from mnist_rnn.errors import usage_error

WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text", list: "a list", dict: "a mapping"}
BASES: dict[type, type] = {}  # each constrained type, and the type whose value the parsed one is given as (plain)


def constrained(name: str, base: type, ok: Callable[[Any], bool], takes: str) -> type:
    """A type of base values that satisfy ok: its name shows in --help, `takes` in the line refusing another value."""

    def validate(cls, value: Any) -> None:
        try:
            converted = base(value)
            fits = not isinstance(value, bool) and (base is not int or float(value) == converted) and bool(ok(converted))
        except (TypeError, ValueError):
            fits = False
        if not fits:
            raise ValueError(value)  # jsonargparse reports "Not of type NAME: VALUE"; one_line reads the value there

    made = extend_base_type(name, base, validate, docstring=takes, register_key=("mnist_rnn", name))
    BASES[made] = base
    return made


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """Parsed values, those of a constrained type as its base's (8000, not Port(8000): the socket module, for one,
    takes no int subclass)."""
    return {key: BASES[type(value)](value) if type(value) in BASES else value for key, value in values.items()}


Count = constrained("Count", int, lambda n: n >= 1, "an integer from 1 up")  # sweep --parallel, a search's n_trials


def describe(hint: Any) -> str:
    """What a type takes, in words: a Literal's values, null for None, a constrained type's own words."""
    origin = typing.get_origin(hint)
    if origin is Union:
        return ", ".join(describe(arg) for arg in typing.get_args(hint))
    if origin is Literal:  # as YAML writes them
        return ", ".join(str(arg).lower() if isinstance(arg, bool) else str(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is list:
        return f"a list ({describe(typing.get_args(hint)[0])} each)"
    return WORDS.get(origin or hint) or (hint.__doc__ if isinstance(hint, type) else None) or str(hint)


def one_line(message: str, hints: dict[str, Any], prefix: str = "--") -> str:
    """jsonargparse's report of a refusal (often several indented lines) as one line: the option or key (`prefix`
    before the name: -- for an option, the path of a sweep file's section), the value given and what it takes."""
    text = " ".join(message.split())
    if required := re.fullmatch(r"the following arguments are required: (.*)", text):
        names = [prefix + name.strip().lstrip("-") for name in required[1].split(",")]
        return f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} required"
    if unknown := re.fullmatch(r"Option '(.*)' is not accepted|Key must be a string, got: (.*)\.", text):
        return f"unknown key {prefix}{unknown[1] or unknown[2]}; the keys are {', '.join(hints)}"
    refused = re.fullmatch(r'Parser key "([^"]+)": (.*)', text)
    if not refused or refused[1] not in hints:
        return text
    values = re.findall(r"(?:Given value|Got value|Not of type \w+): (.*?)(?= - |$)", refused[2])
    value = f" {values[-1]}" if values else ""
    return f"{prefix}{refused[1]}{value} is not valid here: it takes {describe(hints[refused[1]])}"


def short_error(message: str) -> str:
    """jsonargparse's report of a refused value as the option, the value and what it takes, in the form serve, export
    and sweep use (options.one_line): `--model.hidden_size 0 is not valid here: it takes PositiveInt (v>0)`."""
    if match := re.fullmatch(r'Parser key "([^"]+)": Does not validate against any of the Union subtypes'
                             r" Subtypes: \[(.*?)\] Errors: .* Given value: (.*)", message):  # fmt: skip
        key, subtypes, value = match.groups()
        names = [{"NoneType": "null"}.get(name, name) for name in re.findall(r"<class '(?:[\w.]+\.)?(\w+)'>", subtypes)]
        literals = [v.strip(" '") for group in re.findall(r"Literal\[([^\]]*)\]", subtypes) for v in group.split(",")]
        takes = ", ".join(dict.fromkeys(literals + names))
    elif match := re.fullmatch(r'Parser key "([^"]+)": Not of type (\w+): (.*?) does not conform to restriction (.*)', message):
        key, name, value, rule = match.groups()
        takes = f"{name} ({rule})"
    elif match := re.fullmatch(r'Parser key "([^"]+)": Not of type (\w+): could not convert string to \w+: (.*)', message):
        key, takes, value = match[1], match[2], match[3].strip("'")
    elif match := re.fullmatch(r'Parser key "([^"]+)": Expected a typing\.Literal\[(.*)\]\. Got value: (.*)', message):
        key, value = match[1], match[3]
        takes = ", ".join(v.strip(" '") for v in match[2].split(","))
    else:
        return message
    return f"--{key} {value} is not valid here: it takes {takes}"


class OneLineParser(ArgumentParser):
    """jsonargparse's parser, its refusals one line (mnist_rnn.errors.usage_error), as fit's are (cli.py)."""

    hints: dict[str, Any] = {}  # the parsed function's or dataclass's type hints, which one_line describes

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("MNIST_RNN_DEBUG"):
            super().error(message, ex)  # raises (while jsonargparse tries alternatives), or the full report
        usage_error(one_line(message, self.hints), self.prog)


def command_parser(command: Callable, prog: str, aliases: Optional[dict[str, tuple[str, ...]]] = None) -> OneLineParser:
    """The parser of a typed command: its parameters as options in their order, help from the docstring's Args. A bool
    that defaults to False is a flag (`--resume`, not `--resume true`); `aliases` gives a parameter its own option
    strings (sweep's -c/--config, make_bundled's --from)."""
    doc = docstring_parser.parse(inspect.getdoc(command) or "")
    parser = OneLineParser(prog=prog, description=doc.short_description, allow_abbrev=False)
    parser.hints = typing.get_type_hints(command)
    helps = {param.arg_name: param.description for param in doc.params}
    params = inspect.signature(command).parameters
    plain: list[str] = []  # a run of parameters jsonargparse adds as they are

    def add_plain() -> None:
        if plain:
            parser.add_function_arguments(command, as_group=False, skip=set(params) - set(plain))
            plain.clear()

    for name, param in params.items():
        flag = parser.hints[name] is bool and param.default is False
        if not flag and name not in (aliases or {}):
            plain.append(name)
            continue
        add_plain()
        required = param.default is param.empty
        how = {"action": ActionYesNo(no_prefix=None)} if flag else {"type": parser.hints[name], "required": required}
        default = {} if required else {"default": param.default}
        parser.add_argument(*(aliases or {}).get(name, (f"--{name}",)), dest=name, help=helps.get(name), **how, **default)
    add_plain()
    return parser
