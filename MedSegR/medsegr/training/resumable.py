"""What makes a training run resumable: the learning-rate schedule and the
``checkpoint-*`` folders (a MedSegR checkpoint plus the optimiser, scheduler and random
states). Shared by the joint stage and the decoder stage."""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsegr.io.atomic import atomic_folder
from medsegr.training.config import TrainConfig

STATE_NAME = "training_state.pt"


def lr_lambda(warmup: int, total: int):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return fn


def _checkpoints(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.glob("checkpoint-*") if (p / STATE_NAME).is_file())


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = _checkpoints(output_dir)
    return found[-1] if found else None


def save_resumable(output_dir: Path, name: str, model: Any, state: dict[str, Any], config: TrainConfig,
                   keep: int, pattern: str = "checkpoint-[0-9]*") -> Path:
    """Write ``output_dir/name`` (a MedSegR checkpoint in ``model/`` and ``state`` with the
    random states in ``training_state.pt``), atomically; keep the ``keep`` newest folders
    matching ``pattern``."""
    from medsegr.modeling.checkpoint import save_pretrained

    target = output_dir / name
    with atomic_folder(target) as tmp:
        save_pretrained(model, tmp / "model", extra={"training": {"step": state.get("step")}})
        torch.save({**state, "config": config.to_dict(),
                    "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                            "torch": torch.get_rng_state()}},
                   tmp / STATE_NAME)
    found = sorted(p for p in output_dir.glob(pattern) if (p / STATE_NAME).is_file())
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target
