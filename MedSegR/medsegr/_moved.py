"""Old import paths of modules that moved into packages (release 0.2), kept working for
one release: ``import medsegr.slicing`` gives :mod:`medsegr.imaging.slicing` itself,
with a :class:`DeprecationWarning` that names the new path. README's "Layout" section
lists the moves."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old module name -> new module name
MOVED = {
    "medsegr.nrrd_codec": "medsegr.io.nrrd_codec",
    "medsegr.slicing": "medsegr.imaging.slicing",
    "medsegr.preprocess": "medsegr.imaging.preprocess",
    "medsegr.postprocess": "medsegr.imaging.postprocess",
    "medsegr.checkpoint": "medsegr.modeling.checkpoint",
    "medsegr.weights": "medsegr.modeling.weights",
    "medsegr.load_status": "medsegr.modeling.load_status",
    "medsegr.device": "medsegr.modeling.device",
    "medsegr.model_options": "medsegr.cli.model_options",
    "medsegr.outputs": "medsegr.cli.outputs",
    "medsegr.overlay": "medsegr.cli.overlay",
    "medsegr.samples": "medsegr.cli.samples",
    "medsegr.remote_ask": "medsegr.cli.remote_ask",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and loads it as the module under its new name."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def __init__(self) -> None:
        #: new module name -> its own spec, which the import system overwrites with the
        #: old name's spec after :meth:`create_module`; :meth:`exec_module` puts it back
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module was fully imported under its new name): give it
        back its own spec."""
        module.__spec__ = self._specs.pop(module.__name__, module.__spec__)


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
