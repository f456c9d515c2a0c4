"""The engine suite's question workloads, each run inside its own worker process.

- ``slice``: one untimed warm-up question, then ``reps`` questions about axial slice
  90, each on a new session so that the image encoder runs every time, streamed: the
  time from the end of encoding (the pipeline's ``answering`` progress report) to the
  first non-empty piece of text is ``first_text_s``;
- ``followup``: ``reps`` pairs of a first question and a follow-up on the same
  session and slice (embedding and KV cache reused);
- ``volume``: a volume question on ``volume_slices`` consecutive axial slices, after
  an untimed warm-up question. The untrained base parts almost never write
  ``[SEG]``, so the last answer token is forced to be ``[SEG]``
  (:class:`~medsegr.bench.context.SegAtStep` through
  ``MedSegRPipeline.adjust_logits``), and the grounding module runs on every slice.

Timings are the answers' own (``Answer.timings``). Peak memory is the process's
``ru_maxrss``, also noted after loading, after the warm-up and (volume) at the
pipeline's progress reports (after encoding; after the masks, kept connected), to show which phase
sets the peak.
"""

from __future__ import annotations

import time
from typing import Any

from medsegr.bench.context import SegAtStep, sub_volume
from medsegr.bench.cpu_load import ForeignCpu, wait_for_quiet
from medsegr.bench.engine_plan import ANSWER_TOKENS, engine_config
from medsegr.bench.memory import process_peak_rss_mib
from medsegr.bench.questions import (FOLLOW_UPS, QUESTION, SAMPLE, SLICE_INDEX, VOLUME_QUESTION,
                                     WARMUP_QUESTION)
from medsegr.cli.samples import sample_path
from medsegr.imaging.slicing import resolve_axis
from medsegr.io.images import MedicalImage, load_image
from medsegr.pipeline import MedSegRPipeline

FOLLOWUP_QUESTION = FOLLOW_UPS[0]


class Quiet:
    """Before each repetition, wait up to ``wait_idle_s`` for the machine to go quiet."""

    def __init__(self, wait_idle_s: float) -> None:
        self.wait_idle_s = wait_idle_s
        self.waited_s = 0.0

    def wait(self) -> None:
        self.waited_s += wait_for_quiet(self.wait_idle_s)[0]


def answer_record(answer: Any) -> dict[str, Any]:
    """The numbers of one :class:`~medsegr.answers.Answer`."""
    timings = {k: float(v) for k, v in answer.timings.items()}
    generated = int(answer.tokens.get("generated", 0))
    decode_s = timings.get("decode", 0.0)
    return {
        "timings": timings,
        "tokens": {k: int(v) for k, v in answer.tokens.items()},
        "encoded_slices": int(answer.encoded_slices),
        "segments": len(answer.segments),
        #: structures the answer named that the grounding module did not find (no segment)
        "not_found": len(answer.not_found),
        "decode_tok_per_s": generated / decode_s if decode_s > 0 else float("nan"),
        "text": answer.text[:160],
    }


def _load(device: str, model: str) -> tuple[MedSegRPipeline, MedicalImage, dict[str, Any]]:
    t0 = time.perf_counter()
    pipe = MedSegRPipeline.load(None, config=engine_config(model), device=device)
    t1 = time.perf_counter()
    image = load_image(sample_path(SAMPLE))
    t2 = time.perf_counter()
    return pipe, image, {"load_s": t1 - t0, "image_load_s": t2 - t1,
                         "rss_after_load_mib": process_peak_rss_mib()}


def _warm_up(pipe: MedSegRPipeline, image: MedicalImage, slice_index: int) -> Any:
    return pipe.new_session(image).ask(WARMUP_QUESTION, axis="axial", slice_index=slice_index)


