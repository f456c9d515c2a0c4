"""Autoregressive generation that keeps the ``[SEG]`` hidden states.

One decoding loop serves both paths:

- ``use_cache=True`` (the engine): the prompt is prefilled once, every new token
  costs one single-position step through the KV cache, and a conversation keeps
  its cache between turns, so a follow-up question only prefills the tokens that
  differ from what the cache already holds (longest common prefix of keys);
- ``use_cache=False`` (the reference): the whole sequence is re-run for every new
  token, as LISA does. With greedy decoding both give the same tokens.

The last-layer hidden state of the step whose output is ``[SEG]`` is kept: that is
the state the grounding module decodes. No second pass over the sequence is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from medsegr.modeling.medsegr_model import Key, MedSegRModel


@dataclass
class ConversationState:
    """Keys whose keys/values are in ``cache`` (position i of the cache = keys[i])."""

    keys: list[Key] = field(default_factory=list)
    cache: object | None = None

    def reset(self) -> None:
        self.keys = []
        self.cache = None


@dataclass
class GeneratedTurn:
    token_ids: list[int]
    #: ``(K, H)`` last-layer states that produced each generated ``[SEG]``
    seg_states: torch.Tensor
    prompt_tokens: int
    #: prompt tokens whose keys/values came from the conversation cache
    reused_tokens: int
    finished: bool
    prefill_s: float
    decode_s: float
    #: ``(T, H)`` the last-layer state at each generated token's position (the state of
    #: the step that read it; the last token, never read, has none: ``T = len - 1`` or
    #: fewer); the name spans before ``[SEG]`` are pooled from these
    token_states: torch.Tensor | None = None

    def name_states(self, tokenizer: object) -> torch.Tensor:
        """``(K, H)``: per generated ``[SEG]``, the mean state over the name written in
        the ``<p>…</p>`` before it (its own ``[SEG]`` state when there is none)."""
        from medsegr.prompts import name_spans

        seg_at = [i for i, t in enumerate(self.token_ids) if t == self.seg_token_id]
        if not seg_at:
            return self.seg_states.new_zeros((0, self.seg_states.shape[-1]))
        rows = []
        spans = name_spans(tokenizer, self.token_ids, [max(0, i - 1) for i in seg_at])
        for k, (i, span) in enumerate(zip(seg_at, spans)):
            usable = [p for p in span if p < i and self.token_states is not None
                      and p < self.token_states.shape[0]]
            rows.append(self.token_states[usable].mean(0) if usable else self.seg_states[k])
        return torch.stack(rows)

    #: the id of ``[SEG]`` in ``token_ids`` (set by :func:`generate`)
    seg_token_id: int = -1
    #: positions in ``token_ids`` that the engine inserted (measured spans), not the model
    inserted: list[int] = field(default_factory=list)


def prompt_keys(model: MedSegRModel, turns: list[Any]) -> list[Key]:
    """The prompt of ``turns`` (:class:`medsegr.answers.Turn`) as generation keys: the
    system prompt and the chat template over the turns, each turn's image token expanded
    to the model's visual tokens of that image (``("img", image_id, i)``)."""
    from medsegr.prompts import render

    cfg = model.config
    text = render(model.tokenizer, cfg.llm.system_prompt, turns, cfg.model.image_token)
    images = [t.image_id for t in turns if t.image_id]
    keys: list[Key] = []
    n = model.num_visual_tokens
    for token in model.tokenizer.encode(text, add_special_tokens=False):
        if token == model.image_token_id:
            image_id = images.pop(0)
            keys.extend(("img", image_id, i) for i in range(n))
        else:
            keys.append(int(token))
    return keys


