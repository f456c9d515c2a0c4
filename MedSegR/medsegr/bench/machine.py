"""The machine and software a benchmark result belongs to (one helper for every suite).

Nothing heavy is imported at module level: :func:`host_facts` and :func:`git_state`
need only the standard library, so the engine suite's parent process can call them
without loading torch; :func:`torch_facts` imports torch when it is called.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

#: the repository (``MedSegR/medsegr/bench`` -> three levels up)
REPO_ROOT = Path(__file__).resolve().parents[3]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int | None:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def loadavg() -> str | None:
    """The 1, 5 and 15 minute load averages, or None where ``/proc`` is missing."""
    try:
        return " ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])
    except OSError:
        return None


def git_state(root: Path = REPO_ROOT) -> str:
    """``<short head>``, with ``+ N modified file(s)`` when tracked files differ from it
    ("unknown" outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=False,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, check=False, capture_output=True, text=True,
                               timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (f" + {len(dirty)} modified file(s)" if dirty else "")


def host_facts() -> dict[str, Any]:
    """CPU, cores, Python, platform, date, git state and load average (no torch)."""
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": git_state(),
        "loadavg": loadavg(),
    }


def torch_facts(device: Any) -> dict[str, Any]:
    """torch's version and threads, medsegr's version and, on CUDA, the GPU."""
    import torch

    import medsegr

    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "medsegr": medsegr.__version__,
        "device": str(device),
    }
    dev = torch.device(device) if isinstance(device, str) and device != "auto" else device
    if isinstance(dev, torch.device) and dev.type == "cuda" and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(dev)
        facts["gpu_memory_gib"] = round(torch.cuda.get_device_properties(dev).total_memory
                                        / 2**30, 1)
    return facts
