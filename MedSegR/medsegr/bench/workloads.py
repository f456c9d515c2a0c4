"""The benchmark's workloads, each run through MedSegR's pipeline and the reference path.

All questions are about the MNI152 T1 template that ships in the ``nilearn`` wheel
(``sample:brain-mri``). Every answer is exactly ``plan.answer_tokens`` tokens long
(``generation.min_new_tokens = max_new_tokens``), and its last token is forced to be
``[SEG]`` (:class:`SegAtStep`, through ``MedSegRPipeline.adjust_logits``), so that
the mask decoder runs on both paths whatever the weights would have written.

- ``slice``: one question about axial slice 90, a new session each repetition;
- ``conversation``: a question and follow-ups on the same slice in one session
  (``plan.conversation_turns`` turns);
- ``volume``: one volume question on ``plan.volume_slices`` consecutive axial slices;
  MedSegR is also timed on smaller volumes (``plan.volume_sweep``) for the
  latency-against-slices plot, the reference's curve is its own per-slice progress;
- ``server``: :mod:`medsegr.bench.server_workload`.

Repetitions alternate which path goes first, so slow drifts of a shared machine
touch both paths alike; every MedSegR answer is compared with the reference's
answer to the same question (:class:`~medsegr.bench.equality.Equality`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from medsegr.bench.equality import AnswerDigest, Equality
from medsegr.bench.reference import ReferenceSession
from medsegr.bench.timing import Measured, PathRun, add_phases, synchronize
from medsegr.io.images import MedicalImage, image_from_array
from medsegr.pipeline import ChatSession, MedSegRPipeline
from medsegr.imaging.slicing import resolve_axis

MEDSEGR = "medsegr"
REFERENCE = "reference"
PATHS = (MEDSEGR, REFERENCE)

SAMPLE = "brain-mri"
SLICE_INDEX = 90
VOLUME_CENTER = 94
QUESTION = "Which tissue forms the deep, myelinated part of the cerebral hemispheres? Segment it."
FOLLOW_UPS = (
    "Now describe only its boundary with the grey matter.",
    "Is it larger on the left or on the right side?",
    "How would it look on a T2-weighted image?",
    "Summarise your findings in one sentence.",
)
VOLUME_QUESTION = "Segment the white matter in the whole scan."


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
        """``count`` consecutive axial slices around :data:`VOLUME_CENTER` as a new image
        (same spacing and direction; the origin moves to the first kept slice)."""
        image = self.image
        axis = resolve_axis("axial", image.direction)
        n = image.shape[axis]
        count = min(count, n)
        lo = max(0, min(VOLUME_CENTER - count // 2, n - count))
        part = np.take(image.array, np.arange(lo, lo + count), axis=axis)
        ijk = [0.0, 0.0, 0.0]
        ijk[2 - axis] = float(lo)  # numpy axis a is ITK index axis 2 - a
        origin = (image.geometry.ijk_to_lps() @ np.array([*ijk, 1.0]))[:3]
        return image_from_array(np.ascontiguousarray(part), spacing=image.spacing,
                                origin=tuple(float(v) for v in origin),
                                direction=image.direction, modality=image.modality)


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


# ------------------------------------------------------------------------- workloads
def slice_question(ctx: BenchContext) -> WorkloadResult:
    plan = ctx.plan
    result = WorkloadResult("slice", f"Slice question, {plan.answer_tokens}-token answer")

    def run_one(path: str) -> tuple[PathRun, list[AnswerDigest]]:
        session = ctx.open_session(path)
        with Measured(ctx.device) as m:
            answer = session.ask(QUESTION, axis="axial", slice_index=SLICE_INDEX)
        phases: dict[str, float] = {}
        add_phases(phases, answer.timings)
        run = PathRun(m.seconds, answer.tokens["generated"],
                      answer.tokens.get("llm_generated", answer.tokens["generated"]), phases,
                      [m.seconds], m.memory)
        return run, [AnswerDigest.of(answer)]

    interleave(ctx, result, {MEDSEGR: plan.slice_reps, REFERENCE: plan.slice_reps}, run_one)
    result.notes.append(f"axial slice {SLICE_INDEX} of the MNI152 T1; a new session for "
                        "every repetition, so MedSegR encodes the slice every time too")
    return result


def conversation(ctx: BenchContext) -> WorkloadResult:
    plan = ctx.plan
    turns = plan.conversation_turns
    questions = [QUESTION, *FOLLOW_UPS][:turns]
    result = WorkloadResult("conversation", f"{turns}-turn conversation on one slice")

    def run_one(path: str) -> tuple[PathRun, list[AnswerDigest]]:
        session = ctx.open_session(path)
        answers, steps, phases = [], [], {}
        with Measured(ctx.device) as m:
            t0 = time.perf_counter()
            for question in questions:
                answers.append(session.ask(question, axis="axial", slice_index=SLICE_INDEX))
                synchronize(ctx.device)
                steps.append(time.perf_counter() - t0)
        for answer in answers:
            add_phases(phases, answer.timings)
        tokens = sum(a.tokens["generated"] for a in answers)
        run = PathRun(m.seconds, tokens, tokens, phases, steps, m.memory)
        return run, [AnswerDigest.of(a) for a in answers]

    interleave(ctx, result, {MEDSEGR: plan.conversation_reps,
                             REFERENCE: plan.conversation_reps}, run_one)
    for path in PATHS:
        runs = result.runs(path)
        if runs:
            result.curves[path] = [(k + 1, float(np.median([r.steps_s[k] for r in runs])))
                                   for k in range(turns)]
    if len(questions) < 5:
        result.notes.append(f"{turns} turns (quick mode), not 5")
    return result


def volume_question(ctx: BenchContext) -> WorkloadResult:
    plan = ctx.plan
    volume = ctx.sub_volume(plan.volume_slices)
    slices = volume.shape[resolve_axis("axial", volume.direction)]
    result = WorkloadResult("volume", f"{slices}-slice volume question")

    def run_on(path: str, image: MedicalImage) -> tuple[PathRun, list[AnswerDigest]]:
        session = ctx.open_session(path, image)
        with Measured(ctx.device) as m:
            answer = session.ask(VOLUME_QUESTION, axis="axial", volume=True)
        phases: dict[str, float] = {}
        add_phases(phases, answer.timings)
        steps = list(session.slice_done_s) if isinstance(session, ReferenceSession) else [m.seconds]
        run = PathRun(m.seconds, answer.tokens["generated"],
                      answer.tokens.get("llm_generated", answer.tokens["generated"]), phases,
                      steps, m.memory)
        return run, [AnswerDigest.of(answer)]

    interleave(ctx, result, {MEDSEGR: plan.volume_reps, REFERENCE: plan.volume_reference_reps},
               lambda path: run_on(path, volume))
    ours = [(slices, float(np.median([r.latency_s for r in result.medsegr])))]
    for count in sorted(c for c in plan.volume_sweep if c < slices):
        ctx.progress(f"  volume: medsegr on {count} slices (latency against slices)")
        run, _ = run_on(MEDSEGR, ctx.sub_volume(count))
        ours.append((count, run.latency_s))
    result.curves[MEDSEGR] = sorted(ours)
    if result.reference:
        steps = result.reference[0].steps_s
        sizes = sorted({*(c for c in plan.volume_sweep if c < slices), slices})
        result.curves[REFERENCE] = [(c, steps[c - 1]) for c in sizes if c <= len(steps)]
        per_slice = np.diff([0.0, *steps])
        result.notes.append(
            f"the reference answers once per slice: {len(steps)} full LLM answers; its time "
            f"per slice was {np.median(per_slice):.2f} s (median, {per_slice.min():.2f}–"
            f"{per_slice.max():.2f}); its curve against slices is its own progress through "
            "the volume, MedSegR's comes from separate runs on smaller volumes")
    return result


def warm_up(ctx: BenchContext, volume: bool) -> float:
    """Untimed first calls (kernel set-up, compilation): a two-token answer ending in
    ``[SEG]`` on each path, so encoder, LLM and mask decoder all run; with ``volume``,
    also a MedSegR volume question on a few slices (the mask decoder's batch shape)."""
    pipeline = ctx.pipeline
    forced = pipeline.adjust_logits
    pipeline.adjust_logits = SegAtStep(pipeline.model.seg_token_id, 1)
    t0 = time.perf_counter()
    try:
        for path in PATHS:
            ctx.open_session(path).ask("Describe this slice.", axis="axial",
                                       slice_index=SLICE_INDEX, max_new_tokens=2)
        if volume:
            batch = pipeline.model.config.generation.decoder_batch
            ctx.open_session(MEDSEGR, ctx.sub_volume(min(batch, ctx.plan.volume_slices))).ask(
                "Describe this scan.", axis="axial", volume=True, max_new_tokens=2)
        synchronize(ctx.device)
    finally:
        pipeline.adjust_logits = forced
    return time.perf_counter() - t0


WORKLOADS: dict[str, Callable[[BenchContext], WorkloadResult]] = {
    "slice": slice_question,
    "conversation": conversation,
    "volume": volume_question,
}


def workload_names() -> list[str]:
    return [*WORKLOADS, "server"]


def run_workload(name: str, ctx: BenchContext) -> WorkloadResult:
    if name == "server":
        from medsegr.bench.server_workload import concurrent_sessions

        return concurrent_sessions(ctx)
    return WORKLOADS[name](ctx)
