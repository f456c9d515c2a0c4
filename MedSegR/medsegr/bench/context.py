"""What every workload of the comparison (``medsegr bench``) shares.

The two paths' names, the sample and its questions, the :class:`Plan` of how much
to run, :class:`SegAtStep` (the ``[SEG]`` forced through
``MedSegRPipeline.adjust_logits``), one workload's :class:`WorkloadResult`, the
:class:`BenchContext` handed to each workload and :func:`interleave`, which runs
both paths repetition by repetition. The workloads themselves are in
:mod:`medsegr.bench.workloads` and :mod:`medsegr.bench.server_workload`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from medsegr.bench.equality import AnswerDigest, Equality
from medsegr.bench.questions import (FOLLOW_UPS, QUESTION, SAMPLE, SLICE_INDEX, VOLUME_CENTER,
                                     VOLUME_QUESTION)
from medsegr.bench.reference import ReferenceSession
from medsegr.bench.timing import PathRun
from medsegr.io.images import MedicalImage, image_from_array
from medsegr.pipeline import ChatSession, MedSegRPipeline
from medsegr.imaging.slicing import resolve_axis

MEDSEGR = "medsegr"
REFERENCE = "reference"
PATHS = (MEDSEGR, REFERENCE)

__all__ = ["FOLLOW_UPS", "MEDSEGR", "PATHS", "QUESTION", "REFERENCE", "SAMPLE", "SLICE_INDEX",
           "VOLUME_CENTER", "VOLUME_QUESTION", "BenchContext", "Plan", "SegAtStep",
           "WorkloadResult", "interleave", "sub_volume"]


@dataclass(frozen=True)
class Plan:
    """How much of each workload to run."""

    mode: str
    answer_tokens: int
    slice_reps: int
    conversation_turns: int
    conversation_reps: int
    volume_slices: int
    volume_reps: int
    #: the reference's volume question is by far the longest run (one full LLM answer
    #: per slice), so it may be repeated fewer times
    volume_reference_reps: int
    volume_sweep: tuple[int, ...]
    server_sessions: int
    server_turns: int
    server_reps: int

    def with_repeats(self, repeats: int) -> "Plan":
        """Every workload repeated ``repeats`` times on both paths."""
        return Plan(self.mode, self.answer_tokens, repeats, self.conversation_turns, repeats,
                    self.volume_slices, repeats, repeats, self.volume_sweep,
                    self.server_sessions, self.server_turns, repeats)


FULL = Plan(mode="full", answer_tokens=30, slice_reps=5, conversation_turns=5,
            conversation_reps=3, volume_slices=64, volume_reps=3, volume_reference_reps=1,
            volume_sweep=(8, 16, 32), server_sessions=4, server_turns=2, server_reps=2)
QUICK = Plan(mode="quick", answer_tokens=30, slice_reps=2, conversation_turns=3,
             conversation_reps=1, volume_slices=8, volume_reps=1, volume_reference_reps=1,
             volume_sweep=(2, 4), server_sessions=4, server_turns=1, server_reps=1)


class SegAtStep:
    """``adjust_logits`` that makes the ``step``-th generated token ``[SEG]`` (greedy
    and sampled decoding alike: its logit is lifted above every other)."""

    def __init__(self, seg_token_id: int, step: int) -> None:
        self.seg_token_id = seg_token_id
        self.step = step

    def __call__(self, step: int, logits: torch.Tensor) -> None:
        if step == self.step:
            logits[self.seg_token_id] = logits.max() + 1.0


@dataclass
class WorkloadResult:
    """Both paths' runs of one workload and the equality check between them."""

    name: str
    title: str
    medsegr: list[PathRun] = field(default_factory=list)
    reference: list[PathRun] = field(default_factory=list)
    equality: Equality = field(default_factory=Equality)
    notes: list[str] = field(default_factory=list)
    #: why the workload did not run (None when it ran)
    skipped: str | None = None
    #: latency against size, per path: ``[(slices or turns, seconds), ...]``
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def runs(self, path: str) -> list[PathRun]:
        return self.medsegr if path == MEDSEGR else self.reference


@dataclass
class BenchContext:
    """What every workload needs: the loaded pipeline, the sample image, the plan."""

    pipeline: MedSegRPipeline
    image: MedicalImage
    plan: Plan
    progress: Callable[[str], None] = lambda message: None

    @property
    def device(self) -> torch.device:
        return self.pipeline.model.device

    def open_session(self, path: str, image: MedicalImage | None = None) -> ChatSession:
        image = image or self.image
        if path == MEDSEGR:
            return self.pipeline.new_session(image)
        return ReferenceSession(self.pipeline, image)

    def sub_volume(self, count: int) -> MedicalImage:
        """``count`` consecutive axial slices around :data:`VOLUME_CENTER`."""
        return sub_volume(self.image, count)[0]


def sub_volume(image: MedicalImage, count: int,
               center: int = VOLUME_CENTER) -> tuple[MedicalImage, int]:
    """``count`` consecutive axial slices of ``image`` around ``center`` as a new image
    (same spacing and direction; the origin moves to the first kept slice), and the
    index of that first slice."""
    axis = resolve_axis("axial", image.direction)
    n = image.shape[axis]
    count = min(count, n)
    lo = max(0, min(center - count // 2, n - count))
    part = np.take(image.array, np.arange(lo, lo + count), axis=axis)
    ijk = [0.0, 0.0, 0.0]
    ijk[2 - axis] = float(lo)  # numpy axis a is ITK index axis 2 - a
    origin = (image.geometry.ijk_to_lps() @ np.array([*ijk, 1.0]))[:3]
    volume = image_from_array(np.ascontiguousarray(part), spacing=image.spacing,
                              origin=tuple(float(v) for v in origin),
                              direction=image.direction, modality=image.modality)
    return volume, lo


def interleave(ctx: BenchContext, result: WorkloadResult, reps: dict[str, int],
               run_one: Callable[[str], tuple[PathRun, list[AnswerDigest]]]) -> None:
    """Run ``run_one(path)`` ``reps[path]`` times per path, alternating which path goes
    first, and compare every MedSegR repetition's answers with the reference's (the
    same repetition's, else the reference's first)."""
    expected: list[AnswerDigest] | None = None
    for rep in range(max(reps.values())):
        order = PATHS if rep % 2 == 0 else PATHS[::-1]
        got: dict[str, list[AnswerDigest]] = {}
        for path in order:
            if rep < reps[path]:
                ctx.progress(f"  {result.name}: {path}, repetition {rep + 1}/{reps[path]}")
                run, answers = run_one(path)
                result.runs(path).append(run)
                got[path] = answers
                ctx.progress(f"    {run.latency_s:.2f} s")
        if REFERENCE in got and expected is None:
            expected = got[REFERENCE]
        theirs = got.get(REFERENCE, expected)
        if MEDSEGR in got and theirs is not None:
            for k, (ours, ref) in enumerate(zip(got[MEDSEGR], theirs)):
                result.equality.add(ours, ref, f"repetition {rep + 1}, answer {k + 1}")
