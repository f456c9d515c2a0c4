"""Segmentation scores: Dice, IoU, gIoU and cIoU.

- Dice and IoU are per mask, then averaged.
- gIoU is the mean of the per-mask IoU (the reasoning-segmentation convention, where
  a mask is one question's answer).
- cIoU is the total intersection over the total union of all masks of a group.

A ground-truth mask and a prediction that are both empty score 1 (nothing to find,
nothing claimed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class MaskScore:
    intersection: int
    union: int
    predicted: int
    truth: int

    @classmethod
    def of(cls, pred: np.ndarray, truth: np.ndarray) -> "MaskScore":
        pred = np.asarray(pred, dtype=bool)
        truth = np.asarray(truth, dtype=bool)
        if pred.shape != truth.shape:
            raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
        return cls(intersection=int(np.logical_and(pred, truth).sum()),
                   union=int(np.logical_or(pred, truth).sum()),
                   predicted=int(pred.sum()), truth=int(truth.sum()))

    @property
    def iou(self) -> float:
        return 1.0 if self.union == 0 else self.intersection / self.union

    @property
    def dice(self) -> float:
        total = self.predicted + self.truth
        return 1.0 if total == 0 else 2.0 * self.intersection / total


def summarise(scores: Iterable[MaskScore]) -> dict[str, float | int]:
    """Mean Dice, mean IoU, gIoU, cIoU and the number of masks."""
    items = list(scores)
    if not items:
        return {"n": 0, "dice": float("nan"), "iou": float("nan"), "giou": float("nan"),
                "ciou": float("nan")}
    inter = sum(s.intersection for s in items)
    union = sum(s.union for s in items)
    ious = [s.iou for s in items]
    return {"n": len(items), "dice": float(np.mean([s.dice for s in items])),
            "iou": float(np.mean(ious)), "giou": float(np.mean(ious)),
            "ciou": 1.0 if union == 0 else inter / union}
