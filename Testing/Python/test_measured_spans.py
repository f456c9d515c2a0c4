"""Measured spans: after each ``[SEG]`` the engine decodes the mask and writes what it
measured into the conversation; training conversations carry the same spans as tokens
the model reads but is never trained to write.

On the tiny model (real classes, random weights) with the real SmolLM2 tokenizer; the
``[SEG]``s are forced through the LM head (:func:`helpers.force_seg`).
"""

from __future__ import annotations

import contextlib
import re
import types

import numpy as np
import pytest
import torch

from helpers import force_seg, grounding_finds_everything
from medsegr.answers import (MEASURED_OPEN, Measurement, Segment, measured_span, strip_measured_spans)
from medsegr.evaluation.comparisons import comparative_claim, comparison_agrees
from medsegr.modeling.generation import generate, prompt_keys
from medsegr.answers import Turn
from medsegr.training.examples import IGNORE, conversation_tokens, with_spans

SPAN_RE = re.compile(r"\[SEG\] \(measured: [^()]*\)")


def _measurement(area: float, side: str = "left", voxels: int = 10) -> Measurement:
    return Measurement(mode="slice", voxels=voxels, area_cm2=area, volume_ml=None, side=side,
                       intensity_mean=35.2, intensity_sd=12.1, intensity_unit="HU", components=1,
                       extent_mm={"right-left": 41.0, "anterior-posterior": 58.2})


@contextlib.contextmanager
def spans_on(model):
    model.config.model.measured_spans = True
    try:
        yield model
    finally:
        model.config.model.measured_spans = False


@contextlib.contextmanager
def grounding_finds_nothing(model):
    """The random grounding module's presence logits pushed far below the gate."""
    bias = model.grounding.presence[-1].bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.fill_(-30.0)
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def test_a_span_is_short_text_the_model_reads():
    m = _measurement(12.34)
    assert measured_span(m) == " (measured: 12.3 cm², patient's left, 35 ± 12 HU, 1 piece, 41 × 58 mm)"
    assert measured_span(None) == " (measured: not found)"
    assert measured_span(_measurement(0.0, voxels=0)) == " (measured: not found)"
    text = "The <p>left kidney</p> [SEG]" + measured_span(m) + ", on the image right."
    assert strip_measured_spans(text) == "The <p>left kidney</p> [SEG], on the image right."
    assert with_spans("a [SEG] b [SEG].", [" (measured: x)", " (measured: y)"], "[SEG]") == \
        "a [SEG] (measured: x) b [SEG] (measured: y)."
    with pytest.raises(Exception, match="2 \\[SEG\\] markers but 1"):
        with_spans("a [SEG] b [SEG].", [" (measured: x)"], "[SEG]")


def test_training_tokens_read_the_span_and_learn_what_follows(tiny_model):
    model = tiny_model
    tok = model.tokenizer
    span = measured_span(_measurement(21.6, "right"))
    first = types.SimpleNamespace(question="Segment the right kidney.",
                                  answer="The <p>right kidney</p> [SEG].")
    second = types.SimpleNamespace(question="Now the left one.", answer="Across the midline: the "
                                   "<p>left kidney</p> [SEG], on the image right.")
    spans = [[span], [measured_span(_measurement(5.9))]]
    with spans_on(model):
        ids, labels = conversation_tokens(model, [first, second], spans)
    off_ids, off_labels = conversation_tokens(model, [first, second], spans)  # the setting is off
    assert MEASURED_OPEN.strip() not in tok.decode(off_ids)

    # the last answer: [SEG], then exactly the span's own tokens (as the engine inserts
    # them), unlabelled, then the text after it, labelled
    seg_at = [i for i, t in enumerate(ids) if t == model.seg_token_id][-2:]  # (the system
    assert labels[seg_at[0]] == model.seg_token_id                          # prompt has one)
    span_ids = tok.encode(spans[1][0], add_special_tokens=False)
    after = seg_at[1] + 1
    assert ids[after:after + len(span_ids)] == span_ids
    assert all(lab == IGNORE for lab in labels[after:after + len(span_ids)])
    assert labels[seg_at[1]] == model.seg_token_id
    rest = tok.encode(", on the image right.", add_special_tokens=False)
    assert ids[after + len(span_ids):after + len(span_ids) + len(rest)] == rest
    assert labels[after + len(span_ids)] == rest[0]
    # the earlier answer (inside the prompt): its span is there and unlabelled too
    history = tok.decode(ids[:seg_at[1]])
    assert span.strip() in history
    labelled = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])
    assert "measured" not in labelled and "21.6" not in labelled and "5.9" not in labelled
    assert "on the image right" in labelled


