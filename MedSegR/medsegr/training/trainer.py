"""``medsegr train``: LoRA on the LLM, the two projectors and the mask decoder.

Runs on one CPU or GPU as a plain command, and unchanged under ``accelerate launch``
(DDP on several GPUs or nodes, or CPU processes; FSDP/DeepSpeed through accelerate's
own config). The frozen encoder's outputs are cached on disk (:mod:`encoder_cache`).

Output folder::

    train_config.json          the resolved training config
    metrics.jsonl              one line per logged step / validation
    curves.png                 loss and validation Dice against steps
    checkpoint-000100/         resumable: model/ (a MedSegR checkpoint) + training_state.pt
    final/                     the fine-tuned checkpoint (load with --checkpoint)
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsegr.errors import CheckpointError, ConfigError, InputError
from medsegr.training.batches import ExampleDataset, LengthBuckets, collate
from medsegr.training.config import TrainConfig
from medsegr.training.curves import read_metrics
from medsegr.training.encoder_cache import EncoderCache, encoder_digest
from medsegr.training.examples import Example, ImageStore, make_example, repeat_by_reasoning, slice_input
from medsegr.training.resumable import (STATE_NAME, latest_checkpoint, lr_lambda,
                                        save_resumable)

log = logging.getLogger(__name__)

#: what the text stage trains besides the LoRA and the added tokens' rows (the grounding
#: module has its own stage)
TRAINABLE_PREFIXES = ("visual_projector.",)


@dataclass
class TrainResult:
    output_dir: Path
    final_checkpoint: Path
    steps: int
    first_loss: float
    last_loss: float
    encoded_slices: int
    grounding_stage_steps: int = 0


# -- data ----------------------------------------------------------------------
def load_examples(config: TrainConfig, model: Any, split: str) -> tuple[list[Example], list[Any]]:
    """Records of ``split`` as tokenised examples plus their encoder inputs."""
    from medsegr.data.records import load_dataset

    records = load_dataset(config.data_root, split)
    if not records:
        raise InputError(f"split {split!r} of {config.data_root} has no records")
    store = ImageStore()
    examples, inputs = [], []
    problems = []
    for record in records:
        try:
            item = slice_input(record, store, model.vision.image_size)
            examples.append(make_example(record, model, item, config.data.max_tokens, store))
            inputs.append(item)
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputError(f"{len(problems)} record(s) of split {split!r} cannot be used for "
                         f"training:\n  {shown}{more}")
    return examples, inputs


# -- model ---------------------------------------------------------------------
def mark_trainable(model: Any, from_layer: int = 0) -> list[torch.nn.Parameter]:
    """Freeze everything but LoRA, the added tokens' rows and the visual projector;
    return the trainable parameters (in a fixed order).

    With ``from_layer`` > 0 only the LoRA of decoder layers ``from_layer`` and up train:
    nothing below them needs a gradient, so the backward pass stops there."""
    params = []
    layers = _decoder_layer_count(model)
    if from_layer >= layers > 0:
        raise ConfigError(f"[optim] train_from_layer = {from_layer}, but the language model has "
                          f"{layers} decoder layers (0..{layers - 1})")
    for name, p in model.named_parameters():
        train = name.startswith(TRAINABLE_PREFIXES) or (
            name.startswith("llm.") and ("lora_" in name or "trainable_tokens_delta" in name))
        if from_layer > 0 and train:
            match = _LAYER.search(name)
            train = "lora_" in name and match is not None and int(match.group(1)) >= from_layer
        p.requires_grad_(train)
        if train:
            params.append(p)
    if not params:
        raise CheckpointError("the model has no trainable parameters")
    return params


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _decoder_layer_count(model: Any) -> int:
    found = {int(m.group(1)) for name, _ in model.named_parameters()
             if name.startswith("llm.") and (m := _LAYER.search(name))}
    return max(found) + 1 if found else 0


#: ``[model]`` settings a training run may set apart from its start checkpoint's
INFERENCE_SETTINGS = ("presence_threshold", "volume_presence_threshold", "measured_spans")


def build_training_model(config: TrainConfig, resume_model: Path | None) -> Any:
    from medsegr.modeling.checkpoint import from_pretrained, read_checkpoint_config
    from medsegr.modeling.builder import build_model

    engine = config.engine_config()
    start = resume_model or (config.path(config.engine.init_checkpoint)
                             if config.engine.init_checkpoint else None)
    if start is None:
        model = build_model(engine, device="cpu", with_lora=True)
    else:
        from medsegr.modeling.checkpoint import upgraded_config

        from medsegr.config import MedSegRConfig

        # a checkpoint from before the grounding module is compared without the old mask
        # path's keys, every missing key at its default
        saved = MedSegRConfig.from_dict(upgraded_config(read_checkpoint_config(start)["config"])).to_dict()
        # the presence threshold is chosen after training (on validation answers), and
        # measured spans are what the conversations read (a checkpoint trained without
        # them can learn to read them): not differences in the model's parts
        for key in INFERENCE_SETTINGS:
            saved["model"][key] = engine.to_dict()["model"][key]
        if saved != engine.to_dict():
            diff = sorted(k for k in set(saved) | set(engine.to_dict())
                          if saved.get(k) != engine.to_dict().get(k))
            raise CheckpointError(f"{start} was trained with another model config (sections "
                                  f"{', '.join(diff)} differ from this training config's)")
        model = from_pretrained(start, device="cpu", trainable=True)
        for key in INFERENCE_SETTINGS:
            setattr(model.config.model, key, getattr(engine.model, key))
    model.train()
    model.vision.image_encoder.eval()
    return model


def _save_resumable(output_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any,
                    config: TrainConfig, keep: int, elapsed_s: float = 0.0) -> Path:
    return save_resumable(output_dir, f"checkpoint-{step:06d}", model,
                          {"step": step, "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "elapsed_s": elapsed_s},
                          config, keep)


def _resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_NAME).is_file() or not (path / "model").is_dir():
        raise CheckpointError(f"{path} is not a resumable training checkpoint "
                              f"(no {STATE_NAME} and model/)")
    return path


# -- the loop ---------------------------------------------------------------------
def train(config: TrainConfig, resume: str | None = None, max_steps: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train as ``config`` says; ``resume`` is a checkpoint folder or ``"auto"`` (the
    latest in the output folder); ``max_steps`` stops early (the schedule is unchanged)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from medsegr.modeling.checkpoint import save_pretrained

    accelerator = Accelerator(
        mixed_precision=config.optim.mixed_precision,
        gradient_accumulation_steps=config.optim.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    out = config.output_dir
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    resume_dir = _resolve_resume(resume, out)
    if resume_dir is None and (latest_checkpoint(out) or (out / "final").exists()):
        raise InputError(f"{out} holds an earlier run: continue it with --resume auto, or set "
                         f"another [run] output_dir")
    set_seed(config.run.seed + accelerator.process_index)

    model = build_training_model(config, resume_dir / "model" if resume_dir else None)
    params = mark_trainable(model, config.optim.train_from_layer)
    model.to(accelerator.device)

    # data + frozen-encoder cache (the main process encodes, the others wait and read)
    train_examples, train_inputs = load_examples(config, model, config.data.train_split)
    train_examples = repeat_by_reasoning(train_examples, config.data.repeat)
    val_examples: list[Example] = []
    val_inputs: list[Any] = []
    if config.data.val_split and (config.run.eval_every or config.grounding_stage.steps):
        val_examples, val_inputs = load_examples(config, model, config.data.val_split)
    cache = EncoderCache(config.cache_dir, encoder_digest(model))
    if accelerator.is_main_process:
        cache.fill(model, train_inputs + val_inputs, progress=progress)
    accelerator.wait_for_everyone()

    pad = model.tokenizer.pad_token_id
    pad = pad if pad is not None else sorted(model.eos_token_ids)[0]
    batching: dict[str, Any] = (
        {"batch_sampler": LengthBuckets([len(e.input_ids) for e in train_examples],
                                        config.optim.batch_size, seed=config.run.seed)}
        if config.optim.length_buckets else
        {"batch_size": config.optim.batch_size, "shuffle": True,
         "generator": torch.Generator().manual_seed(config.run.seed)})
    loader = torch.utils.data.DataLoader(ExampleDataset(train_examples, cache),
                                         collate_fn=collate(pad), **batching)
    optimizer = torch.optim.AdamW(params, lr=config.optim.lr,
                                  weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.optim.warmup_steps, config.optim.steps))

    step = 0
    elapsed_before = 0.0  # training seconds of the run before a resume ([optim] max_seconds)
    if resume_dir is not None:
        state = torch.load(resume_dir / STATE_NAME, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        rng = state.get("rng", {})
        if rng and accelerator.num_processes == 1:
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if accelerator.is_main_process:
        (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    stop_at = min(config.optim.steps, max_steps if max_steps is not None else config.optim.steps)
    metrics_file = out / "metrics.jsonl"
    if accelerator.is_main_process:  # keep what led to the resumed step, drop the rest
        kept = [r for r in read_metrics(metrics_file) if r.get("step", 0) <= step]
        metrics_file.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    bar = tqdm(total=stop_at, initial=step, desc="training", unit="step",
               disable=not (progress and accelerator.is_local_main_process))
    first_loss: float | None = None
    last_loss = float("nan")
    window: list[dict[str, float]] = []
    t0 = time.perf_counter()
    # [optim] max_seconds reached: the text stage ends here, as if at its last step
    timed_out = bool(config.optim.max_seconds) and elapsed_before >= config.optim.max_seconds
    if timed_out:
        stop_at = step
    weights = dict(ce_weight=config.loss.ce)
    while step < stop_at:
        for batch in loader:
            with accelerator.accumulate(model):
                output = model(batch["input_ids"], batch["image_embeddings"],
                               attention_mask=batch["attention_mask"], labels=batch["labels"],
                               **weights)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and config.optim.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, config.optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            loss = accelerator.gather(output.loss.detach()[None]).mean().item()
            first_loss = loss if first_loss is None else first_loss
            last_loss = loss
            window.append({"loss": loss, **{k: float(getattr(output, k).detach())
                                            for k in ("ce_loss",)
                                            if getattr(output, k) is not None}})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if step % config.run.log_every == 0 or step == stop_at:
                record = {"step": step, "kind": "train", "lr": scheduler.get_last_lr()[0],
                          "elapsed_s": round(elapsed_before + time.perf_counter() - t0, 2),
                          **{k: float(np.mean([w[k] for w in window if k in w]))
                             for k in window[0]}}
                window = []
                _append_metrics(accelerator, metrics_file, record)
            if val_examples and config.run.eval_every and (
                    step % config.run.eval_every == 0 or step == stop_at):
                _append_metrics(accelerator, metrics_file,
                                {"step": step, "kind": "val",
                                 **validate(accelerator.unwrap_model(model), val_examples, cache,
                                            pad, weights)})
            if config.run.save_every and step % config.run.save_every == 0 and step < stop_at:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    _save_resumable(out, step, accelerator.unwrap_model(model), optimizer,
                                    scheduler, config, config.run.keep_checkpoints,
                                    elapsed_before + time.perf_counter() - t0)
            if (config.optim.max_seconds and step < stop_at
                    and elapsed_before + time.perf_counter() - t0 >= config.optim.max_seconds):
                timed_out = True
                stop_at = step
            if step >= stop_at:
                break
    bar.close()
    text_elapsed = elapsed_before + time.perf_counter() - t0
    accelerator.wait_for_everyone()
    final = out / "final"
    stage_steps = 0
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        if step > 0:
            _save_resumable(out, step, unwrapped, optimizer, scheduler, config,
                            config.run.keep_checkpoints, text_elapsed)
        grounding: dict[str, Any] | None = None
        if config.grounding_stage.steps and (step >= config.optim.steps or timed_out):
            from medsegr.training.grounding_stage import run_grounding_stage

            grounding = run_grounding_stage(unwrapped, config, cache, progress=progress)
            stage_steps = int(grounding["steps"])
        unwrapped.eval()
        training: dict[str, Any] = {
            "steps": step, "grounding_stage": grounding, "train_split": config.data.train_split,
            "text_seconds": round(text_elapsed, 1),
            "train_examples": len(train_examples),
            "final_loss": last_loss if math.isfinite(last_loss) else None}
        if config.engine.init_checkpoint:
            from medsegr.modeling.checkpoint import read_checkpoint_config

            earlier = read_checkpoint_config(config.path(config.engine.init_checkpoint))
            training["init_checkpoint"] = {"name": Path(config.engine.init_checkpoint).name,
                                           "training": earlier.get("training")}
        save_pretrained(unwrapped, final, extra={"training": training})
        from medsegr.training.curves import plot_curves

        plot_curves(metrics_file, out / "curves.png", out / "grounding" / "metrics.jsonl")
    accelerator.wait_for_everyone()
    return TrainResult(output_dir=out, final_checkpoint=final, steps=step,
                       first_loss=float("nan") if first_loss is None else first_loss,
                       last_loss=last_loss, encoded_slices=cache.computed,
                       grounding_stage_steps=stage_steps)


def _append_metrics(accelerator: Any, path: Path, record: dict[str, Any]) -> None:
    if accelerator.is_main_process:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


@torch.no_grad()
def validate(model: Any, examples: list[Example], cache: EncoderCache, pad: int,
             weights: dict[str, float], batch_size: int = 8) -> dict[str, float]:
    """Teacher-forced validation of the text: the mean answer cross-entropy."""
    was_training = model.training
    model.eval()
    fn = collate(pad)
    data = ExampleDataset(examples, cache)
    losses: list[float] = []
    device = next(model.parameters()).device
    for start in range(0, len(data), batch_size):
        batch = fn([data[i] for i in range(start, min(len(data), start + batch_size))])
        output = model(batch["input_ids"].to(device), batch["image_embeddings"].to(device),
                       attention_mask=batch["attention_mask"].to(device),
                       labels=batch["labels"].to(device), **weights)
        if output.ce_loss is not None:
            losses.append(float(output.ce_loss))
    if was_training:
        model.train()
        model.vision.image_encoder.eval()
    return {"val_ce_loss": float(np.mean(losses))} if losses else {}
