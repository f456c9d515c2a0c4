"""Do both paths give the same answer? Text identical, masks identical or nearly so.

On CPU in float32 the two paths run the same weights through the same kernels but
in a different order (one position at a time through a KV cache, or the whole
sequence again), so hidden states differ in the last bits; a mask pixel whose
logit sits within that difference of the threshold can flip. The criterion is
therefore: identical text, the same number of segments, and every pair of masks
identical or with Dice >= :data:`DICE_MIN`. The report says which of the two held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

#: the lowest Dice between the two paths' masks that still counts as the same mask
DICE_MIN = 0.99


class _Segmented(Protocol):
    raw_text: str
    segments: Sequence[Any]  # each with .mask (bool numpy array)


@dataclass
class AnswerDigest:
    """What the equality check needs of an answer, compactly (packed masks)."""

    raw_text: str
    shape: tuple[int, ...]
    packed: list[np.ndarray]
    voxels: list[int]

    @classmethod
    def of(cls, answer: _Segmented) -> "AnswerDigest":
        masks = [np.asarray(s.mask, dtype=bool) for s in answer.segments]
        shape = masks[0].shape if masks else ()
        return cls(raw_text=answer.raw_text, shape=shape,
                   packed=[np.packbits(m, axis=None) for m in masks],
                   voxels=[int(m.sum()) for m in masks])

    def mask(self, j: int) -> np.ndarray:
        size = int(np.prod(self.shape))
        return np.unpackbits(self.packed[j], count=size).astype(bool).reshape(self.shape)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


@dataclass
class Equality:
    """The equality check of one workload, over every compared pair of answers."""

    compared: int = 0
    text_equal: bool = True
    segments_equal: bool = True
    masks_identical: bool = True
    #: lowest Dice over all compared masks (1.0 when none differ)
    dice_min: float = 1.0
    masks_compared: int = 0
    #: the first differences found, one line each
    differences: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.compared > 0 and self.text_equal and self.segments_equal
                and self.dice_min >= DICE_MIN)

    @property
    def verdict(self) -> str:
        if self.compared == 0:
            return "not checked"
        if not self.passed:
            return "FAIL"
        return "identical" if self.masks_identical else f"equal (Dice ≥ {DICE_MIN})"

    def add(self, ours: AnswerDigest, theirs: AnswerDigest, label: str) -> None:
        """Compare MedSegR's answer ``ours`` with the reference's ``theirs``."""
        self.compared += 1
        if ours.raw_text != theirs.raw_text:
            self.text_equal = False
            at = next((i for i, (x, y) in enumerate(zip(ours.raw_text, theirs.raw_text))
                       if x != y), min(len(ours.raw_text), len(theirs.raw_text)))
            self._note(f"{label}: text differs from character {at}: "
                       f"{ours.raw_text[at:at + 40]!r} vs {theirs.raw_text[at:at + 40]!r}")
        if len(ours.packed) != len(theirs.packed):
            self.segments_equal = False
            self._note(f"{label}: {len(ours.packed)} segment(s) vs {len(theirs.packed)}")
        for j in range(min(len(ours.packed), len(theirs.packed))):
            self.masks_compared += 1
            if ours.shape == theirs.shape and np.array_equal(ours.packed[j], theirs.packed[j]):
                continue
            self.masks_identical = False
            if ours.shape != theirs.shape:
                score = 0.0
            else:
                score = dice(ours.mask(j), theirs.mask(j))
            self.dice_min = min(self.dice_min, score)
            self._note(f"{label}: mask {j} differs (Dice {score:.4f}, {ours.voxels[j]} vs "
                       f"{theirs.voxels[j]} voxels)")

    def _note(self, line: str) -> None:
        if len(self.differences) < 5:
            self.differences.append(line)
