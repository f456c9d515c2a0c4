"""Measurement-guided words (:mod:`medsegr.measured_words`): where the model states a side
or a size conclusion, the engine picks the word from its measured spans.

The guide is driven as :func:`~medsegr.modeling.generation.generate` drives it, with the
real SmolLM2 tokenizer: a scripted "model" prefers the next token of its own text at each
step, and the guide may force another. The last test runs it inside ``generate`` on the
tiny model (real classes, random weights) with the script forced through the LM head.
"""

from __future__ import annotations

import numpy as np
import torch

from helpers import force_text
from medsegr.answers import Measurement, Turn, measured_span
from medsegr.evaluation.comparisons import comparative_claim
from medsegr.measured_words import MeasuredWords, display_patient_left, measured_names, size_question
from medsegr.modeling.generation import generate, prompt_keys


def _span(area: float, side: str) -> str:
    return measured_span(Measurement(mode="slice", voxels=10, area_cm2=area, volume_ml=None, side=side,
                                     intensity_mean=-850.0, intensity_sd=40.0, intensity_unit="HU",
                                     components=1, extent_mm={"right-left": 90.0, "anterior-posterior": 150.0}))


def _write(tokenizer, script: str, guide: MeasuredWords) -> str:
    """What comes out when a model that wants to write ``script`` (``{L}`` and ``{R}``
    stand for the spans the engine inserts) is guided: the script's own next token is
    preferred at each step; a span is fed whole, as the engine inserts it."""
    pieces = script.split("§")
    generated: list[int] = []
    vocab = len(tokenizer)
    for k, piece in enumerate(pieces):
        if k % 2 == 1:  # an engine span: inserted, never chosen
            generated += tokenizer.encode(piece, add_special_tokens=False)
            continue
        for want in tokenizer.encode(piece, add_special_tokens=False):
            logits = torch.zeros(vocab)
            logits[want] = 10.0
            guide(generated, logits)
            generated.append(int(torch.argmax(logits)))
    return tokenizer.decode(generated)


def _both(left: float, right: float) -> tuple[str, str]:
    return _span(left, "left"), _span(right, "right")


def test_a_size_conclusion_names_the_structure_measured_larger(tiny_model):
    tok = tiny_model.tokenizer
    left, right = _both(80.4, 95.1)
    opener = f"Measuring both, the <p>left lung</p> [SEG]§{left}§ and the <p>right lung</p> [SEG]§{right}§"
    guide = MeasuredWords(tok, patient_left="right")
    out = _write(tok, opener + ": the larger is the left lung.", guide)
    assert out.endswith(": the larger is the right lung.")
    assert guide.changes == [("left", "right lung")]
    names = ["left lung", "right lung"]
    assert comparative_claim(out.split("§")[-1], names) == ("right lung", "larger")

    guide = MeasuredWords(tok, patient_left="right")
    assert _write(tok, opener + ": the smaller is the left lung.", guide).endswith("the smaller is the left lung.")
    assert guide.changes == []  # the model's own word was already the measured one
    # "X is larger": the size word follows X's measurement
    guide = MeasuredWords(tok, patient_left="right")
    assert _write(tok, opener + ": the left lung is larger.", guide).endswith("the left lung is smaller.")
    guide = MeasuredWords(tok, patient_left="right")
    assert _write(tok, opener + ": the right lung is bigger.", guide).endswith("the right lung is bigger.")


def test_a_follow_up_compares_with_what_was_measured_before(tiny_model):
    tok = tiny_model.tokenizer
    earlier = "The <p>right kidney</p> [SEG]" + _span(21.6, "right") + "."
    guide = MeasuredWords(tok, [earlier], patient_left="right")
    out = _write(tok, f"Measuring its partner, the <p>left kidney</p> [SEG]§{_span(5.9, 'left')}§: "
                      "the larger is the left kidney.", guide)
    assert out.endswith("the larger is the right kidney.")


