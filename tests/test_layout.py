"""The package's shape, as docs/layout.md draws it: sub-packages by layer, imports only downward, short modules."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mnist_rnn"
# Bottom to top: a module may import from its own layer or a lower one, never from a higher one.
LAYERS = {"errors": 0, "old_paths": 0, "run": 1, "data": 2, "model": 3, "views": 4, "commands": 5, "__main__": 6}
# Issue 30: no module over 300 lines (the longest at the move, recurrence_views.py, had 338 and held two ideas).
MAX_LINES = 300


def modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path != PACKAGE / "__init__.py")


def layer(dotted: str) -> int:
    return LAYERS[dotted.split(".")[1]]


def imported(path: Path) -> set[str]:
    """Every mnist_rnn module that path imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_rnn."):
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module == "mnist_rnn":
            names.update(f"mnist_rnn.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("mnist_rnn."))
    return names


def test_every_module_imports_only_from_its_own_layer_or_below():
    upward = []
    for path in modules():
        own = ".".join(("mnist_rnn", *path.relative_to(PACKAGE).with_suffix("").parts))
        for name in imported(path):
            if layer(name) > layer(own):
                upward.append(f"{own} imports {name}")
    assert upward == []


def test_the_layers_are_the_sub_packages_and_no_module_is_left_beside_them():
    top = {path.stem for path in PACKAGE.glob("*.py")} | {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert top - {"__init__", "conf"} == set(LAYERS)


def test_no_module_is_longer_than_300_lines():
    long = {str(path.relative_to(PACKAGE)): n for path in modules() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
