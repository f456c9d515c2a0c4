"""The benchmark's reference path against MedSegR's pipeline on the tiny random model
(float32, the engine's inference optimisations applied): the same text and the same
masks, exactly, while the reference really recomputes everything."""

from __future__ import annotations

import numpy as np
import pytest

from medsegr.bench.equality import AnswerDigest, Equality
from medsegr.bench.reference import ReferenceSession
from medsegr.bench.workloads import SegAtStep
from medsegr.io.images import image_from_array

ANSWER_TOKENS = 12
SEG_AT = 8


@pytest.fixture(scope="module")
def pipe():
    """A tiny model loaded like the benchmark loads one: optimised for inference, LLM in
    float32, fixed-length answers with a [SEG] placed at token SEG_AT."""
    from medsegr.config import MedSegRConfig
    from medsegr.pipeline import MedSegRPipeline

    config = MedSegRConfig.tiny()
    config.llm.cpu_int8 = False
    config.generation.max_new_tokens = config.generation.min_new_tokens = ANSWER_TOKENS
    # the random grounding module's presence logits are all a little below 0: with the
    # gate open its masks (random, but varying from pixel to pixel) reach the answers,
    # so both paths' masks are compared pixel by pixel instead of both being dropped
    config.model.presence_threshold = 0.0
    pipeline = MedSegRPipeline.load(None, config=config, device="cpu")
    assert pipeline.model.fast_llm is not None  # MedSegR's own lean decoder is what is compared
    pipeline.adjust_logits = SegAtStep(pipeline.model.seg_token_id, SEG_AT)
    return pipeline


@pytest.fixture(scope="module")
def volume():
    """A small 3-D MR volume with a bright ellipsoid, anisotropic spacing."""
    z, y, x = np.mgrid[0:4, 0:48, 0:40]
    blob = ((z - 1.5) / 2.0) ** 2 + ((y - 24) / 14) ** 2 + ((x - 20) / 11) ** 2 <= 1
    noise = np.random.default_rng(3).normal(0, 8, blob.shape)
    arr = (np.where(blob, 400.0, 40.0) + noise).astype(np.float32)
    return image_from_array(arr, spacing=(0.9, 0.9, 2.5), origin=(0.0, 0.0, 0.0),
                            direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), modality="MR")


def _same(ours, theirs) -> None:
    assert ours.raw_text == theirs.raw_text
    assert ours.raw_text.count("[SEG]") >= 1
    assert len(ours.segments) == len(theirs.segments) >= 1
    for a, b in zip(ours.segments, theirs.segments):
        assert a.name == b.name
        assert np.array_equal(a.mask, b.mask)
    assert ours.tokens["generated"] == theirs.tokens["generated"] == ANSWER_TOKENS


def test_slice_conversation_is_identical_on_both_paths(pipe, volume):
    ours, theirs = pipe.new_session(volume), ReferenceSession(pipe, volume)
    questions = ["Which structure is bright here? Segment it.", "Describe its edge.",
                 "Is it round?"]
    for turn, question in enumerate(questions):
        a = ours.ask(question, axis="axial", slice_index=2)
        b = theirs.ask(question, axis="axial", slice_index=2)
        _same(a, b)
        assert b.encoded_slices == 1  # the reference encodes the image again every turn
        assert a.encoded_slices == (1 if turn == 0 else 0)
    assert any(0 < s.voxels < s.mask.size // 4 for s in a.segments)  # a slice, not all of it
    # a new image later in the conversation: both paths show it the same way
    _same(ours.ask("And on the next slice?", slice_index=3),
          theirs.ask("And on the next slice?", slice_index=3))


def test_volume_question_is_identical_and_the_reference_runs_the_model_per_slice(pipe, volume):
    a = pipe.new_session(volume).ask("Segment the bright structure in the whole scan.",
                                     volume=True)
    session = ReferenceSession(pipe, volume)
    b = session.ask("Segment the bright structure in the whole scan.", volume=True)
    _same(a, b)
    slices = volume.shape[0]
    assert b.tokens["llm_runs"] == slices
    assert b.tokens["llm_generated"] == slices * ANSWER_TOKENS
    assert b.encoded_slices == slices
    assert len(session.slice_done_s) == slices
    assert session.slice_done_s == sorted(session.slice_done_s)
    assert a.segments[0].mask.shape == volume.shape


def test_reference_reruns_the_whole_sequence_for_every_token(pipe, volume):
    """No KV cache: every generated token costs a forward over the full sequence so far,
    and one more pass reads the [SEG] states back."""
    lengths: list[int] = []
    decoder = pipe.model.llm.get_decoder()
    handle = decoder.register_forward_hook(
        lambda module, args, kwargs, out: lengths.append(kwargs["inputs_embeds"].shape[1]),
        with_kwargs=True)
    try:
        b = ReferenceSession(pipe, volume).ask("Segment it.", slice_index=2)
    finally:
        handle.remove()
    prompt = b.tokens["prompt"]
    assert lengths == [prompt + t for t in range(ANSWER_TOKENS)] + [prompt + ANSWER_TOKENS]
    # MedSegR's path never calls the generic decoder: its lean decoder runs on the KV cache
    lengths.clear()
    handle = decoder.register_forward_hook(lambda *args: lengths.append(1))
    try:
        pipe.new_session(volume).ask("Segment it.", slice_index=2)
    finally:
        handle.remove()
    assert lengths == []


def test_equality_check_reports_differences():
    class Seg:
        def __init__(self, mask):
            self.mask = mask

    class Ans:
        def __init__(self, text, masks):
            self.raw_text, self.segments = text, [Seg(m) for m in masks]

    mask = np.zeros((4, 30, 30), dtype=bool)
    mask[1, 5:25, 5:25] = True
    nearly = mask.copy()
    nearly[1, 5, 5] = False  # one pixel of 400 flipped: Dice 0.9987
    check = Equality()
    check.add(AnswerDigest.of(Ans("same [SEG]", [mask])), AnswerDigest.of(Ans("same [SEG]", [nearly])), "a")
    assert check.passed and not check.masks_identical
    assert check.dice_min == pytest.approx(2 * 399 / 799)
    assert check.verdict.startswith("equal")
    check.add(AnswerDigest.of(Ans("one answer", [mask])), AnswerDigest.of(Ans("another", [])), "b")
    assert not check.passed and not check.text_equal and not check.segments_equal
    assert check.verdict == "FAIL"
    assert any(line.startswith("b: text differs") for line in check.differences)
