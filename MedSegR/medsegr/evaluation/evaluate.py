"""``medsegr eval``: run the pipeline on a dataset split, as a user would, and score it.

Each record becomes one chat session; its turns are asked in order (follow-ups see
the model's own earlier answers, as in real use). For every expected mask the
answer's segment named like it (else the one in the same position,
:func:`pair_segments`) is compared with the ground truth on the record's slice. Text
side: an answer that should segment something names every expected structure; an
answer to an "absent" question gives no mask; every fact an answer states (side, area,
size, count, density) is checked against the slice's ground-truth masks
(:mod:`medsegr.evaluation.facts`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsegr.data.records import absent_name
from medsegr.answers import strip_measured_spans
from medsegr.evaluation.comparisons import comparison_agrees
from medsegr.evaluation.metrics import MaskScore, summarise
from medsegr.training.examples import ImageStore


@dataclass
class TurnResult:
    record_id: str
    subject: str
    turn: int
    question_type: str
    question: str
    answer: str
    expected: list[str]          # structure names expected, in [SEG] order
    predicted: list[str]         # segment names the answer gave
    scores: list[MaskScore]      # one per expected mask
    named_right: bool | None     # None for absent questions; by name or vocabulary code
    absent_ok: bool | None       # None unless the question is about an absent structure
    seconds: float
    references: dict[str, list[MaskScore]] = field(default_factory=dict)
    #: facts the answer states (side, area, size, count, density) and whether each is
    #: true of the slice (:mod:`medsegr.evaluation.facts`): (kind, stated text, ok)
    facts: list[tuple[str, str, bool]] = field(default_factory=list)
    #: the names the answer wrote before its [SEG]s, in order, and the grounding
    #: module's presence probability of each (:attr:`medsegr.answers.Answer.presence`)
    seg_names: list[str] = field(default_factory=list)
    presence: list[float] = field(default_factory=list)
    #: a size (comparative) question: whether the answer's conclusion agrees with the
    #: engine's measurements of its segments (:mod:`medsegr.evaluation.comparisons`)
    comparative_ok: bool | None = None
    #: the words the engine picked from its measurements where the model had written
    #: another (:attr:`medsegr.answers.Answer.engine_words`): (the model's, the engine's)
    engine_words: list[tuple[str, str]] = field(default_factory=list)
    #: every expected structure mentioned by its own name (``named_right`` also takes a
    #: segment name coded as the same vocabulary entry)
    named_as_written: bool | None = None


@dataclass
class EvalReport:
    checkpoint: str
    dataset: str
    split: str
    fine_tuned: bool
    turns: list[TurnResult]
    seconds: float

    # -- aggregates -----------------------------------------------------------
    def mask_rows(self, method: str = "medsegr") -> list[tuple[TurnResult, str, MaskScore]]:
        rows = []
        for t in self.turns:
            scores = t.scores if method == "medsegr" else t.references.get(method, [])
            rows.extend((t, name, s) for name, s in zip(t.expected, scores))
        return rows

    def methods(self) -> list[str]:
        found = sorted({m for t in self.turns for m in t.references})
        return ["medsegr", *found]

    def by(self, key: str, method: str = "medsegr") -> dict[str, dict[str, float | int]]:
        groups: dict[str, list[MaskScore]] = defaultdict(list)
        for turn, name, score in self.mask_rows(method):
            groups[name if key == "structure" else turn.question_type].append(score)
        return {k: summarise(v) for k, v in sorted(groups.items())}

    def text_metrics(self) -> dict[str, float | int]:
        named = [t.named_right for t in self.turns if t.named_right is not None]
        written = [t.named_as_written for t in self.turns if t.named_as_written is not None]
        absent = [t.absent_ok for t in self.turns if t.absent_ok is not None]
        facts = [ok for t in self.turns for _, _, ok in t.facts]
        compared = [t.comparative_ok for t in self.turns if t.comparative_ok is not None]
        return {
            "facts_stated": len(facts),
            "facts_correct_rate": float(np.mean(facts)) if facts else float("nan"),
            "answers_with_structures": len(named),
            "named_right_rate": float(np.mean(named)) if named else float("nan"),
            "named_as_written_rate": float(np.mean(written)) if written else float("nan"),
            "absent_questions": len(absent),
            "absent_without_mask_rate": float(np.mean(absent)) if absent else float("nan"),
            "false_claim_rate": float(np.mean([not a for a in absent])) if absent else float("nan"),
            "comparative_questions": len(compared),
            "comparative_agree_rate": float(np.mean(compared)) if compared else float("nan"),
            "answers_with_engine_words": sum(bool(t.engine_words) for t in self.turns),
        }

    def to_dict(self) -> dict[str, Any]:
        methods = self.methods()
        return {
            "checkpoint": self.checkpoint, "dataset": self.dataset, "split": self.split,
            "fine_tuned": self.fine_tuned, "seconds": round(self.seconds, 1),
            "overall": {m: summarise(s for _, _, s in self.mask_rows(m)) for m in methods},
            "by_question_type": {m: self.by("type", m) for m in methods},
            "by_structure": {m: self.by("structure", m) for m in methods},
            "text": self.text_metrics(),
            "turns": [{**{k: v for k, v in dataclasses.asdict(t).items()
                          if k not in ("scores", "references")},
                       "dice": [round(s.dice, 4) for s in t.scores],
                       "iou": [round(s.iou, 4) for s in t.scores],
                       "reference_dice": {m: [round(s.dice, 4) for s in v]
                                          for m, v in t.references.items()}}
                      for t in self.turns],
        }


def is_heldout_wording(record: Any) -> bool:
    """Whether ``record`` asks in the held-out wordings (never trained on)."""
    from medsegr.data.conversations import TEMPLATES_ATTRIBUTE

    return (record.attributes or {}).get(TEMPLATES_ATTRIBUTE) == "heldout"


def names_structure(answer: str, name: str) -> bool:
    """Whether the answer text mentions ``name`` (case-, space- and underscore-insensitive)."""
    def norm(text: str) -> str:
        return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "

    return norm(name) in norm(answer)


def codes_structure(segment_names: list[str], name: str) -> bool:
    """Whether one of the answer's segment names (the names before its ``[SEG]``s) is
    coded as the same vocabulary entry as ``name`` (:func:`medsegr.vocabulary.lookup`: a
    synonym, "splenic parenchyma" for the spleen): the segment the user gets carries
    that structure's code."""
    from medsegr.vocabulary import lookup

    entry = lookup(name)
    return entry is not None and any(
        (found := lookup(given)) is not None and found.key == entry.key for given in segment_names)