def test_generation_inserts_the_engine_tokens_after_each_seg(tiny_model):
    model = tiny_model
    bank = {"x": torch.zeros(model.num_visual_tokens, int(model.llm.config.hidden_size))}
    keys = prompt_keys(model, [Turn(question="Segment it.", image_id="x")])
    inserted = model.tokenizer.encode(" (measured: not found)", add_special_tokens=False)
    seen = []

    def on_seg(turn):
        seen.append((len(turn.token_ids), turn.seg_states.shape[0]))
        return inserted

    streamed = []
    with force_seg(model, {2, 5}):
        gen = generate(model, keys, bank, 8, None, min_new_tokens=8, on_seg=on_seg,
                       on_token=lambda t: streamed.append(t))
    assert [k for _, k in seen] == [1, 2]  # called with each new [SEG]'s state in place
    assert len(gen.token_ids) == 8 + 2 * len(inserted)  # the spans do not count
    assert len(streamed) == 8  # only the model's own tokens are streamed
    for at in [i for i, t in enumerate(gen.token_ids) if t == model.seg_token_id]:
        assert gen.token_ids[at + 1:at + 1 + len(inserted)] == inserted
    assert len(gen.inserted) == 2 * len(inserted)
    assert gen.token_states is not None and gen.token_states.shape[0] == len(gen.token_ids) - 1


def test_the_pipeline_writes_what_it_measured_after_each_seg(tiny_pipeline, anisotropic_volume):
    img, _ = anisotropic_volume
    model = tiny_pipeline.model
    with spans_on(model):
        session = tiny_pipeline.new_session(img)
        pieces: list[str] = []
        with force_seg(model, {1, 4}), grounding_finds_everything(model):
            answer = session.ask("Segment the organ.", slice_index=6, on_token=pieces.append)
        assert len(answer.segments) == 2
        spans = SPAN_RE.findall(answer.raw_text)
        assert len(spans) == 2
        # the span is the slice answer's own measurement of the segment's mask
        for found, seg in zip(spans, answer.segments):
            assert found == "[SEG]" + measured_span(seg.measured)
        assert "measured" not in answer.text and "measured" not in "".join(pieces)
        assert session.turns[0].answer == answer.raw_text  # the follow-up reads them too
        inserted = sum(len(model.tokenizer.encode(s[5:], add_special_tokens=False)) for s in spans)
        assert answer.tokens["inserted"] == inserted  # not counted as generated
        follow = session.ask("And again?", slice_index=6)
        assert follow.tokens["reused"] > 0

        # nothing found: the span says so and the structure gets no segment
        with force_seg(model, {1}), grounding_finds_nothing(model):
            missing = session.ask("Segment the liver.", slice_index=6)
        assert "[SEG] (measured: not found)" in missing.raw_text
        assert missing.segments == [] and len(missing.not_found) == 1
        assert "Not found in this slice" in missing.text


def test_without_the_setting_nothing_is_inserted(tiny_pipeline, anisotropic_volume):
    img, _ = anisotropic_volume
    session = tiny_pipeline.new_session(img)
    with force_seg(tiny_pipeline.model, {1}), grounding_finds_everything(tiny_pipeline.model):
        answer = session.ask("Segment the organ.", slice_index=6)
    assert "[SEG]" in answer.raw_text and "measured" not in answer.raw_text


