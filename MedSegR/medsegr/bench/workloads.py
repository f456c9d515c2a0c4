"""The benchmark's workloads, each run through MedSegR's pipeline and the reference path.

All questions are about the MNI152 T1 template that ships in the ``nilearn`` wheel
(``sample:brain-mri``). Every answer is exactly ``plan.answer_tokens`` tokens long
(``generation.min_new_tokens = max_new_tokens``), and its last token is forced to be
``[SEG]`` (:class:`SegAtStep`, through ``MedSegRPipeline.adjust_logits``), so that
the grounding module runs on both paths whatever the weights would have written.

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
from typing import Callable

import numpy as np

from medsegr.bench.context import (FOLLOW_UPS, MEDSEGR, PATHS, QUESTION, REFERENCE, SLICE_INDEX,
                                   VOLUME_QUESTION, BenchContext, SegAtStep, WorkloadResult,
                                   interleave)
from medsegr.bench.equality import AnswerDigest
from medsegr.bench.reference import ReferenceSession
from medsegr.bench.server_workload import concurrent_sessions
from medsegr.bench.timing import Measured, PathRun, add_phases, synchronize
from medsegr.io.images import MedicalImage
from medsegr.imaging.slicing import resolve_axis

__all__ = ["WORKLOADS", "SegAtStep", "conversation", "run_workload", "slice_question",
           "volume_question", "warm_up", "workload_names"]


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
    ``[SEG]`` on each path, so encoder, LLM and grounding module all run; with
    ``volume``, also a MedSegR volume question on a few slices (the grounding module's
    batch shape)."""
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
    "server": concurrent_sessions,
}


def workload_names() -> list[str]:
    return list(WORKLOADS)


def run_workload(name: str, ctx: BenchContext) -> WorkloadResult:
    return WORKLOADS[name](ctx)
