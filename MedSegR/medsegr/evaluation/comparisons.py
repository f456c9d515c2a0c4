"""Whether a comparative answer agrees with what the engine measured.

A size question ("Which kidney is larger here? Segment it.") is answered by segmenting
both structures and concluding after their measured spans ("Comparing the right kidney
and the left kidney: the larger is the right kidney."). The conclusion agrees when the
structure it names is, among the answer's segments, the one with the largest (or
smallest) measured size (:attr:`medsegr.answers.Measurement.area_cm2`, or ``volume_ml``
in volume answers).

An answer that states no conclusion, names a structure it did not segment, or segments
fewer than two structures does not agree: its comparison is not grounded in
measurements.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

__all__ = ["comparative_claim", "comparison_agrees"]

_LARGER = {"larger": "larger", "bigger": "larger", "smaller": "smaller"}


def comparative_claim(text: str, names: Sequence[str]) -> tuple[str, str] | None:
    """``(name, "larger" | "smaller")``: the structure the answer ``text`` (clean, no
    tags) concludes to be the larger or smaller one, among ``names``; None when it draws
    no such conclusion. The last conclusion wins."""
    options = sorted({n for n in names if n}, key=len, reverse=True)
    if not options:
        return None
    alternatives = "|".join(re.escape(n) for n in options)
    word = "|".join(_LARGER)
    patterns = (
        rf"\bthe\s+({word})(?:\s+one)?\s+(?:is|was)\s+the\s+({alternatives})\b",
        rf"\bthe\s+({alternatives})\s+is\s+(?:the\s+)?({word})\b",
    )
    found: list[tuple[int, str, str]] = []
    for k, pattern in enumerate(patterns):
        for m in re.finditer(pattern, text, re.I):
            size, name = (m.group(1), m.group(2)) if k == 0 else (m.group(2), m.group(1))
            found.append((m.start(), name.lower(), _LARGER[size.lower()]))
    if not found:
        return None
    _, name, size = max(found)
    return name, size


def comparison_agrees(text: str, segments: Sequence[Any]) -> bool:
    """Whether the answer's conclusion (:func:`comparative_claim`) names the segment whose
    measured size is the largest / smallest of the answer's segments (``segments``:
    :class:`medsegr.answers.Segment` with ``measured``)."""
    sizes: dict[str, float] = {}
    for seg in segments:
        m = getattr(seg, "measured", None)
        value = None if m is None else (m.volume_ml if m.volume_ml is not None else m.area_cm2)
        if value is not None:
            sizes[seg.name.lower()] = max(sizes.get(seg.name.lower(), 0.0), float(value))
    if len(sizes) < 2:
        return False
    claim = comparative_claim(text, list(sizes))
    if claim is None:
        return False
    name, size = claim
    pick = max if size == "larger" else min
    return name == pick(sizes, key=lambda n: sizes[n])