def _segment(name: str, area: float) -> Segment:
    return Segment(name=name, mask=np.ones((1, 2, 2), bool), index=0, measured=_measurement(area))


@pytest.mark.parametrize("text, claim", [
    ("Comparing the right kidney and the left kidney: the larger is the right kidney.", ("right kidney", "larger")),
    ("Measuring both, the left lung against the right lung: the left lung is smaller.", ("left lung", "smaller")),
    ("The right kidney and the left kidney; by area the bigger one is the left kidney.", ("left kidney", "larger")),
    ("The right kidney and the left kidney.", None),
])
def test_a_comparative_conclusion_is_read_from_the_answer(text, claim):
    assert comparative_claim(text, ["right kidney", "left kidney", "right lung", "left lung"]) == claim


def test_a_comparison_agrees_only_with_the_engines_measurements():
    both = [_segment("right kidney", 21.6), _segment("left kidney", 5.9)]
    assert comparison_agrees("… the larger is the right kidney.", both)
    assert not comparison_agrees("… the larger is the left kidney.", both)
    assert comparison_agrees("… the left kidney is smaller.", both)
    # one segment (the other not found, or never segmented): nothing to compare with
    assert not comparison_agrees("… the larger is the right kidney.", both[:1])
    assert not comparison_agrees("The right kidney and the left kidney.", both)


def test_training_examples_read_what_the_engine_measures_on_the_ground_truth(tmp_path, tiny_model):
    """The spans of a training conversation are the engine's own measurement
    (:func:`~medsegr.imaging.measurements.measure_segment`, a slice answer's) of each
    [SEG]'s ground-truth mask on the record's slice; an absent structure's reads "not
    found"."""
    import json

    from helpers import make_dataset
    from medsegr.data.records import load_dataset
    from medsegr.imaging.measurements import measure_segment
    from medsegr.training.examples import ImageStore, make_example, slice_input
    from medsegr.training.grounding_data import build_items

    root = make_dataset(tmp_path / "data")
    lines = (root / "train.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["conversation"][2] = {"question": "Is the liver visible?", "type": "absent",
                                "answer": "Looking for the <p>liver</p> [SEG]: not on this slice.",
                                "masks": ["absent:liver"], "reasoning": "absent"}
    (root / "train.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    record = load_dataset(root, "train")[0]
    store = ImageStore()
    item = slice_input(record, store, tiny_model.vision.image_size)
    with spans_on(tiny_model):
        with pytest.raises(ValueError, match="need the record's images"):
            make_example(record, tiny_model, item, 600)
        ex = make_example(record, tiny_model, item, 600, store)
        items = build_items(tiny_model, [record], tiny_model.grounding.config.size, 3)
    text = tiny_model.tokenizer.decode(ex.input_ids)
    image = record.load_image(store.cache)
    truth = record.mask_arrays(store.cache)
    view = item.view
    for key in ("kidney", "lesion"):
        only = np.zeros(image.shape, dtype=bool)
        where = [slice(None)] * 3
        where[view.axis] = view.index
        only[tuple(where)] = truth[key][tuple(where)]
        span = measured_span(measure_segment(image, only, volume=False, axis=view.axis))
        assert f"[SEG]{span}" in text
    assert "[SEG] (measured: not found): not on this slice." in text
    assert ex.masks.shape[0] == 3 and not ex.masks[2].any()  # the absent key: an empty mask
    labelled = tiny_model.tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
    assert "measured" not in labelled
    # the grounding stage's sequences carry the same spans (later [SEG] states read them)
    grounding_text = tiny_model.tokenizer.decode(items[0].input_ids)
    assert all(span in grounding_text for span in re.findall(r"\[SEG\] \(measured: [^()]*\)", text))
    assert items[0].keys[:3] == ["kidney", "lesion", "absent:liver"]
    assert not items[0].targets[2].any()
