"""Where the time of loading a model goes, recorded by the loading code itself.

The loading code marks its steps with ``with phase("vision"):``; a caller that
wants the numbers wraps the load in ``with recording() as timings:`` and then reads
``timings.seconds`` (wall seconds per phase, summed over its calls) and
``timings.calls`` (how often each phase ran). Phases may nest: a phase's time
includes the phases inside it (weight hashing happens inside ``vision`` and
``llm``). Outside :func:`recording` a phase does nothing but look up a context
variable, so the marks cost nothing in normal use.

Phases used by the engine: ``vision`` (building the image encoder and mask
decoder), ``llm`` (loading the language model), ``hashing`` (SHA-256 checks of
weight files), ``conversion`` (the one-time GGUF -> safetensors conversion, its
hash check excluded) and ``optimise`` (inference optimisations, int8 included);
:meth:`medsegr.pipeline.MedSegRPipeline.load` adds ``total``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class LoadTimings:
    """The phases of one load: seconds and number of calls per phase name."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1


_CURRENT: ContextVar[LoadTimings | None] = ContextVar("medsegr_load_timings", default=None)


@contextmanager
def recording() -> Iterator[LoadTimings]:
    """Record the phases of the loading code run inside the block (this thread)."""
    timings = LoadTimings()
    token = _CURRENT.set(timings)
    try:
        yield timings
    finally:
        _CURRENT.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Mark a step of loading; timed only inside :func:`recording`."""
    timings = _CURRENT.get()
    if timings is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings.add(name, time.perf_counter() - t0)
