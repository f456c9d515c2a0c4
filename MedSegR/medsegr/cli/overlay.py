"""A PNG picture of an answer: the slice, the segments on it, and the reasoning."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from medsegr.imaging.slicing import SliceView


def render_overlay(path: str | Path, slice01: np.ndarray, masks: list[np.ndarray],
                   names: list[str], colors: list[tuple[float, float, float]],
                   question: str, answer: str, footer: str = "") -> None:
    """Write a PNG: ``slice01`` (displayed slice in [0, 1]) with ``masks`` (displayed
    orientation, bool) filled in their colours, the question as title and the
    answer below."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows, cols = slice01.shape
    fig_w = 7.0
    fig = plt.figure(figsize=(fig_w, fig_w * 1.25), dpi=110)
    ax = fig.add_axes((0.03, 0.25, 0.94, 0.68))
    ax.imshow(slice01, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
              aspect=1.0 if rows == cols else "equal")
    handles = []
    for mask, name, color in zip(masks, names, colors):
        rgba = np.zeros((rows, cols, 4), dtype=np.float32)
        rgba[mask] = (*color, 0.45)
        ax.imshow(rgba, interpolation="nearest")
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.0)
        handles.append(Patch(color=color, label=f"{name} ({int(mask.sum())} px)"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.7)
    ax.set_axis_off()
    fig.suptitle("\n".join(textwrap.wrap(question, 80)[:3]), fontsize=10, y=0.985)
    body = "\n".join(textwrap.wrap(answer or "(no text)", 88)[:9])
    fig.text(0.03, 0.22, body, fontsize=8.5, va="top", family="sans-serif")
    if footer:
        fig.text(0.03, 0.015, footer, fontsize=7, color="#a33", va="bottom")
    fig.savefig(str(path), format="png")
    plt.close(fig)


def displayed(view: SliceView, volume: np.ndarray) -> np.ndarray:
    return view.extract(volume)
