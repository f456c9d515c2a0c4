"""The reference path: the same model, run the straightforward (LISA) way.

:class:`ReferenceSession` answers the same questions as
:class:`medsegr.pipeline.ChatSession`, on the same loaded model object (same weights,
same kernels), with the same prompts, pre-processing and mask post-processing, but
without any of MedSegR's reuse:

- **no KV cache**: the whole sequence (conversation so far, question, answer so far)
  goes through the LLM again for every generated token
  (:func:`medsegr.modeling.generation.generate` with ``use_cache=False``), and once
  more after generation to read back the hidden states that produced the ``[SEG]``
  tokens (LISA's second pass, :func:`~medsegr.modeling.generation.reference_forward`);
- **no embedding cache**: every image the conversation has shown is encoded again at
  every turn (once: as in MedSegR, the one encoder feeds both the LLM's visual tokens
  and the grounding module, where LISA runs two vision towers);
- **volume mode is the whole model once per slice**: for every slice, that slice is
  encoded, the LLM answers the question (as above: no cache, plus the read-back pass)
  and the slice's masks are decoded from that answer's ``[SEG]`` states by the same
  pixel-level grounding module (:meth:`ChatSession._decode`, one slice at a time).

So that both paths do equal work and can be checked for equal output, the
per-slice LLM call in volume mode reads the same image as MedSegR's single LLM call
(the volume's key slice, encoded once per turn, which also serves as that slice's
own embedding): an LLM call that looked at slice
*i*'s own pixels would cost exactly the same (same prompt length, same number of
generated tokens) but answer differently on every slice. The same 3-D clean-up as
MedSegR's (optional hole filling, the largest 3-D component of a single-object
structure) is applied, and an answer without ``[SEG]`` asked with a box or points gets
the same hints-only segment.
Volume mode covers ``generation.volume_key_slices = 1`` (the default).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from medsegr.errors import InputError
from medsegr.io.images import MedicalImage
from medsegr.modeling.generation import ConversationState, generate, reference_forward
from medsegr.answers import Answer, Hints, Turn
from medsegr.pipeline import HINT_SEGMENT_NAME, ChatSession, MedSegRPipeline, with_not_found
from medsegr.imaging.preprocess import letterbox
from medsegr.prompts import clean_answer, segment_names, validate_question


class ReferenceSession(ChatSession):
    """A conversation about one image, answered the LISA way (see the module notes).

    It reuses :class:`ChatSession`'s geometry, prompt and mask helpers, so the two
    paths differ only in what they recompute. ``slice_done_s`` holds, after each
    :meth:`ask`, the time from the start of the answer at which each slice's mask
    was done (volume mode: one entry per slice).
    """

    def __init__(self, pipeline: MedSegRPipeline, image: MedicalImage,
                 window: str | None = None) -> None:
        super().__init__(pipeline, image, window)
        self.state = ConversationState()  # never used: no KV cache on this path
        self.slice_done_s: list[float] = []

    def reset(self) -> None:
        with self.lock:
            self.turns = []
            self._shown_image = None

    # -- what this path recomputes -----------------------------------------------
    def _encode_now(self, axis: int, index: int) -> torch.Tensor:
        """One slice's embedding, computed now (nothing is cached), stored in the same
        type as the pipeline's embedding cache so both paths decode the same numbers."""
        view = self.view(axis, index)
        pixels = letterbox(view.extract(self.volume01)[None], self._letterbox(view))
        self.encoder_calls += 1
        return self.pipeline.encode(pixels, 1)[0].to(self._cache_dtype)

    def _images_of(self, turns: list[Turn]) -> list[str]:
        seen: list[str] = []
        for turn in turns:
            if turn.image_id and turn.image_id not in seen:
                seen.append(turn.image_id)
        return seen

    def _answer_once(self, keys: list[Any], max_new_tokens: int
                     ) -> tuple[list[int], torch.Tensor, dict[str, float]]:
        """Generate without a cache, then read the ``[SEG]`` states back with one more
        pass over the whole sequence. Returns tokens, the grounding module's queries
        ``(K, H)`` (the read-back states; with ``[grounding] name_pool`` the pooled name
        states beside them, as :meth:`ChatSession._queries` makes them), timings."""
        cfg = self.model.config.generation
        with self.pipeline.lock:
            gen = generate(self.model, keys, self._visual_bank, max_new_tokens, None,
                           use_cache=False, temperature=cfg.temperature,
                           min_new_tokens=cfg.min_new_tokens,
                           adjust_logits=self.pipeline.adjust_logits)
            t = time.perf_counter()
            positions = [len(keys) - 1 + j for j, token in enumerate(gen.token_ids)
                         if token == self.model.seg_token_id]
            if positions:
                hidden, _ = reference_forward(self.model, [*keys, *gen.token_ids],
                                              self._visual_bank, with_logits=False)
                gen.seg_states = hidden[positions]
                gen.token_states = hidden[len(keys):]  # generated token p sits at len(keys) + p
                states = self._queries(gen)
            else:
                width = int(self.model.llm.config.hidden_size)
                if self.model.grounding.config.name_pool:
                    width *= 2
                states = torch.zeros((0, width), device=self.model.device)
            reread_s = time.perf_counter() - t
        return gen.token_ids, states, {"prefill": gen.prefill_s, "decode": gen.decode_s,
                                       "reread": reread_s}

    # -- asking -------------------------------------------------------------------
    def ask(self, question: str, *, axis: str | int = "axial",  # type: ignore[override]
            slice_index: int | None = None, volume: bool = False, hints: Hints | None = None,
            max_new_tokens: int | None = None) -> Answer:
        """Answer ``question`` like :meth:`ChatSession.ask` (same arguments, same
        :class:`~medsegr.answers.Answer`), recomputing everything."""
        cfg = self.model.config
        question = validate_question(question, (cfg.model.seg_token, cfg.model.image_token))
        hints = hints or Hints()
        max_new = max_new_tokens or cfg.generation.max_new_tokens
        with self.lock:
            t0 = time.perf_counter()
            if volume and cfg.generation.volume_key_slices != 1:
                raise InputError("the reference path covers volume mode with one key slice "
                                 "(generation.volume_key_slices = 1)")
            ax, indices, (center,) = self._target_slices(axis, slice_index, volume, 1)
            prompt_hints = self._hint_tensors(hints, self.view(ax, center))
            timings = dict.fromkeys(("encode", "prefill", "decode", "reread", "masks"), 0.0)
            self.slice_done_s = []
            encoded_before = self.encoder_calls

            # every image the conversation has shown is encoded again, at every turn
            image_id = f"{ax}:{center}"
            turn = Turn(question=question,
                        image_id=None if self._shown_image == image_id else image_id)
            t = time.perf_counter()
            self._embeddings.clear()
            self._visual_bank.clear()
            fresh: dict[str, torch.Tensor] = {}
            for shown in self._images_of(self.turns + [turn]):
                shown_axis, shown_index = (int(v) for v in shown.split(":"))
                fresh[shown] = self._encode_now(shown_axis, shown_index)
                self._visual(shown, fresh[shown])
            timings["encode"] += time.perf_counter() - t
            keys = self._keys(self.turns + [turn])

            # the whole model once per slice (slice mode: the one slice)
            tokens: list[int] = []
            llm_generated = 0
            masks: list[np.ndarray] = []
            for i in indices:
                t = time.perf_counter()
                embedding = fresh[image_id] if i == center else self._encode_now(ax, i)
                timings["encode"] += time.perf_counter() - t
                slice_tokens, states, llm_timings = self._answer_once(keys, max_new)
                for name, seconds in llm_timings.items():
                    timings[name] += seconds
                llm_generated += len(slice_tokens)
                if i == center:
                    tokens = slice_tokens
                t = time.perf_counter()
                # this slice's answer names its own segments (the same answer as the key
                # slice's: same keys, same image); no [SEG] but hints: one hints-only segment
                slice_raw = self.model.tokenizer.decode(slice_tokens, skip_special_tokens=False)
                count = len(segment_names(slice_raw, cfg.model.seg_token)) or int(prompt_hints is not None)
                for j, mask in enumerate(self._decode(ax, [i], [embedding], {i: states}, count,
                                                      prompt_hints)[0]):
                    if j == len(masks):
                        masks.append(np.zeros(self.image.shape, dtype=bool))
                    masks[j] |= mask
                timings["masks"] += time.perf_counter() - t
                self.slice_done_s.append(time.perf_counter() - t0)

            raw = self.model.tokenizer.decode(tokens, skip_special_tokens=False)
            turn.answer = raw
            t = time.perf_counter()
            names = segment_names(raw, cfg.model.seg_token)
            if not names and prompt_hints is not None:
                names = [HINT_SEGMENT_NAME]
            masks += [np.zeros(self.image.shape, dtype=bool)] * (len(names) - len(masks))
            segments, not_found = self._segments(names, masks, ax, volume)  # as ChatSession.ask
            timings["masks"] += time.perf_counter() - t
            text = with_not_found(clean_answer(raw, cfg.model.seg_token), not_found, volume)
            self.turns.append(turn)
            self._shown_image = image_id
            timings["total"] = time.perf_counter() - t0
            return Answer(
                text=text, raw_text=raw, segments=segments, not_found=not_found,
                mode="volume" if volume else "slice", axis=ax,
                slice_index=None if volume else center, key_slices=[center],
                fine_tuned=self.model.fine_tuned, timings=timings,
                tokens={"prompt": len(keys), "reused": 0, "generated": len(tokens),
                        "llm_runs": len(indices), "llm_generated": llm_generated},
                encoded_slices=self.encoder_calls - encoded_before)