def test_a_size_question_is_answered_by_measuring_first(tiny_model):
    """A size question opens with the trained "Measuring" (both, or its partner), so that the
    conclusion can follow measured spans; the changed first word is on record. Other
    questions, and size questions answered that way already, are left to the model."""
    tok = tiny_model.tokenizer
    earlier = "The <p>right kidney</p> [SEG]" + _span(21.6, "right") + "."
    for question in ("Which lung looks smaller here? Segment it.", "Is it larger than the other one?",
                     "How does it compare in size with its partner? Segment the partner.",
                     "Is the other kidney bigger?"):
        assert size_question(question), question
        # nothing measured before: both are measured now
        guide = MeasuredWords(tok, patient_left="right", question=question)
        out = _write(tok, "The left lung is smaller than the right one, as the two areas show.", guide)
        assert out.startswith("Measuring both, the <p>"), out  # the scripted model goes on with its own text
        assert guide.changes == [("The", "Measuring both, the")]
        # something measured before: "Measuring", then the model's own choice
        guide = MeasuredWords(tok, [earlier], patient_left="right", question=question)
        out = _write(tok, "The left lung is smaller.", guide)
        assert out.startswith("Measuring left lung"), out
        assert guide.changes == [("The", "Measuring")]
    for question in ("Segment the left lung.", "Which is the largest organ on this slice?",
                     "Is there a lesion larger than 2 cm in the liver?",
                     "Which kidney is on the patient's left?", "What does the liver look like here?"):
        assert not size_question(question), question
        guide = MeasuredWords(tok, patient_left="right", question=question)
        assert _write(tok, "The left lung is smaller.", guide) == "The left lung is smaller."
        assert guide.changes == []
    guide = MeasuredWords(tok, [earlier], patient_left="right", question="Segment the smaller lung.")
    left, right = _both(80.4, 95.1)
    out = _write(tok, f"Measuring both, the <p>left lung</p> [SEG]§{left}§ and the <p>right lung</p> [SEG]"
                      f"§{right}§: the smaller is the left lung.", guide)
    assert out.endswith("the smaller is the left lung.") and guide.changes == []


def test_a_size_answer_concludes_once_both_are_measured(tiny_model):
    """After "Measuring both" and two measured spans the engine writes the conclusion the
    question asks for, naming what its measurements make the smaller (larger), whatever
    the model would have written there; after "Measuring its partner, the <p>" it writes
    the other-side partner of the structure measured before."""
    tok = tiny_model.tokenizer
    left, right = _both(80.4, 95.1)
    both = (f"Measuring both, the <p>left lung</p> [SEG]§{left}§ and the <p>right lung</p> [SEG]§{right}§"
            " in the chest, on both sides of the heart.")
    guide = MeasuredWords(tok, patient_left="right", question="Which lung looks smaller here? Segment it.")
    out = _write(tok, both, guide)
    assert f"{right}: the smaller is the left lung" in out, out
    # on record: the frame, and the name where the model's next word was another
    assert guide.changes == [("in", "the smaller is the"), ("both", "left lung")]
    assert comparative_claim(out.split("§")[-1], ["left lung", "right lung"]) == ("left lung", "smaller")
    guide = MeasuredWords(tok, patient_left="right", question="Segment the larger lung.")
    assert f"{right}: the larger is the right lung" in _write(tok, both, guide)
    # the first measured: the engine goes on with its partner
    guide = MeasuredWords(tok, question="Which kidney is larger here?")
    out = _write(tok, f"Measuring both, the <p>left kidney</p> [SEG]§{left}§ in the flank and in the "
                      "retroperitoneum, as expected here.", guide)
    assert f"{left} and the <p>right kidney" in out, out
    assert guide.changes == [("in", "and the right kidney")]
    # one measured, one not found: nothing to conclude from
    absent = (f"Measuring both, the <p>left kidney</p> [SEG]§{left}§ and the <p>right kidney</p> [SEG]"
              " (measured: not found).")
    guide = MeasuredWords(tok, question="Which kidney is larger here?")
    assert _write(tok, absent, guide).endswith("(measured: not found).") and guide.changes == []

    earlier = "The <p>right kidney</p> [SEG]" + _span(21.6, "right") + "."
    guide = MeasuredWords(tok, [earlier], patient_left="right", question="Is it larger than the other one?")
    out = _write(tok, f"Measuring its partner, the <p>right kidney</p> [SEG]§{_span(5.9, 'left')}§, below "
                      "the liver and beside the spine, as before.", guide)
    assert out.startswith("Measuring its partner, the <p>left kidney</p> [SEG]"), out
    assert "): the larger is the right kidney" in out, out
    assert guide.changes[:2] == [("right", "left kidney"), (",", "the larger is the")]


