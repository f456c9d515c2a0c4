"""The loss / validation curve PNG of a training run."""

from __future__ import annotations

import json
from pathlib import Path

from medsegr.io.images import atomic_output


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_curves(metrics_file: Path, out_png: Path) -> Path:
    """Training losses (and validation loss / Dice when present) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_file)
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("loss", "total"), ("ce_loss", "CE (text)"), ("bce_loss", "BCE (mask)"),
                       ("dice_loss", "Dice loss (mask)")):
        points = [(r["step"], r[key]) for r in train if key in r]
        if points:
            ax_loss.plot(*zip(*points), label=f"train {label}")
    points = [(r["step"], r["val_loss"]) for r in val if "val_loss" in r]
    if points:
        ax_loss.plot(*zip(*points), "o--", label="validation total")
    # the decoder stage follows the joint stage on the same axis
    offset = max((r["step"] for r in train), default=0)
    stage = [(offset + r["step"], r["loss"]) for r in rows if r.get("kind") == "decoder"]
    if stage:
        ax_loss.plot(*zip(*stage), label="decoder stage (mask loss)")
        ax_loss.axvline(offset, color="grey", lw=0.5)
        ax_dice.axvline(offset, color="grey", lw=0.5)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    ax_loss.set_title("losses")
    points = [(r["step"], r["val_dice"]) for r in val if "val_dice" in r]
    points += [(offset + r["step"], r["val_dice"]) for r in rows if r.get("kind") == "decoder_val"]
    if points:
        ax_dice.plot(*zip(*points), "o-", color="tab:green")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_xlabel("step (joint stage, then decoder stage)" if stage else "step")
    ax_dice.set_ylabel("Dice")
    ax_dice.set_title("validation mask Dice (teacher-forced)")
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out_png
