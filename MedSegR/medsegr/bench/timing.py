"""Timing one measured block: wall clock (synchronised on CUDA) and peak memory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from medsegr.bench.memory import MemoryReading, PeakMemory


def synchronize(device: torch.device) -> None:
    """Wait for queued accelerator work, so that a clock read covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Measured:
    """``with Measured(device) as m: work()`` then ``m.seconds`` and ``m.memory``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = float("nan")
        self.memory: MemoryReading | None = None
        self._probe = PeakMemory(device)
        self._t0 = 0.0

    def __enter__(self) -> "Measured":
        self._probe.__enter__()
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
        self._probe.__exit__(*exc)
        self.memory = self._probe.reading


@dataclass
class PathRun:
    """One repetition of one workload on one path."""

    latency_s: float
    #: tokens of the answer(s) the user receives
    answer_tokens: int
    #: tokens the LLM generated to produce them (the reference's volume mode answers once
    #: per slice)
    llm_tokens: int
    #: the answers' own timings summed per phase (encode, prefill, decode, reread, masks)
    phases: dict[str, float]
    #: cumulative latency after each turn (conversation), slice (reference volume) or
    #: session (server)
    steps_s: list[float]
    memory: MemoryReading | None
    #: per-request latencies (server workload)
    requests_s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.answer_tokens / self.latency_s if self.latency_s > 0 else float("nan")


def add_phases(total: dict[str, float], timings: dict[str, Any]) -> None:
    for name in ("encode", "prefill", "decode", "reread", "masks"):
        if name in timings:
            total[name] = total.get(name, 0.0) + float(timings[name])