def test_nothing_is_concluded_for_the_model_without_two_measurements(tiny_model):
    tok = tiny_model.tokenizer
    one = f"The <p>left lung</p> [SEG]§{_span(80.4, 'left')}§: the larger is the left lung."
    guide = MeasuredWords(tok, patient_left="right")
    assert _write(tok, one, guide).endswith("the larger is the left lung.") and guide.changes == []
    tie = (f"The <p>left lung</p> [SEG]§{_span(80.4, 'left')}§ and the <p>right lung</p> [SEG]"
           f"§{_span(80.4, 'right')}§: the larger is the left lung.")
    assert _write(tok, tie, MeasuredWords(tok)).endswith("the larger is the left lung.")
    found_none = "The <p>left lung</p> [SEG] (measured: not found)."
    assert measured_names(found_none) == {}


def test_a_patient_side_is_the_measured_side_of_the_structure_named_before_it(tiny_model):
    tok = tiny_model.tokenizer
    guide = MeasuredWords(tok, patient_left="right")
    out = _write(tok, f"The <p>right cerebral hemisphere</p> [SEG]§{_span(60.0, 'right')}§ lies to the "
                      "patient's left of the midline.", guide)
    assert "lies to the patient's right of the midline" in out
    assert guide.changes == [("left", "right")]
    # measured on both sides: not a side to state, left to the model
    out = _write(tok, f"The <p>brain</p> [SEG]§{_span(120.0, 'both')}§, on the patient's left.",
                 MeasuredWords(tok, patient_left="right"))
    assert out.endswith("on the patient's left.")
    # negated: "not the patient's right" is the model's claim to make
    out = _write(tok, f"The <p>left lung</p> [SEG]§{_span(80.0, 'left')}§, not the patient's left.",
                 MeasuredWords(tok, patient_left="right"))
    assert out.endswith("not the patient's left.")


def test_image_and_patient_sides_follow_the_radiological_view(tiny_model):
    tok = tiny_model.tokenizer
    script = "The patient's left is the image left, and the lung there is the left lung."
    axial = MeasuredWords(tok, patient_left="right")
    assert _write(tok, script, axial) == "The patient's left is the image right, and the lung there is the left lung."
    # a structure named in the clause wins over the convention: its measured side
    out = _write(tok, f"The <p>right lung</p> [SEG]§{_span(90.0, 'right')}§ lies on the image right.",
                 MeasuredWords(tok, patient_left="right"))
    assert out.endswith("lies on the image left.")
    back = _write(tok, "The image right shows the patient's right.", MeasuredWords(tok, patient_left="right"))
    assert back == "The image right shows the patient's left."
    # no image side of the patient (sagittal, or no orientation): the model's words stand
    assert _write(tok, script, MeasuredWords(tok, patient_left=None)) == script
    # the first side of a sentence is the model's (it often repeats the question's)
    assert _write(tok, "The patient's right lung.", MeasuredWords(tok, patient_left="right")) == "The patient's right lung."


