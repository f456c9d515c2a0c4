"""What a text-stage step costs, and what each lever saves, side by side in one process.

::

    python -m medsegr.training.text_cost configs/train-answers.toml --steps 10 \\
        --json docs/eval/text-stage-cost.json

The model (the config's start checkpoint, or the base parts) and the training examples
are loaded once; then each arm runs ``--steps`` optimiser steps of ``[optim]
batch_size`` examples (after one untimed warm-up step) from the same start weights,
under the config's ``mixed_precision``:

- ``all-layers``: LoRA of every layer, the visual projector and the added tokens' rows
  train; random batches (the text stage of ``configs/train-default.toml``);
- ``buckets``: the same, in batches of similar length (``[optim] length_buckets``);
- ``top-layers``: the LoRA of the layers from ``[optim] train_from_layer`` (the upper
  half when the config has 0: 15 of SmolLM2-135M's 30) up only, random batches;
- ``top-layers+buckets``: both (``configs/train-answers.toml``).

Printed per arm: seconds per step, per example and per real (unpadded) token, and the
share of each batch that is padding.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

ARMS = ("all-layers", "buckets", "top-layers", "top-layers+buckets")


def _batches(lengths: list[int], batch_size: int, buckets: bool, count: int, seed: int) -> list[list[int]]:
    from medsegr.training.batches import LengthBuckets

    if buckets:
        out: list[list[int]] = []
        sampler = LengthBuckets(lengths, batch_size, seed=seed)
        while len(out) < count:
            out += list(sampler)
        return out[:count]
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < count * batch_size:
        block = list(range(len(lengths)))
        rng.shuffle(block)
        order += block
    return [order[k * batch_size:(k + 1) * batch_size] for k in range(count)]


def measure(config_path: str, steps: int = 10, arms: tuple[str, ...] = ARMS) -> dict[str, Any]:
    from medsegr.training.batches import ExampleDataset, collate
    from medsegr.training.config import TrainConfig
    from medsegr.training.encoder_cache import EncoderCache, encoder_digest
    from medsegr.training.trainer import (_decoder_layer_count, build_training_model, load_examples,
                                          mark_trainable)

    config = TrainConfig.from_file(config_path)
    model = build_training_model(config, None)
    examples, inputs = load_examples(config, model, config.data.train_split)
    cache = EncoderCache(config.cache_dir, encoder_digest(model))
    cache.fill(model, inputs, progress=False)
    dataset = ExampleDataset(examples, cache)
    pad = model.tokenizer.pad_token_id
    pad = pad if pad is not None else sorted(model.eos_token_ids)[0]
    merge = collate(pad)
    lengths = [len(e.input_ids) for e in examples]
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    top = config.optim.train_from_layer or _decoder_layer_count(model) // 2
    bf16 = config.optim.mixed_precision == "bf16"
    rows = []
    for arm in arms:
        model.load_state_dict(start)
        params = mark_trainable(model, top if arm.startswith("top-layers") else 0)
        optimizer = torch.optim.AdamW(params, lr=config.optim.lr)
        batches = _batches(lengths, config.optim.batch_size, arm.endswith("buckets"), steps + 1,
                           config.run.seed)
        model.train()
        model.vision.image_encoder.eval()
        seconds, real, padded = 0.0, 0, 0
        for k, batch_ids in enumerate(batches):
            batch = merge([dataset[i] for i in batch_ids])
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(batch["input_ids"], batch["image_embeddings"],
                            attention_mask=batch["attention_mask"], labels=batch["labels"])
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if k == 0:
                continue  # warm-up
            seconds += time.perf_counter() - t0
            real += int(batch["attention_mask"].sum())
            padded += int(batch["attention_mask"].numel())
        count = steps * config.optim.batch_size
        rows.append({"arm": arm, "trained_from_layer": top if arm.startswith("top-layers") else 0,
                     "steps": steps, "s_per_step": round(seconds / steps, 3),
                     "s_per_example": round(seconds / count, 4),
                     "ms_per_real_token": round(1000 * seconds / max(real, 1), 3),
                     "padding_share": round(1 - real / max(padded, 1), 3),
                     "trainable_parameters": sum(p.numel() for p in params)})
    return {"config": str(config_path), "batch_size": config.optim.batch_size,
            "mixed_precision": config.optim.mixed_precision, "examples": len(examples),
            "mean_tokens": round(sum(lengths) / len(lengths), 1), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsegr.training.text_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="training config (its data, model and [optim])")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm (default 10)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--json", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    result = measure(args.config, args.steps, tuple(args.arms))
    print(f"{result['examples']} examples of {result['mean_tokens']} tokens on average, batches of "
          f"{result['batch_size']}, {result['mixed_precision']}")
    print(f"{'arm':22s} {'s/step':>7s} {'s/example':>9s} {'ms/token':>8s} {'padding':>7s}")
    for r in result["rows"]:
        print(f"{r['arm']:22s} {r['s_per_step']:7.2f} {r['s_per_example']:9.3f} "
              f"{r['ms_per_real_token']:8.2f} {r['padding_share']:7.0%}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