def common_prefix(a: Sequence[Key], b: Sequence[Key]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@torch.no_grad()
def generate(model: MedSegRModel, keys: list[Key], visual_bank: dict[str, torch.Tensor],
             max_new_tokens: int, state: ConversationState | None = None,
             use_cache: bool = True, temperature: float = 0.0, min_new_tokens: int = 0,
             generator: torch.Generator | None = None,
             on_token: Callable[[int], bool | None] | None = None,
             adjust_logits: Callable[[int, torch.Tensor], None] | None = None,
             on_seg: Callable[["GeneratedTurn"], list[int]] | None = None,
             constrain: Callable[[Sequence[int], torch.Tensor], None] | None = None) -> GeneratedTurn:
    """Generate an answer for the prompt ``keys``.

    ``state`` (with ``use_cache``) is the conversation's cache: it is reused up to
    the longest common prefix and updated in place. ``on_token(token_id)`` is
    called for each generated token; returning ``False`` stops generation (cancel).
    ``adjust_logits(step, logits)`` may change the float logits of the ``step``-th new
    token in place before it is chosen (benchmarks use it to place a ``[SEG]``).
    ``on_seg(turn_so_far)`` is called after each generated ``[SEG]`` (the turn so far,
    that ``[SEG]``'s state last in ``seg_states``) and returns token ids the engine
    inserts right after it (the measured span): they are fed with the ``[SEG]``, become
    part of the answer's ``token_ids`` (``inserted`` says which) and are neither chosen
    by the model nor counted against ``max_new_tokens``. ``constrain(token_ids, logits)``
    sees the answer's token ids so far (inserted spans included) and may change the
    logits of the next token in place, after ``adjust_logits``
    (:class:`medsegr.measured_words.MeasuredWords`).
    """
    llm = model.llm
    seg_id = model.seg_token_id
    eos = model.eos_token_ids
    if state is None:
        state = ConversationState()
    fast = model.fast_llm if use_cache else None

    def step(embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed ``embeds`` after the cache; (last hidden state, last logits)."""
        if fast is not None:
            return fast.forward(embeds, state.cache)  # type: ignore[arg-type]
        out = llm(inputs_embeds=embeds, past_key_values=state.cache, use_cache=True,
                  output_hidden_states=True, logits_to_keep=1)
        state.cache = out.past_key_values
        return out.hidden_states[-1][0, -1], out.logits[0, -1]

    t0 = time.perf_counter()
    reused = 0
    if use_cache:
        reused = common_prefix(state.keys, keys) if state.cache is not None else 0
        reused = min(reused, len(keys) - 1)  # at least one position feeds the first logits
        if state.cache is not None:
            extra = state.cache.get_seq_length() - reused  # type: ignore[attr-defined]
            if extra > 0:
                state.cache.crop(-extra)  # type: ignore[attr-defined]  # drop what no longer matches
        if fast is not None and state.cache is None:
            state.cache = fast.new_cache(model.llm.get_input_embeddings().weight.dtype, model.device)
        elif fast is None and reused == 0:
            state.cache = None
        state.keys = list(keys[:reused])
        hidden, logits = step(model.embed_keys(keys[reused:], visual_bank))
        state.keys = list(keys)
    else:
        hidden, logits = _last(reference_forward(model, keys, visual_bank))
    prefill_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    seq = list(keys)
    generated: list[int] = []
    inserted: list[int] = []
    seg_states: list[torch.Tensor] = []
    token_states: list[torch.Tensor] = []
    finished = False
    hidden_size = int(llm.config.hidden_size)

    def so_far(finished: bool) -> GeneratedTurn:
        return GeneratedTurn(
            token_ids=list(generated),
            seg_states=(torch.stack(seg_states) if seg_states
                        else torch.zeros((0, hidden_size), device=model.device)),
            prompt_tokens=len(keys), reused_tokens=reused, finished=finished,
            prefill_s=prefill_s, decode_s=time.perf_counter() - t1,
            token_states=torch.stack(token_states) if token_states else None,
            seg_token_id=seg_id, inserted=list(inserted))

    while True:
        produced = len(generated) - len(inserted)
        logits = logits.float()
        if produced < min_new_tokens:
            logits[list(eos)] = float("-inf")
        if adjust_logits is not None:
            adjust_logits(produced, logits)
        if constrain is not None:
            constrain(generated, logits)
        token = _select(logits, temperature, generator)
        if token in eos:
            finished = True
            break
        generated.append(token)
        if token == seg_id:
            seg_states.append(hidden)
        if on_token is not None and on_token(token) is False:
            break
        if produced + 1 >= max_new_tokens:
            break
        feed = [token]
        if token == seg_id and on_seg is not None:
            extra = [int(t) for t in on_seg(so_far(False))]
            inserted.extend(range(len(generated), len(generated) + len(extra)))
            generated.extend(extra)
            feed += extra
        seq.extend(feed)
        if use_cache:
            hidden, logits = step(model.embed_keys(feed, visual_bank))
            state.keys.extend(feed)
        else:
            hidden, logits = _last(reference_forward(model, seq, visual_bank))
        # one state per fed token (an inserted span's tokens share the last one: the
        # name pooling never reads them)
        token_states.extend([hidden] * len(feed))
    return so_far(finished)


@torch.no_grad()
def reference_forward(model: MedSegRModel, keys: Sequence[Key], visual_bank: dict[str, torch.Tensor],
                      with_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference (LISA-style) forward: the whole sequence through the LLM, no cache.

    Returns the last-layer hidden states of every position ``(T, H)`` and the last
    position's logits ``(vocab,)`` (``None`` with ``with_logits=False``, which skips
    the LM head: the pass that only reads ``[SEG]`` states back).
    """
    embeds = model.embed_keys(keys, visual_bank)
    if not with_logits:
        return model.llm.get_decoder()(inputs_embeds=embeds, use_cache=False).last_hidden_state[0], None
    out = model.llm(inputs_embeds=embeds, use_cache=False, output_hidden_states=True,
                    logits_to_keep=1)
    return out.hidden_states[-1][0], out.logits[0, -1]


def _last(forward: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, logits = forward
    assert logits is not None
    return hidden[-1], logits


def _select(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
