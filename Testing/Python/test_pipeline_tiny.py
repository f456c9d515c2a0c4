"""The chat pipeline on the tiny model: geometry, sessions, volume mode, hints, errors."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import force_seg, grounding_says_present
from medsegr.errors import InputError
from medsegr.answers import Hints
from medsegr.pipeline import Cancelled


def test_slice_answer_masks_live_on_the_source_grid(tiny_pipeline, anisotropic_volume):
    img, _ = anisotropic_volume
    session = tiny_pipeline.new_session(img)
    with force_seg(tiny_pipeline.model, {1, 4}):
        answer = session.ask("Segment the organ.", axis="axial", slice_index=6)
    assert answer.mode == "slice" and answer.slice_index == 6
    assert len(answer.segments) == 2
    for seg in answer.segments:
        assert seg.mask.shape == img.shape and seg.mask.dtype == bool
        other = np.delete(seg.mask, 6, axis=0)
        assert not other.any()  # nothing outside the asked slice
    assert answer.encoded_slices == 1
    assert not answer.fine_tuned


def test_follow_up_reuses_embedding_and_kv_cache(tiny_pipeline, anisotropic_volume):
    img, _ = anisotropic_volume
    session = tiny_pipeline.new_session(img)
    first = session.ask("What is in this slice?", slice_index=5)
    calls = session.encoder_calls
    second = session.ask("And where exactly?", slice_index=5)
    assert session.encoder_calls == calls == 1  # measured: no second encoder call
    assert second.encoded_slices == 0
    assert second.tokens["reused"] > first.tokens["prompt"] - 5
    third = session.ask("And on the next slice?", slice_index=6)  # new image joins the chat
    assert third.encoded_slices == 1
    assert len(session.turns) == 3
    session.reset()
    assert session.turns == [] and session.encoder_calls == 2


def test_volume_mode_runs_the_llm_once_and_decodes_every_slice(tiny_pipeline, anisotropic_volume):
    img, _ = anisotropic_volume
    session = tiny_pipeline.new_session(img)
    with force_seg(tiny_pipeline.model, {2}) as hook:
        answer = session.ask("Segment the organ in the whole scan.", volume=True)
    assert answer.mode == "volume" and answer.encoded_slices == img.shape[0]
    assert hook.calls <= answer.tokens["generated"] + 1  # one LLM pass, not one per slice
    assert len(answer.segments) == 1
    assert answer.segments[0].mask.shape == img.shape
    again = session.ask("Segment it again.", volume=True)
    assert again.encoded_slices == 0


def test_hints_are_accepted_and_checked(tiny_pipeline, anisotropic_volume):
    img, _ = anisotropic_volume
    session = tiny_pipeline.new_session(img)
    with force_seg(tiny_pipeline.model, {1}):
        answer = session.ask("Segment this.", slice_index=6,
                             hints=Hints(box=(10, 5, 40, 30), points=[(30, 20, 1)]))
    assert len(answer.segments) == 1
    with pytest.raises(InputError, match="outside the slice"):
        session.ask("Segment this.", slice_index=6, hints=Hints(box=(10, 5, 400, 30)))
    with pytest.raises(InputError, match="labels"):
        session.ask("Segment this.", slice_index=6, hints=Hints(points=[(3, 3, 7)]))


def test_streaming_and_cancel(tiny_pipeline, anisotropic_volume):
    img, _ = anisotropic_volume
    session = tiny_pipeline.new_session(img)
    pieces: list[str] = []
    answer = session.ask("Describe it.", on_token=lambda p: pieces.append(p) or True)
    assert "".join(pieces) == answer.raw_text
    with pytest.raises(Cancelled):
        session.ask("Describe it again.", on_token=lambda p: False)
    assert len(session.turns) == 1  # the cancelled turn left no trace
    follow = session.ask("Describe it once more.")
    assert follow.tokens["generated"] > 0


def test_bad_requests(tiny_pipeline, anisotropic_volume):
    img, _ = anisotropic_volume
    session = tiny_pipeline.new_session(img)
    with pytest.raises(InputError, match="out of range"):
        session.ask("Where?", slice_index=12)
    with pytest.raises(InputError, match="empty"):
        session.ask("  ")
    with pytest.raises(InputError, match="characters"):
        session.ask("x" * 2001)
    from medsegr.io.images import image_from_array

    flat = tiny_pipeline.new_session(image_from_array(np.ones((20, 30), dtype=np.float32)))
    with pytest.raises(InputError, match="2-D"):
        flat.ask("Whole volume?", volume=True)
    assert flat.ask("Anything here?").segments == []


def test_shared_prompt_prefix_gives_the_same_answer(anisotropic_volume):
    """New sessions start from a forked KV cache of the system prompt; the answer is
    the one a session without it gives."""
    from medsegr.config import MedSegRConfig
    from medsegr.modeling.builder import build_model
    from medsegr.modeling.fast_llama import FastLlama
    from medsegr.pipeline import ChatSession, MedSegRPipeline

    img, _ = anisotropic_volume
    model = grounding_says_present(build_model(MedSegRConfig.tiny(), device="cpu"))
    model.use_fast_llm(FastLlama(model.llm))
    pipe = MedSegRPipeline(model)
    session = pipe.new_session(img)  # computes the prefix (outside the [SEG] hook)
    with force_seg(model, {2}):
        shared = session.ask("Segment the organ.", slice_index=6)
    assert shared.tokens["reused"] > 10  # the system prompt came from the shared prefix
    again = pipe.new_session(img)
    assert again.state.cache is not pipe._prefix.cache  # forked, not shared
    plain = ChatSession(pipe, img)
    plain.state = type(plain.state)()  # no prefix
    with force_seg(model, {2}):
        alone = plain.ask("Segment the organ.", slice_index=6)
    assert alone.tokens["reused"] == 0
    assert shared.raw_text == alone.raw_text
    np.testing.assert_array_equal(shared.segments[0].mask, alone.segments[0].mask)