def test_the_radiological_view_from_the_image_direction():
    lps = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert display_patient_left(lps, 0, "CT") == "right"  # axial (numpy axis 0 = k = S)
    assert display_patient_left(lps, 1, "MR") == "right"  # coronal
    assert display_patient_left(lps, 2, "MR") is None     # sagittal: no left and right
    assert display_patient_left(lps, 0, "OT") is None     # a picture
    ras = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # stored RAS: still shown radiologically
    assert display_patient_left(ras, 0, "MR") == "right"


def test_generate_lets_the_guide_pick_the_next_token(tiny_model):
    """Inside ``generate``: the model's (forced) text says "the larger is the left lung";
    the engine's spans measured the right lung larger; the guide's name is what comes out,
    and the tokens after it are the model's again."""
    model = tiny_model
    tok = model.tokenizer
    bank = {"x": torch.zeros(model.num_visual_tokens, int(model.llm.config.hidden_size))}
    keys = prompt_keys(model, [Turn(question="Which lung is larger?", image_id="x")])
    spans = iter(_both(80.4, 95.1))

    def on_seg(turn):
        return tok.encode(next(spans), add_special_tokens=False)

    guide = MeasuredWords(tok, patient_left="right")
    script = ("Measuring both, the <p>left lung</p> [SEG] and the <p>right lung</p> [SEG]: "
              "the larger is the left lung.")
    with force_text(model, script):
        gen = generate(model, keys, bank, 64, None, on_seg=on_seg, constrain=guide)
    text = tok.decode(gen.token_ids, skip_special_tokens=False)
    assert text.endswith("the larger is the right lung.")
    assert guide.changes == [("left", "right lung")]


def test_a_slice_answer_concludes_from_what_the_engine_measured(tiny_pipeline, monkeypatch):
    """Through ``ChatSession.ask``: two real masks of different size (the right lung
    larger) measured by the engine; the model's text concludes the other way; the answer
    names the larger one, lists the changed word, and agrees with its own segments. The
    grounding module is replaced by those two masks (a trained module's output)."""
    from medsegr.evaluation.comparisons import comparison_agrees
    from medsegr.io.images import image_from_array

    from test_measured_spans import spans_on

    z, y, x = np.mgrid[0:3, 0:48, 0:64]
    body = ((y - 24) / 22.0) ** 2 + ((x - 32) / 30.0) ** 2 <= 1
    right_lung = ((y - 24) / 14.0) ** 2 + ((x - 18) / 10.0) ** 2 <= 1  # low x: the patient's right (LPS)
    left_lung = ((y - 24) / 9.0) ** 2 + ((x - 46) / 6.0) ** 2 <= 1
    hu = np.where(body, 40.0, -1000.0) + np.where(left_lung | right_lung, -840.0, 0.0)
    image = image_from_array(hu.astype(np.float32), spacing=(1.0, 1.0, 2.0), modality="CT")
    script = ("Measuring both, the <p>left lung</p> [SEG] and the <p>right lung</p> [SEG]: "
              "the larger is the left lung.")
    model = tiny_pipeline.model
    for words in (True, False):
        with spans_on(model):
            model.config.generation.measured_words = words
            session = tiny_pipeline.new_session(image)
            found = iter([left_lung, right_lung])
            monkeypatch.setattr(session, "_decode", lambda *a, **k: ([next(found)], [0.99]))
            try:
                with force_text(model, script):
                    answer = session.ask("Which lung is larger? Segment it.", slice_index=1,
                                             max_new_tokens=64)
            finally:
                model.config.generation.measured_words = True
        assert [s.name for s in answer.segments] == ["left lung", "right lung"], answer.raw_text
        assert answer.segments[1].measured.area_cm2 > answer.segments[0].measured.area_cm2
        assert [s.measured.side for s in answer.segments] == ["left", "right"]
        if words:
            assert answer.text.endswith("the larger is the right lung.")
            assert answer.engine_words == [("left", "right lung")]
            assert answer.summary()["engine_words"] == [{"model": "left", "engine": "right lung"}]
            assert comparison_agrees(answer.text, answer.segments)
        else:
            assert answer.text.endswith("the larger is the left lung.") and answer.engine_words == []
            assert not comparison_agrees(answer.text, answer.segments)


