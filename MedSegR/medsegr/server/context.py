"""Does a question fit the language model's context? Checked before it is queued.

A question's length in characters says little about its length in tokens: 2,000
CJK characters are over 11,000 tokens for the bundled tokenizer, more than the
8,192-token context. The prompt the model reads for a question is the system
prompt, the conversation so far, the image's visual tokens and the question; the
answer's tokens follow it. :func:`check_context` counts that prompt with the
model's own tokenizer and chat template, the way the session builds it, and
refuses the question (400 ``too_many_tokens``, naming the limit) when prompt and
answer together would not fit, so such a question never reaches the model worker.
"""

from __future__ import annotations

from typing import Any

from medsegr.answers import Turn
from medsegr.prompts import render
from medsegr.server.errors import ApiError


def context_tokens(model: Any) -> int:
    """The language model's context length (``max_position_embeddings``)."""
    return int(model.llm.config.max_position_embeddings)


def prompt_tokens(model: Any, turns: list[Turn], question: str) -> int:
    """Tokens of the prompt for ``question`` after ``turns``, its image shown again
    (the most it can take: a follow-up on the image already shown takes fewer)."""
    cfg = model.config
    text = render(model.tokenizer, cfg.llm.system_prompt,
                  [*turns, Turn(question=question, image_id="next")], cfg.model.image_token)
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    images = sum(1 for token in ids if token == model.image_token_id)
    return len(ids) + images * (model.num_visual_tokens - 1)


def check_context(model: Any, turns: list[Turn], question: str,
                  max_new_tokens: int | None) -> None:
    """Raise 400 ``too_many_tokens`` unless the prompt for ``question`` and up to
    ``max_new_tokens`` answer tokens (default: the model's) fit the context."""
    context = context_tokens(model)
    answer = int(max_new_tokens or model.config.generation.max_new_tokens)
    prompt = prompt_tokens(model, turns, question)
    if prompt + answer <= context:
        return
    own = len(model.tokenizer.encode(question, add_special_tokens=False))
    room = max(0, context - (prompt - own) - answer)
    raise ApiError(400, "too_many_tokens", f"the question is {own:,} tokens long; the model "
                   f"reads at most {context:,} tokens, which leaves room for {room:,} question "
                   f"tokens here (the rest of the prompt takes {prompt - own:,} and the answer "
                   f"up to {answer:,}); shorten the question"
                   + (" or start a new conversation" if turns else ""))


__all__ = ["check_context", "context_tokens", "prompt_tokens"]
