"""What turns a ``[SEG]`` prompt into a precise mask, on top of the SAM mask decoder.

Two optional stages (``[model] box_refine`` and ``[model] pixel_refiner``), each
measured in ``docs/training.md``:

1. **Box re-prompt.** The SAM-family decoder was pretrained for boxes. A first pass
   decodes the ``[SEG]`` prompt alone; the box of its mask is then given to the decoder
   together with the ``[SEG]`` prompt for a second pass (a prompt of the kind the
   decoder knows best). An empty first mask stays empty.
2. **Pixel refiner.** The decoder sees a 64 x 64 embedding, which loses thin and
   density-defined structures (bone, vessels, lesion borders). A small convolutional
   network looks at the full-resolution encoder input (the windowed slice) beside the
   mask logits and adds a residual correction (its last layer starts at zero, so an
   untrained refiner changes nothing).

Shapes: logits and pixels are ``(B, S, S)`` on the encoder-input grid; boxes are
``(B, 4)`` as ``x0, y0, x1, y1`` in encoder-input pixels.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PixelRefiner", "boxes_from_logits", "jitter_boxes", "mask_boxes"]


class PixelRefiner(nn.Module):
    """``(logits, pixels)`` ``(B, S, S)`` each -> refined logits ``(B, S, S)``.

    Three 3x3 convolutions (dilations 1, 2, 4: a 15-pixel receptive field) over the
    logits and the image, then a 1x1 convolution to a residual that is added to the
    logits.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=4, dilation=4), nn.GELU(),
        )
        self.out = nn.Conv2d(channels, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, logits: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        dtype = self.out.weight.dtype
        # logits are squashed to a bounded input (their scale grows during training)
        x = torch.stack([torch.tanh(logits.to(dtype) / 4.0), pixels.to(dtype)], dim=1)
        return logits + self.out(self.body(x))[:, 0].to(logits.dtype)


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes of boolean masks ``(B, S, S)`` -> ``(B, 4)`` (x0, y0, x1, y1, pixel
    edges) and a ``(B,)`` flag saying which masks are non-empty (empty: a zero box)."""
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    size = masks.shape[-1]
    idx = torch.arange(size, device=masks.device)
    present = rows.any(dim=1)
    big = size + 1
    y0 = torch.where(rows, idx, big).min(dim=1).values
    y1 = torch.where(rows, idx, -1).max(dim=1).values + 1
    x0 = torch.where(cols, idx, big).min(dim=1).values
    x1 = torch.where(cols, idx, -1).max(dim=1).values + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    boxes = torch.where(present[:, None], boxes, torch.zeros_like(boxes))
    return boxes, present


def boxes_from_logits(logits: torch.Tensor, cut: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of the masks ``logits > cut`` (see :func:`mask_boxes`)."""
    return mask_boxes(logits.detach() > cut)


def jitter_boxes(boxes: torch.Tensor, size: int, generator: torch.Generator | None = None,
                 fraction: float = 0.1) -> torch.Tensor:
    """Boxes moved and resized by up to ``fraction`` of their side (training noise, so
    the second pass learns to correct an imprecise first mask)."""
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    noise = (torch.rand(boxes.shape, generator=generator) * 2 - 1).to(boxes.device) * fraction
    scale = torch.stack([w, h, w, h], dim=1)
    return (boxes + noise * scale).clamp(0, size)