def test_a_side_stated_before_its_structure_was_measured_is_settled_after(tiny_model):
    """Once the answer is complete, a side stated before its structure's ``[SEG]`` is read
    again with the answer's measurements: the measured side replaces the model's, in the
    forms "the image ___", "the patient's ___" and "the ___ of the image"; spans, names,
    negated sides and unmeasured structures are left alone."""
    tok = tiny_model.tokenizer
    right, heart = _span(95.1, "right"), _span(60.2, "left")
    raw = f"The right lung lies on the image right of the chest: the <p>right lung</p> [SEG]{right}."
    guide = MeasuredWords(tok, patient_left="right")
    assert guide.settle(raw) == raw.replace("image right of", "image left of")
    assert guide.changes == [("right", "left")]
    raw = (f"The heart sits on the Right of the image, on the patient's right: the <p>heart</p> [SEG]{heart}; "
           f"the <p>right lung</p> [SEG]{right} is on the patient's right.")
    guide = MeasuredWords(tok, patient_left="right")
    settled = guide.settle(raw)
    assert settled == raw.replace("patient's right:", "patient's left:"), settled
    assert guide.changes == [("right", "left")]  # the image right is the heart's (radiological view)
    raw = f"The heart is on the left of the image: the <p>heart</p> [SEG]{heart}."
    guide = MeasuredWords(tok, patient_left="right")
    assert guide.settle(raw) == raw.replace("the left of", "the right of") and guide.changes == [("left", "right")]
    for raw in (f"The right lung is not on the image right: the <p>right lung</p> [SEG]{right}.",
                f"The liver is on the image left; the <p>right lung</p> [SEG]{right}.",
                "The left lung lies on the image right: the <p>left lung</p> [SEG] (measured: not found)."):
        guide = MeasuredWords(tok, patient_left="right")
        assert guide.settle(raw) == raw and guide.changes == [], raw
    # no radiological view known (a sagittal slice): image sides are not settled
    raw = f"The right lung lies on the image right: the <p>right lung</p> [SEG]{right}."
    guide = MeasuredWords(tok, patient_left=None)
    assert guide.settle(raw) == raw


def test_a_slice_answer_carries_the_settled_side(tiny_pipeline, monkeypatch):
    """Through ``ChatSession.ask``: the model states the image side of the right lung before
    its ``[SEG]``; the engine measures the mask on the patient's right and settles the
    side, in the answer, its record and the conversation; with ``measured_words`` off the
    model's word stays."""
    from medsegr.io.images import image_from_array

    from test_measured_spans import spans_on

    z, y, x = np.mgrid[0:3, 0:48, 0:64]
    right_lung = ((y - 24) / 14.0) ** 2 + ((x - 18) / 10.0) ** 2 <= 1  # low x: the patient's right (LPS)
    hu = np.where(right_lung, -840.0, 40.0)
    image = image_from_array(hu.astype(np.float32), spacing=(1.0, 1.0, 2.0), modality="CT")
    script = "The right lung lies on the image right: the <p>right lung</p> [SEG]."
    model = tiny_pipeline.model
    for words in (True, False):
        with spans_on(model):
            model.config.generation.measured_words = words
            session = tiny_pipeline.new_session(image)
            monkeypatch.setattr(session, "_decode", lambda *a, **k: ([right_lung], [0.99]))
            try:
                with force_text(model, script):
                    answer = session.ask("Segment the right lung.", slice_index=1, max_new_tokens=48)
            finally:
                model.config.generation.measured_words = True
        assert answer.segments[0].measured.side == "right", answer.raw_text
        if words:
            assert answer.text.startswith("The right lung lies on the image left:"), answer.text
            assert answer.engine_words == [("right", "left")]
            assert "image left" in session.turns[-1].answer and "image left" in answer.raw_text
        else:
            assert answer.text.startswith("The right lung lies on the image right:") and answer.engine_words == []
