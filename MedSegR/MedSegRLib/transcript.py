"""The chat as the panel shows it (HTML bubbles) and as users export it (Markdown).

The HTML uses only what Qt's rich-text engine renders (tables, ``bgcolor``,
``cellpadding``, inline colours), so it looks the same in 3D Slicer's QTextBrowser
and under PySide6. Per-answer actions are links ``medsegr:ACTION/TURN`` that the
panel turns into one-click accept / hide / show / remove.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from medsegr.prompts import clean_answer

from MedSegRLib.conversation import Conversation, Turn

SEG_TOKEN = "[SEG]"
ACTIONS = ("accept", "hide", "show", "remove")
_ACTION_RE = re.compile(r"^medsegr:(accept|hide|show|remove)/(\d+)$")
_MARKERS = (SEG_TOKEN, "<p>", "</p>")

QUESTION_BG = "#d6e6fb"
ANSWER_BG = "#eef0f3"
ERROR_BG = "#fbdada"
NOTICE_FG = "#8a5a00"
MUTED_FG = "#5f6368"


@dataclass
class PendingTurn:
    """The question being answered right now (not yet in the conversation)."""

    question: str
    where: str
    streamed: str = ""  # raw text received so far
    status: str = "waiting"  # waiting | streaming | error | cancelled
    message: str = ""  # error or cancel message


def stream_text(raw: str) -> str:
    """Raw streamed answer text as a clinician reads it, also while a ``<p>`` or
    ``[SEG]`` marker is only partly received."""
    text = raw
    for marker in _MARKERS:
        for cut in range(len(marker) - 1, 0, -1):
            if text.endswith(marker[:cut]):
                text = text[: -cut]
                break
    return clean_answer(text.replace("<p>", "").replace("</p>", ""), SEG_TOKEN)


def parse_action(url: str) -> tuple[str, int] | None:
    """``("accept", 2)`` for ``medsegr:accept/2``; None for any other link."""
    match = _ACTION_RE.match(url.strip())
    return (match.group(1), int(match.group(2))) if match else None


def _hex(color: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{max(0, min(255, round(c * 255))):02x}" for c in color)


def _paragraphs(text: str) -> str:
    return "<br>".join(html.escape(line) for line in text.strip().splitlines()) or "&nbsp;"


def _bubble(inner: str, bg: str, right: bool) -> str:
    spacer = '<td width="12%"></td>'
    cell = f'<td bgcolor="{bg}">{inner}</td>'
    row = spacer + cell if right else cell + spacer
    return f'<table width="100%" cellspacing="0" cellpadding="7"><tr>{row}</tr></table><br>'


def _meta(turn: Turn) -> str:
    parts = [html.escape(turn.where)]
    total = turn.timings.get("total")
    if total is not None:
        parts.append(f"{total:.1f} s")
    if not turn.fine_tuned:
        parts.append("untrained base model: masks are not meaningful")
    return f'<span style="color:{MUTED_FG}; font-size:small">{" · ".join(parts)}</span>'


def engine_words_line(turn: Turn) -> str:
    """One line naming the words of ``turn``'s answer that the engine wrote from its
    measurements instead of the model's next word."""
    changed = ", ".join(f"“{engine}” (the model's next word: “{model}”)"
                        for model, engine in turn.engine_words)
    return f"Written by the engine from its measurements: {changed}."


def _segments_html(turn: Turn, turn_index: int, visible: Callable[[str], bool]) -> str:
    live = [s for s in turn.segments if s.state != "removed"]
    if not turn.segments:
        return ""
    rows = []
    for segment in turn.segments:
        swatch = f'<span style="color:{_hex(segment.color)}; font-size:large">&#9632;</span>'
        label = html.escape(segment.name)
        detail = f"{segment.voxels:,} voxels" if segment.voxels else "empty"
        if segment.terminology is None:  # kept with its free-text name only
            detail += " · no standard code"
        if segment.state == "removed":
            rows.append(f'<span style="color:{MUTED_FG}"><s>{label}</s> (removed)</span>')
            continue
        state = " · accepted" if segment.state == "accepted" else ""
        hidden = "" if visible(segment.id) else " · hidden"
        rows.append(f"{swatch} <b>{label}</b> "
                    f'<span style="color:{MUTED_FG}">({detail}{state}{hidden})</span>')
        if segment.measured:
            rows.append(f'&nbsp;&nbsp;<span style="font-size:small">Measured by the engine: '
                        f"{html.escape(segment.measured)}</span>")
    links = ""
    if live:
        any_visible = any(visible(s.id) for s in live)
        actions = []
        if any(s.state != "accepted" for s in live):
            actions.append(f'<a href="medsegr:accept/{turn_index}">Accept</a>')
        toggle = "hide" if any_visible else "show"
        actions.append(f'<a href="medsegr:{toggle}/{turn_index}">{toggle.capitalize()}</a>')
        actions.append(f'<a href="medsegr:remove/{turn_index}">Remove</a>')
        links = "<br>" + " &nbsp;·&nbsp; ".join(actions)
    return "<br>" + "<br>".join(rows) + links


