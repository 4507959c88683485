"""The module paths of mnist-rnn 0.2 and older, still importable.

Before 0.3 every module stood side by side in `mnist_rnn/`; a run folder's saved `config.yaml` names
classes there (`mnist_rnn.runs.RunLogger`, `mnist_rnn.stopping.StopOnSignal`, ...), and `-c` on it,
or any user's own import, must keep working. Each old name is the new module itself (one module
object, not a copy), found only when Python's own finders miss it: nothing is imported ahead of use.
`mnist_rnn.data` and `mnist_rnn.model` are packages now; their `__init__` hands on the old names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "mnist_rnn.runs": "mnist_rnn.run.folders",
    "mnist_rnn.checkpoints": "mnist_rnn.run.checkpoints",
    "mnist_rnn.resume": "mnist_rnn.run.resume",
    "mnist_rnn.stopping": "mnist_rnn.run.stopping",
    "mnist_rnn.progress": "mnist_rnn.run.progress",
    "mnist_rnn.hardware": "mnist_rnn.run.hardware",
    "mnist_rnn.trainer_settings": "mnist_rnn.run.trainer_settings",
    "mnist_rnn.steps_per_execution": "mnist_rnn.run.steps_per_execution",
    "mnist_rnn.mnist_files": "mnist_rnn.data.mnist_files",
    "mnist_rnn.images": "mnist_rnn.data.images",
    "mnist_rnn.network": "mnist_rnn.model.network",
    "mnist_rnn.unroll": "mnist_rnn.views.unroll",
    "mnist_rnn.dashboards": "mnist_rnn.views.dashboards",
    "mnist_rnn.recurrence_views": "mnist_rnn.views.recurrence",
    "mnist_rnn.cli": "mnist_rnn.commands.cli",
    "mnist_rnn.predictions": "mnist_rnn.commands.predictions",
    "mnist_rnn.inference": "mnist_rnn.commands.inference",
    "mnist_rnn.bundled": "mnist_rnn.commands.bundled",
    "mnist_rnn.make_bundled": "mnist_rnn.commands.make_bundled",
    "mnist_rnn.serve": "mnist_rnn.commands.serve",
    "mnist_rnn.export": "mnist_rnn.commands.export",
    "mnist_rnn.sweep": "mnist_rnn.commands.sweep",
    "mnist_rnn.sweep_file": "mnist_rnn.commands.sweep_file",
}


class OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A finder (last on `sys.meta_path`) that answers an old module name with the module it became."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in MOVED:
            return None
        # The new file as origin: tracebacks, and `python -m`'s sys.argv[0], name the file that runs.
        return importlib.util.spec_from_loader(fullname, self, origin=importlib.util.find_spec(MOVED[fullname]).origin)

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])  # the module itself: its classes stay one and the same

    def exec_module(self, module):
        pass  # already run under its new name

    def get_code(self, fullname):
        """The new module's code, for `python -m` on an old name (`python -m mnist_rnn.make_bundled`)."""
        return importlib.util.find_spec(MOVED[fullname]).loader.get_code(MOVED[fullname])


def handed_on(package: str, names: dict[str, str]):
    """A package's `__getattr__` (PEP 562) that imports each of `names` from its module on first use: the package's
    public names (`mnist_rnn.RecurrentClassifier`), or 0.2's names of `mnist_rnn.data` and `mnist_rnn.model`."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def install() -> None:
    if not any(isinstance(finder, OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(OldPaths())
