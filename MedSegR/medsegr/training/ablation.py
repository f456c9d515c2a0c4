"""The mask-head ablation of ``docs/training.md``:
``python -m medsegr.training.ablation CONFIG CHECKPOINT [--steps N] [--out FILE]``.

From one resumable checkpoint of the joint stage (``runs/default/checkpoint-000260``),
the decoder stage is run once per mask-head variant, with the same data, the same
``[SEG]`` states (computed once), the same sample order and the same number of steps:

- ``sam``: the ``[SEG]`` prompt alone into the SAM mask decoder;
- ``+box``: plus the second pass prompted with the box of the first pass's mask;
- ``+box+pixels``: plus the full-resolution pixel refiner.

Each variant starts from the checkpoint's weights and reports the validation Dice of
its final masks (teacher-forced ``[SEG]`` states, the split's every mask).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

VARIANTS = {"sam": (False, False), "+box": (True, False), "+box+pixels": (True, True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the training config of the run")
    parser.add_argument("checkpoint", help="a resumable joint-stage checkpoint folder (with model/)")
    parser.add_argument("--steps", type=int, default=100, help="decoder-stage steps per variant")
    parser.add_argument("--conversations", type=int, default=0,
                        help="train on this many evenly spaced training conversations (0: all)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    from medsegr.modeling.checkpoint import from_pretrained
    from medsegr.training.config import TrainConfig
    from medsegr.training.decoder_stage import STAGE_PREFIXES, autocast, decoder_loss, seg_states
    from medsegr.training.decoder_stage import _batch, _samples, _shuffled, validate_masks
    from medsegr.training.encoder_cache import EncoderCache, encoder_digest
    from medsegr.training.trainer import load_examples, lr_lambda

    config = TrainConfig.from_file(args.config)
    base = from_pretrained(Path(args.checkpoint) / "model", device="cpu", trainable=True)
    if base.pixel_refiner is None or not base.config.model.box_refine:
        raise SystemExit("the checkpoint must have been trained with box_refine and a pixel refiner")
    train, _ = load_examples(config, base, config.data.train_split)
    if args.conversations and args.conversations < len(train):
        step = len(train) / args.conversations
        train = [train[int(i * step)] for i in range(args.conversations)]
    val, _ = load_examples(config, base, config.data.val_split)
    cache = EncoderCache(config.cache_dir, encoder_digest(base))
    pad = base.tokenizer.pad_token_id
    pad = pad if pad is not None else sorted(base.eos_token_ids)[0]
    mp = config.optim.mixed_precision
    states = seg_states(base, train, cache, pad, mp, progress=True)
    val_states = seg_states(base, val, cache, pad, mp, progress=True)
    samples = _samples(train, states)
    stage = config.decoder_stage
    results = {}
    for name, (box, pixels) in VARIANTS.items():
        torch.manual_seed(config.run.seed)
        model = copy.deepcopy(base)
        model.config = copy.deepcopy(base.config)
        model.config.model.box_refine = box
        if not pixels:
            model.pixel_refiner = None
        params = [p for n, p in model.named_parameters() if n.startswith(STAGE_PREFIXES)]
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(STAGE_PREFIXES))
        before = validate_masks(model, val, val_states, cache, mp)["val_dice"]
        optimizer = torch.optim.AdamW(params, lr=stage.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage.warmup_steps, args.steps))
        stream = _shuffled(samples, config.run.seed)
        model.train()
        model.vision.image_encoder.eval()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            batch = _batch(model, [next(stream) for _ in range(stage.batch_size)], train, states, cache,
                           torch.device("cpu"))
            with autocast(mp, torch.device("cpu")):
                loss, _, _ = decoder_loss(model, batch, config.loss.bce, config.loss.dice)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        seconds = time.perf_counter() - t0
        after = validate_masks(model, val, val_states, cache, mp)
        results[name] = {"val_dice_before": round(before, 4), "val_dice": round(after["val_dice"], 4),
                         "train_conversations": len(train),
                         "val_masks": after["val_masks"], "steps": args.steps,
                         "seconds_per_step": round(seconds / args.steps, 2)}
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoint": str(args.checkpoint), "variants": results},
                                             indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