def render_html(conversation: Conversation | None, pending: PendingTurn | None = None,
                visible: Callable[[str], bool] | None = None) -> str:
    """The chat panel's content."""
    is_visible = visible or (lambda _sid: True)
    parts: list[str] = []
    turns = conversation.turns if conversation else []
    if not turns and pending is None:
        parts.append(f'<p style="color:{MUTED_FG}">Ask a question about the current slice or '
                     "the whole volume, e.g. <i>Which structure here is most likely to bleed? "
                     "Segment it.</i></p>")
    for index, turn in enumerate(turns):
        parts.append(_bubble(_paragraphs(turn.question), QUESTION_BG, right=True))
        inner = _paragraphs(turn.answer)
        if turn.notice:
            inner += f'<br><span style="color:{NOTICE_FG}">{html.escape(turn.notice)}</span>'
        if turn.engine_words:
            inner += (f'<br><span style="color:{MUTED_FG}; font-size:small">'
                      f"{html.escape(engine_words_line(turn))}</span>")
        inner += _segments_html(turn, index, is_visible) + "<br>" + _meta(turn)
        parts.append(_bubble(inner, ANSWER_BG, right=False))
    if pending is not None:
        parts.append(_bubble(_paragraphs(pending.question), QUESTION_BG, right=True))
        text = stream_text(pending.streamed)
        if pending.status == "error":
            inner = (f"<b>Error:</b> {html.escape(pending.message)}"
                     + (f"<br><br>{_paragraphs(text)}" if text else ""))
            parts.append(_bubble(inner, ERROR_BG, right=False))
        elif pending.status == "cancelled":
            inner = (_paragraphs(text) + "<br>" if text else "") + \
                f'<span style="color:{MUTED_FG}"><i>{html.escape(pending.message or "Cancelled.")}</i></span>'
            parts.append(_bubble(inner, ANSWER_BG, right=False))
        else:
            body = _paragraphs(text) if text else f'<i style="color:{MUTED_FG}">Thinking…</i>'
            meta = f'<br><span style="color:{MUTED_FG}; font-size:small">{html.escape(pending.where)}</span>'
            parts.append(_bubble(body + meta, ANSWER_BG, right=False))
    return "<html><body>" + "".join(parts) + "</body></html>"


def to_markdown(conversation: Conversation) -> str:
    """The conversation as a Markdown document (export and clipboard)."""
    lines = [f"# MedSegR conversation: {conversation.title}", "",
             f"- Volume: {conversation.volume_name}",
             f"- Started: {conversation.created_at}"]
    engine = conversation.engine
    if engine:
        model = engine.get("model")
        lines.append(f"- Engine: medsegr {engine.get('engine_version', '?')}"
                     + (f", model {model}" if model else "")
                     + (f", device {engine['device']}" if engine.get("device") else ""))
    lines.append("")
    for number, turn in enumerate(conversation.turns, start=1):
        lines += [f"## {number}. {turn.question}", "", f"*{turn.where}*", "", turn.answer.strip() or "(no text)", ""]
        if turn.notice:
            lines += [f"> {turn.notice}", ""]
        if turn.engine_words:
            lines += [f"> {engine_words_line(turn)}", ""]
        if not turn.fine_tuned:
            lines += ["> Untrained base model: the masks are not meaningful.", ""]
        if turn.segments:
            lines.append("Segments:")
            for segment in turn.segments:
                coded = "" if segment.terminology else ", no standard code (free-text name)"
                lines.append(f"- {segment.name} ({segment.voxels:,} voxels, {segment.state}, "
                             f"colour {_hex(segment.color)}{coded})")
                if segment.measured:
                    lines.append(f"  - measured by the engine: {segment.measured}")
            lines.append("")
    lines.append("Research software, not for clinical decisions.")
    return "\n".join(lines) + "\n"
