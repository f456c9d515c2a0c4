"""The two learned bridges between the vision part and the language model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VisualProjector(nn.Module):
    """Image embedding ``(B, C, h, w)`` -> ``(B, grid*grid, hidden)`` LLM tokens.

    The embedding is average-pooled to ``grid x grid`` cells (row-major order),
    then each cell goes through Linear-GELU-Linear into the LLM's hidden size.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(embedding, (self.grid, self.grid))
        tokens = pooled.flatten(2).transpose(1, 2)  # (B, grid*grid, C)
        return self.mlp(tokens.to(self.mlp[0].weight.dtype))