def per_source_sample(records: list[Any], per_source: int) -> list[Any]:
    """At most ``per_source`` records of each source, evenly spaced through that source's
    records in dataset order (record ``i * n // k`` of ``n``), in dataset order: a quick
    split that still covers every source."""
    if per_source < 1:
        raise ValueError("per_source must be at least 1")
    positions: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        positions.setdefault(record.source, []).append(position)
    keep: set[int] = set()
    for members in positions.values():
        k = min(per_source, len(members))
        keep.update(members[i * len(members) // k] for i in range(k))
    return [record for position, record in enumerate(records) if position in keep]


def evaluate(pipeline: Any, root: str | Path, split: str = "test", references: bool = True,
             limit: int | None = None, progress: bool = True,
             per_source: int | None = None, templates: str = "trained") -> EvalReport:
    """Ask every record's conversation of ``split`` (or a ``per_source`` sample, the
    first ``limit``) and score the answers. ``templates``: the records asked in the
    training wordings (``"trained"``), in the held-out wordings (``"heldout"``, the test
    split's ``-t`` records) or ``"all"``."""
    from tqdm import tqdm

    from medsegr.data.records import load_dataset
    from medsegr.evaluation.facts import slice_ground_truth
    from medsegr.evaluation.references import OracleBox, otsu_floor
    from medsegr.prompts import clean_answer, segment_names

    root = Path(root)
    records = load_dataset(root, split)
    if templates not in ("trained", "heldout", "all"):
        raise ValueError(f"templates must be trained, heldout or all, not {templates!r}")
    if templates != "all":
        want = templates == "heldout"
        records = [r for r in records if is_heldout_wording(r) == want]
    if per_source is not None:
        records = per_source_sample(records, per_source)
    if limit is not None:
        records = records[:limit]
    store = ImageStore()
    oracle = OracleBox(pipeline.model.config.vision) if references else None
    seg_token = pipeline.model.config.model.seg_token
    results: list[TurnResult] = []
    t_start = time.perf_counter()
    for record in tqdm(records, desc=f"evaluating {split}", unit="record", disable=not progress):
        image = record.load_image(store.cache)
        if record.modality and record.modality != image.modality:
            image = dataclasses.replace(image, modality=record.modality)
        session = pipeline.new_session(image, window=record.window)
        view = record.slice_view(store.cache)
        axis, index = view.axis, view.index
        truths = {key: view.extract(mask) for key, mask in record.mask_arrays(store.cache).items()}
        names = {spec.key: spec.name for spec in record.masks}
        shown01 = view.extract(session.volume01)
        truth = slice_ground_truth(record, store.cache)
        earlier: list[Any] = []  # the conversation's segments so far: a follow-up compares with them
        for k, turn in enumerate(record.conversation):
            t0 = time.perf_counter()
            answer = session.ask(turn.question, axis=axis, slice_index=index)
            seconds = time.perf_counter() - t0
            predicted = _by_seg_position(answer, seg_token, view)
            qtype = str(turn.type)
            is_absent = qtype == "absent" or (not turn.masks and seg_token not in turn.answer)
            scores = []
            # an absent structure's [SEG] (named, then measured "not found") has no mask to score
            expected_keys = [] if is_absent else list(turn.masks)
            seg_names = segment_names(answer.raw_text, seg_token)
            pairs = pair_segments([names.get(key, key) for key in expected_keys], seg_names)
            for key, j in zip(expected_keys, pairs):
                found = predicted[j] if j is not None and j < len(predicted) else None
                pred = found if found is not None else np.zeros_like(truths[key])
                scores.append(MaskScore.of(pred, truths[key]))
            # the model's own words: the engine's measured spans are not its statements
            spoken = strip_measured_spans(answer.raw_text)
            text = clean_answer(spoken, seg_token)
            result = TurnResult(
                record_id=record.id, subject=record.subject, turn=k + 1, question_type=qtype,
                question=turn.question, answer=text,
                expected=[names[m] if m in names else absent_name(m) for m in turn.masks],
                predicted=[s.name for s in answer.segments], scores=scores,
                named_right=None if is_absent or not turn.masks else all(
                    names_structure(text, names[m]) or codes_structure(seg_names, names[m])
                    for m in turn.masks),
                named_as_written=None if is_absent or not turn.masks else all(
                    names_structure(text, names[m]) for m in turn.masks),
                absent_ok=(len(answer.segments) == 0) if is_absent else None,
                seconds=seconds,
                facts=[(c.kind, c.text, bool(c.ok)) for c in truth.check(spoken)],
                seg_names=seg_names,
                presence=list(answer.presence),
                comparative_ok=(comparison_agrees(text, [*earlier, *answer.segments])
                                if turn.reasoning == "size" else None),
                engine_words=list(answer.engine_words))
            earlier.extend(answer.segments)
            if references and turn.masks and not is_absent:
                assert oracle is not None
                embedding = session.embeddings(axis, [index])[0][0]  # cached: not re-encoded
                result.references["oracle_box"] = [
                    MaskScore.of(oracle.predict(shown01, truths[m], view.pixel_spacing, embedding),
                                 truths[m])
                    for m in turn.masks]
                floor = otsu_floor(shown01)
                result.references["otsu"] = [MaskScore.of(floor, truths[m]) for m in turn.masks]
            results.append(result)
    return EvalReport(checkpoint=str(pipeline.checkpoint or "base parts"), dataset=str(root),
                      split=(split if per_source is None else f"{split} (at most {per_source} per source)")
                      + ("" if templates == "trained" else f", {templates} wordings"),
                      fine_tuned=pipeline.model.fine_tuned, turns=results,
                      seconds=time.perf_counter() - t_start)



def pair_segments(expected: list[str], named: list[str]) -> list[int | None]:
    """Which ``[SEG]`` of the answer (by position in ``named``, the names the answer gave
    its ``[SEG]`` markers) is scored against each expected structure: the one named
    like it (case-insensitive) when there is one, else the ``[SEG]`` at the same
    position if no other structure took it, else the first one left. An answer may name
    the structures of "the larger of the two kidneys" or "the brain and the head" in
    either order; the masks are scored against the structure they were named for."""
    taken: set[int] = set()
    out: list[int | None] = [None] * len(expected)
    for j, name in enumerate(expected):
        match = next((i for i, given in enumerate(named)
                      if i not in taken and given.strip().lower() == name.strip().lower()), None)
        if match is not None:
            out[j] = match
            taken.add(match)
    for j in range(len(expected)):
        if out[j] is not None:
            continue
        left = [i for i in range(len(named)) if i not in taken]
        if not left:
            break
        out[j] = j if j in left else left[0]
        taken.add(out[j])
    return out


def _by_seg_position(answer: Any, seg_token: str, view: Any) -> list[np.ndarray | None]:
    """The slice mask of each ``[SEG]`` of the answer, in order; None where the grounding
    module found nothing (the structure is in ``answer.not_found`` and has no segment)."""
    from medsegr.prompts import segment_names

    missing = list(answer.not_found)
    kept = iter(answer.segments)
    out: list[np.ndarray | None] = []
    for name in segment_names(answer.raw_text, seg_token):
        if name in missing:
            missing.remove(name)
            out.append(None)
            continue
        seg = next(kept, None)
        out.append(None if seg is None else view.extract(seg.mask))
    return out
