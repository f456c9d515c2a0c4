"""The loss / validation curve PNG of a training run."""

from __future__ import annotations

import json
from pathlib import Path

from medsegr.io.images import atomic_output


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_curves(metrics_file: Path, out_png: Path, grounding_metrics: Path | None = None) -> Path:
    """Left: the text stage's losses (and validation loss). Right: the grounding stage's
    loss, validation Dice and the share of absent-structure queries returned empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_file)
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    grows = read_metrics(grounding_metrics) if grounding_metrics is not None else []
    if train and grows:
        fig, (ax_loss, ax_ground) = plt.subplots(1, 2, figsize=(10, 4))
    else:  # one stage only (e.g. the grounding stage on an earlier text stage)
        fig, ax = plt.subplots(1, 1, figsize=(5.5, 4))
        ax_loss, ax_ground = (ax, None) if train else (None, ax)
    if ax_loss is not None:
        _text_panel(ax_loss, train, val)
    if ax_ground is not None:
        _grounding_panel(ax_ground, grows)
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out_png


def _text_panel(ax_loss, train: list[dict], val: list[dict]) -> None:
    for key, label in (("loss", "total"), ("ce_loss", "CE (text)")):
        points = [(r["step"], r[key]) for r in train if key in r]
        if points:
            ax_loss.plot(*zip(*points), label=f"train {label}")
    points = [(r["step"], r["val_ce_loss"]) for r in val if "val_ce_loss" in r]
    if points:
        ax_loss.plot(*zip(*points), "o--", label="validation CE")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    ax_loss.set_title("text stage")


def _grounding_panel(ax_ground, grows: list[dict]) -> None:
    gtrain = [(r["step"], r["loss"]) for r in grows if r.get("kind") == "train"]
    if gtrain:
        ax_ground.plot(*zip(*gtrain), color="tab:blue", label="train loss")
    for key, label, style in (("dice", "validation Dice", "o-"),
                              ("absent_empty", "absent queries empty", "s--")):
        points = [(r["step"], r[key]) for r in grows if r.get("kind") == "val" and key in r]
        if points:
            ax_ground.plot(*zip(*points), style, label=label)
    ax_ground.set_ylim(0, 1.05)
    ax_ground.set_xlabel("step")
    ax_ground.set_title("grounding stage")
    if ax_ground.lines:
        ax_ground.legend(fontsize=8)
