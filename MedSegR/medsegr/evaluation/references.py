"""Two reference segmenters evaluated on the same split as MedSegR.

- :class:`OracleBox`: the base LiteMedSAM prompted with the ground-truth bounding
  box (an explicit-prompt oracle: it is told where the structure is).
- :func:`otsu_floor`: Otsu's threshold of the slice, foreground = above the
  threshold (a no-learning floor: it knows nothing about the question).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medsegr.imaging.preprocess import letterbox, letterbox_geometry, unletterbox


def otsu_floor(slice01: np.ndarray) -> np.ndarray:
    """Bright-side Otsu mask of a displayed slice in [0, 1]."""
    import SimpleITK as sitk

    if float(slice01.max()) <= float(slice01.min()):
        return np.zeros(slice01.shape, dtype=bool)
    image = sitk.GetImageFromArray(slice01.astype(np.float32))
    # OtsuThreshold labels the voxels *below* the threshold with inside_value
    mask = sitk.OtsuThreshold(image, 0, 1, 256)
    return sitk.GetArrayFromImage(mask).astype(bool)


class OracleBox:
    """The base (not fine-tuned) SAM-family model of ``config.vision`` with a box prompt."""

    def __init__(self, vision_config: Any) -> None:
        from medsegr.modeling.vision import build_vision

        self.vision, _ = build_vision(vision_config)
        self.vision.eval()

    @torch.no_grad()
    def predict(self, slice01: np.ndarray, truth: np.ndarray,
                pixel_spacing: tuple[float, float],
                embedding: torch.Tensor | None = None) -> np.ndarray:
        """Mask of the displayed slice ``slice01`` from the box around ``truth``.

        ``embedding`` ``(C, h, w)``: the slice's image embedding when the caller has it
        (the encoder is frozen, so MedSegR's own embedding of the slice is the same).
        """
        if not truth.any():
            return np.zeros(truth.shape, dtype=bool)
        box = letterbox_geometry(slice01.shape, pixel_spacing, self.vision.image_size)
        if embedding is None:
            emb = self.vision.encode(letterbox(slice01[None], box))
        else:
            emb = embedding[None].float()
        rows, cols = np.nonzero(truth)
        x0, y0 = box.to_input_xy(float(cols.min()) - 0.5, float(rows.min()) - 0.5)
        x1, y1 = box.to_input_xy(float(cols.max()) + 0.5, float(rows.max()) + 0.5)
        boxes = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32)
        sparse, dense = self.vision.prompt(None, boxes=boxes)
        logits = self.vision.decode(emb, sparse, dense)[:, 0]
        return (unletterbox(logits, box)[0] > 0).numpy()
