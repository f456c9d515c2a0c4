"""The decoder stage of ``medsegr train`` (``[decoder_stage]``).

After the joint stage the LLM (with its LoRA) and the visual projector are frozen,
so the last-layer hidden state that produces each ``[SEG]`` of a training
conversation is fixed. Those states are computed once (one teacher-forced forward
per conversation, no gradient), and the ``[SEG]`` projector, the mask decoder and the
pixel refiner then train on (state, cached image embedding, pixels, mask) samples:
no LLM in the loop, so a step costs a few decoder passes instead of an LLM
forward and backward. The decoder ends trained on exactly the states it is given
at inference.

Resumable: ``checkpoint-dNNNNNN/`` folders beside the joint stage's checkpoints
hold the model, the stage's optimiser and scheduler, and its step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsegr.modeling.medsegr_model import pass_losses
from medsegr.training.batches import ExampleDataset, collate
from medsegr.training.config import TrainConfig
from medsegr.training.encoder_cache import EncoderCache
from medsegr.training.examples import Example
from medsegr.training.resumable import lr_lambda, save_resumable

log = logging.getLogger(__name__)

#: what the decoder stage trains (the rest of the model is frozen)
STAGE_PREFIXES = ("seg_projector.", "pixel_refiner.", "vision.mask_decoder.")
STATE_NAME = "training_state.pt"


@dataclass(frozen=True)
class MaskSample:
    """One ``[SEG]`` of one conversation."""

    example: int
    index: int  # which [SEG] of the conversation (and which of its masks)


def autocast(mixed_precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``"bf16"``/``"fp16"`` on the model's device, else nothing."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def seg_states(model: Any, examples: list[Example], cache: EncoderCache, pad: int,
               mixed_precision: str = "no", batch_size: int = 8,
               progress: bool = False) -> list[torch.Tensor]:
    """Per example, the ``(K, H)`` float32 hidden states that produce its K ``[SEG]``."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    data = ExampleDataset(examples, cache)
    fn = collate(pad)
    base = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    decoder = base.get_decoder()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # less padding
    states: dict[int, torch.Tensor] = {}
    bar = tqdm(total=len(order), desc="[SEG] states (decoder stage)", unit="conv",
               disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = fn([data[i] for i in chunk])
        ids = batch["input_ids"].to(device)
        with autocast(mixed_precision, device):
            embeds = model.embed_batch(ids, model.visual_tokens(batch["image_embeddings"].to(device)))
            last = decoder(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(device),
                           use_cache=False).last_hidden_state
        positions = model.seg_state_positions(batch["labels"], model.seg_token_id)
        for row, i in enumerate(chunk):
            states[i] = last[row, positions[row].to(device)].float().cpu()
        bar.update(len(chunk))
    bar.close()
    if was_training:
        model.train()
        model.vision.image_encoder.eval()
    return [states[i] for i in range(len(examples))]


def _samples(examples: list[Example], states: list[torch.Tensor]) -> list[MaskSample]:
    found = []
    for e, (example, state) in enumerate(zip(examples, states, strict=True)):
        if state.shape[0] != example.masks.shape[0]:
            raise ValueError(f"record {example.record_id}: {state.shape[0]} [SEG] states but "
                             f"{example.masks.shape[0]} masks")
        found.extend(MaskSample(e, k) for k in range(state.shape[0]))
    return found


def _batch(model: Any, samples: list[MaskSample], examples: list[Example], states: list[torch.Tensor],
           cache: EncoderCache, device: torch.device) -> dict[str, torch.Tensor]:
    emb = torch.stack([cache.get(examples[s.example].cache_key) for s in samples]).float()
    pixels = None
    if all(examples[s.example].pixels is not None for s in samples):
        pixels = torch.stack([torch.from_numpy(examples[s.example].pixels) for s in samples]).float()
    return {"embeddings": emb.to(device),
            "states": torch.stack([states[s.example][s.index] for s in samples]).to(device),
            "masks": torch.stack([torch.from_numpy(examples[s.example].masks[s.index])
                                  for s in samples]).float().to(device),
            "pixels": None if pixels is None else pixels.to(device)}


def decoder_loss(model: Any, batch: dict[str, torch.Tensor], bce_weight: float,
                 dice_weight: float) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The mask loss of a batch of samples, and every pass's logits."""
    prompts = model.seg_prompts(batch["states"])
    teacher = model.teacher_boxes(batch["masks"]) if (model.training and model.config.model.box_refine) else None
    passes = model.mask_passes(batch["embeddings"], prompts, pixels=batch["pixels"],
                               teacher_boxes=teacher)
    bce, dice = pass_losses(passes, batch["masks"])
    return bce_weight * bce.mean() + dice_weight * dice.mean(), dice.mean(), passes


@torch.no_grad()
def validate_masks(model: Any, examples: list[Example], states: list[torch.Tensor], cache: EncoderCache,
                   mixed_precision: str = "no", batch_size: int = 32) -> dict[str, float]:
    """Mean Dice of the decoded masks (thresholded at 0) over every ``[SEG]``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    samples = _samples(examples, states)
    dices: list[float] = []
    for start in range(0, len(samples), batch_size):
        batch = _batch(model, samples[start:start + batch_size], examples, states, cache, device)
        with autocast(mixed_precision, device):
            logits = model.decode_masks(batch["embeddings"], model.seg_prompts(batch["states"]),
                                        pixels=batch["pixels"])
        pred = logits.float() > 0
        gt = batch["masks"] > 0.5
        inter = (pred & gt).flatten(1).sum(1).float()
        total = (pred.flatten(1).sum(1) + gt.flatten(1).sum(1)).float()
        dices.extend(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)).tolist())
    if was_training:
        model.train()
        model.vision.image_encoder.eval()
    return {"val_dice": float(np.mean(dices)) if dices else float("nan"), "val_masks": len(dices)}


def _stage_checkpoints(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.glob("checkpoint-d*") if (p / STATE_NAME).is_file())


def latest_stage_checkpoint(output_dir: Path) -> Path | None:
    found = _stage_checkpoints(output_dir)
    return found[-1] if found else None


def _shuffled(samples: list[MaskSample], seed: int) -> Iterator[MaskSample]:
    epoch = 0
    while True:
        order = list(samples)
        random.Random(seed * 1000 + epoch).shuffle(order)
        yield from order
        epoch += 1


def run_decoder_stage(model: Any, config: TrainConfig, train_examples: list[Example],
                      val_examples: list[Example], cache: EncoderCache, pad: int,
                      metrics_file: Path, resume_dir: Path | None, progress: bool = True) -> int:
    """Run (or continue from ``resume_dir``, a ``checkpoint-d*`` folder) the decoder
    stage; returns the number of stage steps done. Metrics go to ``metrics_file`` as
    ``kind = "decoder"`` / ``"decoder_val"`` lines."""
    from tqdm import tqdm

    stage = config.decoder_stage
    mp = config.optim.mixed_precision
    device = next(model.parameters()).device
    params = []
    for name, p in model.named_parameters():
        train = name.startswith(STAGE_PREFIXES)
        p.requires_grad_(train)
        if train:
            params.append(p)
    t_states = time.perf_counter()
    states = seg_states(model, train_examples, cache, pad, mp, progress=progress)
    val_states = seg_states(model, val_examples, cache, pad, mp, progress=progress) if val_examples else []
    states_s = time.perf_counter() - t_states
    samples = _samples(train_examples, states)
    if not samples:
        log.warning("decoder stage: the training conversations have no [SEG]; skipped")
        return 0
    optimizer = torch.optim.AdamW(params, lr=stage.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage.warmup_steps, stage.steps))
    step = 0
    if resume_dir is not None:
        saved = torch.load(resume_dir / STATE_NAME, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(saved["stage_optimizer"])
        scheduler.load_state_dict(saved["stage_scheduler"])
        step = int(saved["stage_step"])
    _append(metrics_file, {"step": step, "kind": "decoder_states", "conversations": len(states),
                           "masks": len(samples), "elapsed_s": round(states_s, 2)})
    stream = _shuffled(samples, config.run.seed)
    for _ in range(step * stage.batch_size):  # the same sample order after a resume
        next(stream)
    model.train()
    model.vision.image_encoder.eval()
    bar = tqdm(total=stage.steps, initial=step, desc="decoder stage", unit="step", disable=not progress)
    window: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    while step < stage.steps:
        batch = _batch(model, [next(stream) for _ in range(stage.batch_size)], train_examples, states,
                       cache, device)
        with autocast(mp, device):
            loss, dice_loss, _ = decoder_loss(model, batch, config.loss.bce, config.loss.dice)
        loss.backward()
        if config.optim.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, config.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        window.append((float(loss.detach()), float(dice_loss.detach())))
        bar.update(1)
        bar.set_postfix(loss=f"{window[-1][0]:.3f}")
        if step % config.run.log_every == 0 or step == stage.steps:
            _append(metrics_file, {"step": step, "kind": "decoder", "lr": scheduler.get_last_lr()[0],
                                   "elapsed_s": round(time.perf_counter() - t0, 2),
                                   "loss": float(np.mean([w[0] for w in window])),
                                   "dice_loss": float(np.mean([w[1] for w in window]))})
            window = []
        if val_examples and ((stage.eval_every and step % stage.eval_every == 0) or step == stage.steps):
            _append(metrics_file, {"step": step, "kind": "decoder_val",
                                   **validate_masks(model, val_examples, val_states, cache, mp)})
        if stage.save_every and step % stage.save_every == 0 and step < stage.steps:
            save_resumable(config.output_dir, f"checkpoint-d{step:06d}", model,
                           {"stage_optimizer": optimizer.state_dict(),
                            "stage_scheduler": scheduler.state_dict(), "stage_step": step,
                            "step": config.optim.steps}, config, config.run.keep_checkpoints,
                           pattern="checkpoint-d*")
    bar.close()
    return step


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
