"""The grounding stage: train the pixel-level grounding module on cached inputs.

The LLM (with its LoRA) and the image encoder are frozen, so the ``[SEG]`` states and
the encoder embeddings are computed once (:mod:`medsegr.training.grounding_data`,
:mod:`medsegr.training.encoder_cache`) and every step only runs the grounding module:
one backbone pass per image, every query of the image decoded from it.

Each step takes ``batch_size`` images with all their structures plus their absent
queries (empty targets, presence 0). Scanner augmentations are applied on the fly to
the raw intensities: intensity scale and offset, gamma (MR), noise, blur, resolution
changes, up/down flips and left/right flips (which swap the left/right targets; the
cached embedding is flipped with the image). A share of the images is given hints (a
jittered box, positive and negative points taken from one structure's mask), some of
them with no text query at all, so the module works with text, hints or both.

Loss: BCE + Dice on the masks, BCE on presence; bf16 autocast where the CPU has it.
Resumable (``state.pt`` in the output folder) with a tqdm bar; metrics go to
``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsegr.imaging.channels import hint_maps, input_channels
from medsegr.training.config import GroundingStageSection
from medsegr.modeling.grounding import GroundingConfig, GroundingModule, loss_terms
from medsegr.training.grounding_data import GroundingItem

log = logging.getLogger(__name__)

STATE_NAME = "state.pt"
#: bumped when the grounding items change what they hold (their cache is then rebuilt)
ITEMS_FORMAT = 2


@dataclass
class StageSettings(GroundingStageSection):
    """``[grounding_stage]`` of a training config, with what the stage takes from its
    other sections (precision, seed, logging interval)."""

    mixed_precision: str = "bf16"
    seed: int = 0
    log_every: int = 25

    @classmethod
    def from_config(cls, config: Any) -> "StageSettings":
        """From a :class:`medsegr.training.config.TrainConfig`."""
        section = asdict(config.grounding_stage)
        return cls(**section, mixed_precision=config.optim.mixed_precision if
                   config.optim.mixed_precision != "fp16" else "no", seed=config.run.seed,
                   log_every=config.run.log_every)


# --------------------------------------------------------------------------- batches
def _query_vectors(item: GroundingItem, name_pool: bool) -> torch.Tensor:
    assert item.states is not None and item.name_states is not None, "states not computed"
    if name_pool:
        return torch.cat([item.states, item.name_states], 1)
    return item.states


def _augment(raw: torch.Tensor, is_ct: bool, rng: random.Random) -> torch.Tensor:
    """Scanner augmentations on one ``(n, S, S)`` raw stack."""
    if is_ct:
        raw = raw * rng.uniform(0.92, 1.08) + rng.uniform(-40.0, 40.0)
        if rng.random() < 0.5:
            raw = raw + torch.randn_like(raw) * rng.uniform(0.0, 25.0)
    else:
        raw = raw.clamp(0, 1) ** rng.uniform(0.7, 1.4) * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05)
        if rng.random() < 0.5:
            raw = raw + torch.randn_like(raw) * rng.uniform(0.0, 0.04)
    if rng.random() < 0.2:
        raw = F.avg_pool2d(raw[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    if rng.random() < 0.2:  # a coarser scanner: down, then back up
        size = raw.shape[-1]
        low = max(32, int(size * rng.uniform(0.45, 0.8)))
        raw = F.interpolate(F.interpolate(raw[None], size=(low, low), mode="area"),
                            size=(size, size), mode="bilinear", align_corners=False)[0]
    return raw


def _hints_from(mask: np.ndarray, rng: random.Random) -> tuple[list[float] | None, list[tuple[float, float, int]]]:
    ys, xs = np.nonzero(mask)
    box = None
    points: list[tuple[float, float, int]] = []
    use_box = rng.random() < 0.6
    use_points = (not use_box) or rng.random() < 0.4
    if use_box:
        x0, x1, y0, y1 = float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1)
        w, h = x1 - x0, y1 - y0
        j = 0.1
        box = [x0 + rng.uniform(-j, j) * w, y0 + rng.uniform(-j, j) * h,
               x1 + rng.uniform(-j, j) * w, y1 + rng.uniform(-j, j) * h]
    if use_points:
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(xs))
            points.append((float(xs[k]), float(ys[k]), 1))
        out_y, out_x = np.nonzero(~mask.astype(bool))
        for _ in range(rng.randint(0, 2)):
            k = rng.randrange(len(out_x))
            points.append((float(out_x[k]), float(out_y[k]), 0))
    return box, points


def make_batch(items: list[GroundingItem], cache: Any, name_pool: bool, settings: StageSettings,
               rng: random.Random, train: bool) -> dict[str, torch.Tensor]:
    """Inputs and targets of a step (``train``: augmented, with hints sometimes)."""
    raws, flags, embs, hints = [], [], [], []
    queries, owners, targets, present, null = [], [], [], [], []
    for b, item in enumerate(items):
        raw = torch.from_numpy(item.raw.astype(np.float32))
        emb = cache.get(item.cache_key).float() if cache is not None else None
        tg = item.targets
        q = _query_vectors(item, name_pool)
        n_real = len(item.keys)
        absent_ok = True
        hint = torch.zeros((3, raw.shape[-1], raw.shape[-1]))
        if train:
            raw = _augment(raw, item.is_ct, rng)
            if item.flipped_targets is not None and rng.random() < 0.5:
                raw = raw.flip(-1)
                emb = None if emb is None else emb.flip(-1)
                tg = item.flipped_targets[:, :, ::-1]
            if rng.random() < 0.15:
                raw = raw.flip(-2)
                emb = None if emb is None else emb.flip(-2)
                tg = tg[:, ::-1, :]
            filled = [j for j in range(n_real) if tg[j].any()]
            if filled and rng.random() < settings.hint_share:
                j = rng.choice(filled)
                box, points = _hints_from(np.ascontiguousarray(tg[j]), rng)
                hint = hint_maps(raw.shape[-1], box, points)
                keep = [j]
                tg = tg[keep]
                q = q[keep]
                n_real = 1
                absent_ok = False
                null.append(rng.random() < settings.hint_only_share)
            else:
                null.extend([False] * n_real)
        else:
            null.extend([False] * n_real)
        k_abs = (q.shape[0] - n_real) if absent_ok else 0
        if not absent_ok:
            q = q[:n_real]
        null.extend([False] * k_abs)
        raws.append(raw)
        flags.append(item.is_ct)
        embs.append(emb)
        hints.append(hint)
        queries.append(q)
        owners.extend([b] * (n_real + k_abs))
        size = raw.shape[-1]
        t = torch.from_numpy(tg[:n_real].copy()).float()  # a copy: flipped views have negative strides
        targets.append(torch.cat([t, torch.zeros((k_abs, size, size))]) if k_abs else t)
        present.extend([bool(tg[j].any()) for j in range(n_real)] + [False] * k_abs)
    is_ct = torch.tensor(flags)
    return {
        "channels": input_channels(torch.stack(raws), is_ct, torch.stack(hints)),
        "embedding": torch.stack(embs) if embs and embs[0] is not None else None,
        "queries": torch.cat(queries) if queries else torch.zeros((0, 1)),
        "owner": torch.tensor(owners, dtype=torch.long),
        "targets": torch.cat(targets),
        "present": torch.tensor(present, dtype=torch.bool),
        "null": torch.tensor(null, dtype=torch.bool),
    }


def _forward(module: GroundingModule, batch: dict[str, torch.Tensor]):
    feats = module.features(batch["channels"], batch["embedding"])
    states = batch["queries"].to(module.null_query.dtype)
    null = batch["null"]
    if bool(null.any()):
        states = torch.where(null[:, None], module.null_query[None].expand_as(states), states)
    return module.decode(feats, module.project_queries(states), batch["owner"])


def _autocast(mixed_precision: str):
    import contextlib

    if mixed_precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_items(module: GroundingModule, items: list[GroundingItem], cache: Any, name_pool: bool,
                   mixed_precision: str = "bf16", presence_cut: float = 0.0,
                   batch_size: int = 8) -> dict[str, Any]:
    """Dice per structure (real queries whose slice holds the structure), the share of
    absent queries that come back empty, and the presence scores (for the threshold)."""
    was = module.training
    module.eval()
    dice: dict[str, list[float]] = defaultdict(list)
    by_source: dict[str, list[float]] = defaultdict(list)
    absent_empty: list[bool] = []
    scores: list[tuple[float, bool]] = []
    rng = random.Random(0)
    settings = StageSettings()
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = make_batch(chunk, cache, name_pool, settings, rng, train=False)
        if batch["queries"].shape[0] == 0:
            continue
        with _autocast(mixed_precision):
            out = _forward(module, batch)
        logits = out.logits.float()
        pres = out.presence.float()
        pred = (logits > 0) & (pres > presence_cut)[:, None, None]
        q = 0
        for item in chunk:
            for j, name in enumerate(item.keys + item.absent):
                p = pred[q]
                real = j < len(item.keys)
                scores.append((float(pres[q]), bool(batch["present"][q])))
                if real:
                    g = batch["targets"][q] > 0.5
                    if bool(g.any()):
                        inter = float((p & g).sum())
                        d = 2 * inter / float(p.sum() + g.sum())
                        dice[item.keys[j]].append(d)
                        by_source[item.source].append(d)
                else:
                    absent_empty.append(not bool(p.any()))
                q += 1
    if was:
        module.train()
    all_d = [d for v in dice.values() for d in v]
    return {"dice": float(np.mean(all_d)) if all_d else float("nan"), "masks": len(all_d),
            "by_structure": {k: (float(np.mean(v)), len(v)) for k, v in sorted(dice.items())},
            "by_source": {k: (float(np.mean(v)), len(v)) for k, v in sorted(by_source.items())},
            "absent_empty": float(np.mean(absent_empty)) if absent_empty else float("nan"),
            "absent_queries": len(absent_empty), "presence_scores": scores}


# --------------------------------------------------------------------------- training
def _lr(step: int, settings: StageSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_grounding(config: GroundingConfig, settings: StageSettings, train_items: list[GroundingItem],
                    val_items: list[GroundingItem], cache: Any, out_dir: Path,
                    progress: bool = True, start: dict[str, torch.Tensor] | None = None,
                    ) -> GroundingModule:
    """Train (or resume, from ``out_dir/state.pt``) a grounding module; returns it.
    ``cache`` is the encoder cache (None when ``config.embed_dim`` is 0); ``start`` the
    weights to start from (a fresh module when None; a resumed state wins)."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    module = GroundingModule(config)
    if start is not None:
        module.load_state_dict(start)
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr(s, settings))
    step, elapsed = 0, 0.0
    state_file = out_dir / STATE_NAME
    if state_file.is_file():
        saved = torch.load(state_file, map_location="cpu", weights_only=False)
        if saved["config"] != config.to_dict():
            raise ValueError(f"{state_file} was written by another grounding module config")
        module.load_state_dict(saved["module"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step, elapsed = int(saved["step"]), float(saved.get("elapsed_s", 0.0))
    metrics = out_dir / "metrics.jsonl"
    use_cache = cache if config.embed_dim > 0 else None
    module.train()
    bar = tqdm(total=settings.steps, initial=step, desc="grounding stage", unit="step",
               disable=not progress)
    window: list[dict[str, float]] = []
    t_last = time.perf_counter()

    def save() -> None:
        from medsegr.io.atomic import atomic_path

        with atomic_path(state_file) as tmp:
            torch.save({"module": module.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step, "elapsed_s": elapsed,
                        "config": config.to_dict(), "settings": asdict(settings)}, tmp)

    while step < settings.steps and not (settings.max_seconds and elapsed >= settings.max_seconds):
        rng = random.Random(settings.seed * 1_000_003 + step)
        chosen = [train_items[rng.randrange(len(train_items))] for _ in range(settings.batch_size)]
        batch = make_batch(chosen, use_cache, config.name_pool, settings, rng, train=True)
        if batch["queries"].shape[0] == 0:
            step += 1
            continue
        with _autocast(settings.mixed_precision):
            out = _forward(module, batch)
        terms = loss_terms(out, batch["targets"], batch["present"])
        loss = settings.bce * terms["bce"] + settings.dice * terms["dice"] + settings.presence * terms["presence"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        window.append({k: float(v.detach()) for k, v in terms.items()} | {"loss": float(loss.detach())})
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if step % settings.log_every == 0:
            _append(metrics, {"step": step, "kind": "train", "elapsed_s": round(elapsed, 1),
                              "lr": scheduler.get_last_lr()[0],
                              **{k: float(np.mean([w[k] for w in window])) for k in window[0]}})
            window = []
        if val_items and settings.eval_every and step % settings.eval_every == 0:
            report = evaluate_items(module, val_items, use_cache, config.name_pool, settings.mixed_precision)
            _append(metrics, {"step": step, "kind": "val", "dice": report["dice"],
                              "absent_empty": report["absent_empty"],
                              "by_structure": report["by_structure"]})
            t_last = time.perf_counter()
        if settings.save_every and step % settings.save_every == 0:
            save()
            t_last = time.perf_counter()
    bar.close()
    save()
    module.eval()
    return module


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------- the stage
#: the model config's sections (and keys; None: all) that the ``[SEG]`` states depend on
STATE_CONFIG: dict[str, tuple[str, ...] | None] = {
    "llm": ("source", "gguf_file", "system_prompt"),
    "vision": None,
    "model": ("visual_grid", "seg_token", "image_token", "visual_projector_hidden", "measured_spans"),
    "lora": None,
}


def llm_digest(model: Any) -> str:
    """Identifies what the ``[SEG]`` states depend on: the LLM's trained pieces (LoRA,
    the added tokens' rows), the visual projector and the parts of the model config that
    shape them (:data:`STATE_CONFIG`; not the grounding module's settings, the
    thresholds or generation, which a checkpoint may change after its states were
    cached, as ``presence_threshold --write`` does)."""
    import hashlib

    config = model.config.to_dict()
    shaping = {section: {k: v for k, v in config[section].items()
                         if keys is None or k in keys}
               for section, keys in STATE_CONFIG.items()}
    h = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode())
    for name, p in sorted(model.named_parameters()):
        if name.startswith("visual_projector.") or "lora_" in name or "trainable_tokens" in name:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    ids = torch.tensor([model.seg_token_id, model.image_token_id])
    h.update(model.llm.get_input_embeddings().weight.detach()[ids].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def prepare_items(model: Any, config: Any, split: str, cache: Any, progress: bool = True) -> list[GroundingItem]:
    """The grounding items of a split with their ``[SEG]`` states, read from
    ``OUTPUT_DIR/grounding-cache/`` when that was made by the same LLM and dataset, else
    built, computed and stored there (missing encoder embeddings are encoded too)."""
    from medsegr.data.records import load_dataset
    from medsegr.training.examples import ImageStore, slice_input
    from medsegr.training.grounding_data import build_items, compute_states, load_items, save_items

    gcfg = model.grounding.config
    records = load_dataset(config.data_root, split)
    stamp = hashlib_stamp(ITEMS_FORMAT, llm_digest(model), split, len(records), gcfg.size, gcfg.slices,
                          (config.data_root / f"{split}.jsonl").stat().st_mtime_ns)
    file = config.output_dir / "grounding-cache" / f"{split}-{stamp}.pt"
    if file.is_file():
        return load_items(file)
    items = build_items(model, records, gcfg.size, gcfg.slices, seed=config.run.seed, progress=progress)
    store = ImageStore()
    missing = [r for r, it in zip(records, items) if not cache.has(it.cache_key)]
    if missing:
        cache.fill(model, [slice_input(r, store, model.vision.image_size) for r in missing],
                   progress=progress)
    compute_states(model, items, cache, "bf16" if config.optim.mixed_precision == "bf16" else "no",
                   progress=progress)
    save_items(file, items)
    return items


def add_generated_absent(model: Any, config: Any, items: list[GroundingItem], cache: Any,
                         progress: bool) -> int:
    """Add the absent queries of the model's own answers to ``items``
    (:mod:`medsegr.training.generated_absent`) when ``[grounding_stage]
    generated_absent`` asks for them, collected once and kept in
    ``OUTPUT_DIR/grounding-cache/``; returns how many were added."""
    from medsegr.io.atomic import atomic_path
    from medsegr.training import generated_absent

    section = config.grounding_stage
    if section.generated_absent <= 0:
        return 0
    stamp = hashlib_stamp(ITEMS_FORMAT, llm_digest(model), config.data.train_split, len(items),
                          section.generated_absent, config.run.seed,
                          generated_absent.QUESTIONS)
    file = config.output_dir / "grounding-cache" / f"generated-absent-{stamp}.pt"
    if file.is_file():
        collected = torch.load(file, map_location="cpu", weights_only=False)
    else:
        collected = generated_absent.collect(
            model, items, cache, section.generated_absent, seed=config.run.seed,
            mixed_precision="bf16" if config.optim.mixed_precision == "bf16" else "no",
            progress=progress)
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as tmp:
            torch.save(collected, tmp)
    return generated_absent.apply(items, collected)


def hashlib_stamp(*parts: Any) -> str:
    import hashlib

    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:12]


def run_grounding_stage(model: Any, config: Any, cache: Any, progress: bool = True) -> dict[str, Any]:
    """Train ``model.grounding`` as ``config`` ``[grounding_stage]`` says (resumable) and
    load the result into it; returns what the checkpoint records of the stage."""
    t0 = time.perf_counter()
    train_items = prepare_items(model, config, config.data.train_split, cache, progress)
    generated = add_generated_absent(model, config, train_items, cache, progress)
    val_items = (prepare_items(model, config, config.data.val_split, cache, progress)
                 if config.data.val_split else [])
    prepare_s = time.perf_counter() - t0
    settings = StageSettings.from_config(config)
    start = ({k: v.detach().clone() for k, v in model.grounding.state_dict().items()}
             if settings.warm_start else None)
    module = train_grounding(model.grounding.config, settings, train_items, val_items, cache,
                             config.output_dir / "grounding", progress=progress, start=start)
    model.grounding.load_state_dict(module.state_dict())
    model.grounding.eval()
    saved = torch.load(config.output_dir / "grounding" / STATE_NAME, map_location="cpu",
                       weights_only=False)
    record: dict[str, Any] = {"steps": int(saved["step"]), "train_seconds": round(saved["elapsed_s"], 1),
                              "warm_start": settings.warm_start,
                              "generated_absent_queries": generated,
                              "prepare_seconds": round(prepare_s, 1), "train_records": len(train_items)}
    if val_items:
        report = evaluate_items(module, val_items, cache if module.config.embed_dim else None,
                                module.config.name_pool, settings.mixed_precision)
        record["val"] = {"dice": round(report["dice"], 4), "absent_empty": round(report["absent_empty"], 4)}
    return record
