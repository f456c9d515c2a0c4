"""The grounding module's cost per slice, the encoder excluded.

    python -m medsegr.bench.grounding [--checkpoint DIR] [--repeats N] [--json FILE]

Times one slice's decoding as the pipeline does it: the input channels of the slice
and its neighbours, one backbone pass, then 1, 2, 4 and 8 ``[SEG]`` queries decoded
from it, in float32 and (where the CPU computes it natively) under bfloat16 autocast.
Median of ``--repeats`` runs after a warm-up, with the batch norms folded into the
convolutions as the engine runs it; the module's weights do not change its cost, so the
default module of the config is timed unless a checkpoint is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from medsegr.imaging.channels import input_channels
from medsegr.modeling.grounding import GroundingConfig, GroundingModule


def time_module(module: GroundingModule, masks: int, repeats: int, bf16: bool) -> float:
    cfg = module.config
    s = cfg.size
    raw = torch.rand(1, cfg.slices, s, s) * 1000 - 500
    emb = torch.randn(1, max(cfg.embed_dim, 1), 64, 64)
    states = torch.randn(masks, cfg.query_in)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    runs = []
    with torch.no_grad(), ctx:
        for k in range(repeats + 2):
            t0 = time.perf_counter()
            channels = input_channels(raw, torch.tensor([True]))
            feats = module.features(channels, emb if cfg.embed_dim else None)
            out = module.decode(feats, module.project_queries(states))
            (out.logits > 0).any()
            if k >= 2:
                runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def run(checkpoint: str | None, repeats: int) -> dict[str, Any]:
    if checkpoint:
        from medsegr.modeling.checkpoint import from_pretrained

        module = from_pretrained(checkpoint, device="cpu").grounding
    else:
        module = GroundingModule(GroundingConfig())
    module.eval()
    from medsegr.modeling.inference_opt import fuse_conv_bn

    fuse_conv_bn(module)  # as the engine runs it (medsegr.modeling.inference_opt)
    native_bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                       or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    rows = []
    for masks in (1, 2, 4, 8):
        row = {"masks": masks, "float32_ms": round(1000 * time_module(module, masks, repeats, False), 1)}
        if native_bf16:
            row["bfloat16_ms"] = round(1000 * time_module(module, masks, repeats, True), 1)
        rows.append(row)
    from medsegr.bench.machine import host_facts

    return {"machine": host_facts(), "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in module.parameters()),
            "config": module.config.to_dict(), "native_bf16": native_bf16, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medsegr.bench.grounding",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = run(args.checkpoint, max(1, args.repeats))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"grounding module, {result['parameters']:,} parameters, {result['threads']} threads")
    print("| masks | float32 ms/slice | bfloat16 ms/slice |")
    print("|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['masks']} | {r['float32_ms']} | {r.get('bfloat16_ms', '–')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
