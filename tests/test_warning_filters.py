"""Importing the package changes no warning filter: the project's are set when a command runs (run/warning_filters.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import subprocess_env

# In a fresh interpreter (this one has imported the package already): first what the package's modules import at
# their top level from other libraries (torch, Lightning and NumPy set filters of their own on import), then every
# module of the package; the filters must be the same before and after.
IMPORT_ALL = r"""
import ast, importlib, importlib.util, pkgutil, warnings
from pathlib import Path

folder = Path(importlib.util.find_spec("mnist_rnn").submodule_search_locations[0])
for source in sorted(folder.rglob("*.py")):
    for node in ast.parse(source.read_text()).body:  # top-level statements: what runs on import
        for statement in [node, *(getattr(node, "body", []) if isinstance(node, (ast.If, ast.Try, ast.With)) else [])]:
            if isinstance(statement, ast.Import):
                modules = [(alias.name, []) for alias in statement.names]
            elif isinstance(statement, ast.ImportFrom) and statement.level == 0:
                modules = [(statement.module, [alias.name for alias in statement.names])]
            else:
                continue
            for module, names in modules:
                if module.split(".")[0] != "mnist_rnn":
                    imported = importlib.import_module(module)
                    for name in names:
                        getattr(imported, name, None)

before = list(warnings.filters)
import mnist_rnn
names = [info.name for info in pkgutil.walk_packages(mnist_rnn.__path__, "mnist_rnn.")]
for name in names:
    importlib.import_module(name)
added = [f for f in warnings.filters if f not in before]
removed = [f for f in before if f not in warnings.filters]
print(len(names), "modules")
assert not added and not removed, (added, removed)
"""


def test_importing_every_module_of_the_package_leaves_the_warning_filters_unchanged():
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) >= 30  # every module was imported (36 as of issue 30)