def slice_workload(device: str, model: str, reps: int, quiet: Quiet) -> dict[str, Any]:
    """A fresh session per repetition, so every question encodes its slice."""
    pipe, image, setup = _load(device, model)
    warm = _warm_up(pipe, image, SLICE_INDEX)
    setup["rss_after_warmup_mib"] = process_peak_rss_mib()
    runs, session_s = [], []
    for _ in range(reps):
        quiet.wait()
        t = time.perf_counter()
        session = pipe.new_session(image)
        session_s.append(time.perf_counter() - t)
        marks: dict[str, float] = {}
        with ForeignCpu() as load:
            answer = session.ask(QUESTION, axis="axial", slice_index=SLICE_INDEX,
                                 on_token=lambda piece: _mark(marks, "text", bool(piece)),
                                 on_progress=lambda stage, *_: _mark(marks, stage, True))
        first_text = (marks["text"] - marks["answering"]
                      if "text" in marks and "answering" in marks else None)
        runs.append({**answer_record(answer), "first_text_s": first_text,
                     "foreign_cores": load.cores})
    return {**setup, "image_shape": list(image.shape), "warmup": answer_record(warm),
            "new_session_s": session_s, "runs": runs, "waited_s": quiet.waited_s}


def _mark(marks: dict[str, float], name: str, when: bool) -> None:
    """Note the first time ``name`` happens (when ``when``)."""
    if when and name not in marks:
        marks[name] = time.perf_counter()


def followup_workload(device: str, model: str, reps: int, quiet: Quiet) -> dict[str, Any]:
    """First question, then a follow-up on the same session and slice."""
    pipe, image, setup = _load(device, model)
    warm = _warm_up(pipe, image, SLICE_INDEX)
    pairs = []
    for _ in range(reps):
        quiet.wait()
        session = pipe.new_session(image)
        with ForeignCpu() as load:
            first = session.ask(QUESTION, axis="axial", slice_index=SLICE_INDEX)
            follow = session.ask(FOLLOWUP_QUESTION, axis="axial", slice_index=SLICE_INDEX)
        f_rec, u_rec = answer_record(first), answer_record(follow)
        pairs.append({"first": f_rec, "followup": u_rec, "foreign_cores": load.cores,
                      "ratio": u_rec["timings"]["total"] / f_rec["timings"]["total"]})
    return {**setup, "warmup": answer_record(warm), "pairs": pairs, "waited_s": quiet.waited_s}


def volume_workload(device: str, model: str, count: int, quiet: Quiet) -> dict[str, Any]:
    """A volume question on ``count`` slices, its last answer token forced to ``[SEG]``."""
    pipe, image, setup = _load(device, model)
    volume, lo = sub_volume(image, count)
    axis = resolve_axis("axial", volume.direction)
    del image
    warm = _warm_up(pipe, volume, volume.shape[axis] // 2)  # first-call costs, untimed
    setup["rss_after_warmup_mib"] = process_peak_rss_mib()
    milestones: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "encoding":
            milestones["after_encode"] = process_peak_rss_mib()
        elif stage == "masks" and done == total:
            milestones["after_masks"] = process_peak_rss_mib()

    pipe.adjust_logits = SegAtStep(pipe.model.seg_token_id, ANSWER_TOKENS - 1)
    quiet.wait()
    t = time.perf_counter()
    session = pipe.new_session(volume)
    new_session_s = time.perf_counter() - t
    with ForeignCpu() as load:
        answer = session.ask(VOLUME_QUESTION, axis="axial", volume=True, on_progress=progress)
    record = answer_record(answer)
    record["text"] = answer.raw_text[:200]
    return {**setup, "slices": volume.shape[axis], "first_slice": lo, "axis": axis,
            "volume_shape": list(volume.shape), "key_slices": list(answer.key_slices),
            "new_session_s": new_session_s, "warmup": answer_record(warm),
            "answer": record, "voxels": [int(s.voxels) for s in answer.segments],
            "forced_seg": True, "forced_seg_s": 0.0,
            "foreign_cores": load.cores, "waited_s": quiet.waited_s,
            "rss_milestones_mib": {"after_load": setup["rss_after_load_mib"],
                                   "after_warmup": setup["rss_after_warmup_mib"],
                                   **milestones, "end": process_peak_rss_mib()}}
