"""The engine suite (``medsegr bench --engine``): its workloads, how much of each to
run, its targets and the configuration the engine runs with.

Standard library and :mod:`medsegr.config` only: the suite's parent process and the
cold-start worker import this before anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from medsegr.config import MedSegRConfig
from medsegr.errors import InputError

#: the workloads, in the order they run; each runs in a fresh worker process
#: (``http``: the server's HTTP path against the in-process pipeline, not in the default)
ENGINE_WORKLOADS = ("cold-first", "slice", "cold-cached", "followup", "volume", "http")
DEFAULT_ENGINE_WORKLOADS = ENGINE_WORKLOADS[:-1]

#: every question's answer is exactly this long (min_new_tokens = max_new_tokens)
ANSWER_TOKENS = 30

TARGET_COLD_CACHED_S = 5.0
TARGET_SLICE_S = 2.0
#: the first streamed text of a slice answer, after the slice is encoded
TARGET_FIRST_TEXT_S = 1.0
TARGET_FOLLOWUP_RATIO = 0.5
TARGET_PEAK_MIB = 2048.0

#: a worker process is killed after this long (s)
WORKER_TIMEOUT_S = 1200.0


@dataclass(frozen=True)
class EnginePlan:
    """How much of each workload to run (``--quick`` makes it smaller)."""

    mode: str
    slice_reps: int
    followup_reps: int
    cached_runs: int
    volume_slices: int


ENGINE_FULL = EnginePlan(mode="full", slice_reps=5, followup_reps=3, cached_runs=3,
                         volume_slices=64)
ENGINE_QUICK = EnginePlan(mode="quick", slice_reps=2, followup_reps=1, cached_runs=1,
                          volume_slices=16)


@dataclass(frozen=True)
class HttpPlan:
    """How much of the ``http`` workload to run."""

    repeats: int
    clients: int
    questions: int


HTTP_FULL = HttpPlan(repeats=5, clients=4, questions=4)
HTTP_QUICK = HttpPlan(repeats=2, clients=4, questions=2)


def engine_workloads(names: str | None) -> tuple[str, ...]:
    """The workloads named in a comma-separated list (None: the default ones), in
    the suite's running order."""
    if names is None:
        return DEFAULT_ENGINE_WORKLOADS
    chosen = {n.strip() for n in names.split(",") if n.strip()}
    if not chosen:
        raise InputError("--workloads is empty")
    unknown = sorted(chosen - set(ENGINE_WORKLOADS))
    if unknown:
        raise InputError(f"unknown engine workload(s) {', '.join(unknown)} "
                         f"(choose from {', '.join(ENGINE_WORKLOADS)})")
    return tuple(n for n in ENGINE_WORKLOADS if n in chosen)


def engine_config(model: str, fixed_answer: bool = True) -> MedSegRConfig:
    """The base parts' configuration: the bundled parts or the tiny random model, with
    ``ANSWER_TOKENS``-token answers when ``fixed_answer``."""
    if model not in ("bundled", "tiny"):
        raise InputError(f"unknown --model {model!r} (bundled or tiny)")
    config = MedSegRConfig.tiny() if model == "tiny" else MedSegRConfig()
    if fixed_answer:
        config.generation.min_new_tokens = ANSWER_TOKENS
        config.generation.max_new_tokens = ANSWER_TOKENS
    return config
