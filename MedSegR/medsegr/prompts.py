"""Chat prompts and answers: rendering turns, reading ``[SEG]`` names back."""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Sequence

from medsegr.answers import Turn
from medsegr.errors import InputError

MAX_QUESTION_CHARS = 2000
_NAME_RE = re.compile(r"<p>(.*?)</p>", re.DOTALL)


def validate_question(question: Any, reserved: tuple[str, ...]) -> str:
    """Return the stripped question or raise :class:`InputError`: not text, empty, too
    long, holding a ``reserved`` token, bytes that are not UTF-8 (a command line's
    undecodable bytes arrive as lone surrogates) or control characters other than
    newline and tab."""
    if not isinstance(question, str):
        raise InputError("the question must be text")
    text = question.strip()
    if not text:
        raise InputError("the question is empty")
    if len(text) > MAX_QUESTION_CHARS:
        raise InputError(f"the question has {len(text)} characters; at most {MAX_QUESTION_CHARS} "
                         "are accepted")
    for token in reserved:
        if token in text:
            raise InputError(f"the question contains the reserved token {token!r}")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise InputError("the question is not valid UTF-8 text (it holds undecodable bytes or "
                         "lone surrogates)")
    bad = sorted({c for c in text if unicodedata.category(c) == "Cc" and c not in "\n\t"})
    if bad:
        shown = ", ".join(f"U+{ord(c):04X}" for c in bad[:5])
        raise InputError(f"the question contains control characters ({shown}); only text, "
                         "newlines and tabs are accepted")
    return text


def render(tokenizer: Any, system_prompt: str, turns: list[Turn], image_token: str) -> str:
    """The chat-template text for ``turns``, ending with the assistant's generation prompt."""
    messages = [{"role": "system", "content": system_prompt}]
    for turn in turns:
        content = f"{image_token}\n{turn.question}" if turn.image_id else turn.question
        messages.append({"role": "user", "content": content})
        if turn.answer is not None:
            messages.append({"role": "assistant", "content": turn.answer})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def segment_names(answer: str, seg_token: str) -> list[str]:
    """A name for each ``seg_token`` in ``answer``: the last ``<p>…</p>`` before it
    (and after the previous one), else ``"segment N"``."""
    names = []
    start = 0
    for count, piece in enumerate(answer.split(seg_token)[:-1], start=1):
        found = _NAME_RE.findall(piece)
        name = found[-1].strip() if found else ""
        names.append(name or f"segment {count}")
        start += len(piece) + len(seg_token)
    return names


def clean_answer(answer: str, seg_token: str) -> str:
    """The answer as a clinician reads it: ``<p>`` tags and ``[SEG]`` markers removed."""
    text = answer.replace(seg_token, "")
    text = _NAME_RE.sub(lambda m: m.group(1), text)
    text = re.sub(r"[ \t]+([.,;:!?])", r"\1", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def name_spans(tokenizer: Any, ids: Sequence[int], seg_positions: Sequence[int]) -> list[list[int]]:
    """For each ``[SEG]`` state position ``t`` (the token right before ``[SEG]``), the
    positions of the tokens of the name written inside the last ``<p>…</p>`` before it
    (``[t]`` when there is none): the span whose hidden states are pooled into the
    query when ``[grounding] name_pool`` is on."""
    spans = []
    for t in seg_positions:
        start = max(0, t - 40)
        pieces = [tokenizer.decode([int(i)]) for i in ids[start:t + 1]]
        text = "".join(pieces)
        open_at = text.rfind("<p>")
        close_at = text.rfind("</p>")
        if open_at < 0 or close_at < open_at:
            spans.append([t])
            continue
        begin, end = open_at + 3, close_at
        chosen, offset = [], 0
        for pos, piece in enumerate(pieces):
            lo, hi = offset, offset + len(piece)
            if hi > begin and lo < end and piece.strip():
                chosen.append(start + pos)
            offset = hi
        spans.append(chosen or [t])
    return spans
