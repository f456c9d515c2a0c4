"""The grounding module's ablation: arms trained for the same wall time on the same
cached items, scored on the held-out test split (teacher-forced ``[SEG]`` states).

    python -m medsegr.training.grounding_ablation configs/train-grounding-stage.toml \\
        --seconds 240 --out docs/eval/grounding-ablation.json

Arms (each against the shipped setting: 256², 2.5D, the LiteMedSAM embedding fused,
``[SEG]`` states alone):

- ``no-embedding``: without the frozen encoder's embedding;
- ``384``: a 384² working grid;
- ``2d``: the slice alone, no neighbours;
- ``name-pool``: the query also holds the mean state of the name before ``[SEG]``;
- ``checkpoint`` (not trained here, so not in the default list): the config's init
  checkpoint's own module, scored the same way, for reference.

The items of the train and test splits come from the grounding stage's cache
(``OUTPUT_DIR/grounding-cache``; the test split's is made here the first time). When the
config asks for ``generated_absent`` queries, every arm trains with them, as the stage does.
An arm already in ``--out`` with the same ``--seconds`` is kept, so a stopped run goes on
with the arms it had not finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from medsegr.modeling.grounding import GroundingConfig
from medsegr.training.grounding_data import GroundingItem
from medsegr.training.grounding_stage import StageSettings, evaluate_items, train_grounding

ARMS = ("default", "no-embedding", "384", "2d", "name-pool")
#: scored, not trained
REFERENCE_ARMS = ("checkpoint",)


def _resized(items: list[GroundingItem], model: Any, config: Any, split: str, size: int) -> list[GroundingItem]:
    """The same items on a ``size`` grid (their states are kept)."""
    from medsegr.data.records import load_dataset
    from medsegr.training.grounding_data import build_items

    records = {r.id: r for r in load_dataset(config.data_root, split)}
    rebuilt = build_items(model, [records[it.record_id] for it in items], size,
                          model.grounding.config.slices, seed=config.run.seed)
    for new, old in zip(rebuilt, items, strict=True):
        # the states, absent queries and encoder embedding (computed at the encoder's own
        # 256 x 256 input) stay those of the item
        new.states, new.name_states = old.states, old.name_states
        new.absent, new.cache_key = old.absent, old.cache_key
    return rebuilt


def _center_only(items: list[GroundingItem]) -> list[GroundingItem]:
    out = []
    for it in items:
        mid = it.raw.shape[0] // 2
        out.append(dataclasses.replace(it, raw=it.raw[mid:mid + 1]))
    return out


def run(config_path: str, seconds: float, out: Path, arms: list[str], progress: bool = True) -> dict[str, Any]:
    from medsegr.training.config import TrainConfig
    from medsegr.training.encoder_cache import EncoderCache, encoder_digest
    from medsegr.training.grounding_stage import add_generated_absent, prepare_items
    from medsegr.training.trainer import build_training_model

    config = TrainConfig.from_file(config_path)
    model = build_training_model(config, None)
    model.eval()
    cache = EncoderCache(config.cache_dir, encoder_digest(model))
    train_items = prepare_items(model, config, config.data.train_split, cache, progress)
    generated = add_generated_absent(model, config, train_items, cache, progress)
    test_items = prepare_items(model, config, "test", cache, progress)
    base = model.grounding.config
    results: dict[str, Any] = {"seconds_per_arm": seconds, "train_records": len(train_items),
                               "generated_absent_queries": generated,
                               "test_records": len(test_items), "arms": {}}
    if out.is_file():
        earlier = json.loads(out.read_text(encoding="utf-8"))
        if earlier.get("seconds_per_arm") == seconds:
            results["arms"] = earlier.get("arms", {})
    for arm in arms:
        if arm in results["arms"]:
            print(f"{arm}: kept from {out}", flush=True)
            continue
        if arm == "checkpoint":
            report = evaluate_items(model.grounding, test_items,
                                    cache if base.embed_dim else None, base.name_pool,
                                    StageSettings.from_config(config).mixed_precision)
            results["arms"][arm] = _row(report, steps=0, trained_s=0.0)
            _write(out, results)
            continue
        cfg = dataclasses.replace(base)
        tr, te = train_items, test_items
        if arm == "no-embedding":
            cfg = dataclasses.replace(base, embed_dim=0)
        elif arm == "384":
            cfg = dataclasses.replace(base, size=384)
            tr = _resized(train_items, model, config, config.data.train_split, 384)
            te = _resized(test_items, model, config, "test", 384)
        elif arm == "2d":
            cfg = dataclasses.replace(base, slices=1)
            tr, te = _center_only(train_items), _center_only(test_items)
        elif arm == "name-pool":
            cfg = dataclasses.replace(base, name_pool=True, query_in=base.query_in * 2)
        settings = StageSettings.from_config(config)
        arm_dir = config.output_dir / "ablation" / arm
        # the same wall time for every arm: the schedule is sized from a short timing run
        probe = dataclasses.replace(settings, steps=4, warmup_steps=1, eval_every=0, save_every=0)
        import shutil
        import torch

        shutil.rmtree(arm_dir.with_name(arm + "-timing"), ignore_errors=True)
        train_grounding(cfg, probe, tr, [], cache, arm_dir.with_name(arm + "-timing"), progress=False)
        per_step = float(torch.load(arm_dir.with_name(arm + "-timing") / "state.pt",
                                    weights_only=False)["elapsed_s"]) / 4
        settings = dataclasses.replace(settings, steps=max(10, int(seconds / per_step)),
                                       max_seconds=seconds, eval_every=0, save_every=25)
        t0 = time.perf_counter()
        module = train_grounding(cfg, settings, tr, [], cache, arm_dir, progress=progress)
        trained_s = time.perf_counter() - t0
        report = evaluate_items(module, te, cache if cfg.embed_dim else None, cfg.name_pool,
                                settings.mixed_precision)
        steps = int(torch.load(arm_dir / "state.pt", weights_only=False)["step"])
        results["arms"][arm] = _row(report, steps, trained_s)
        _write(out, results)
        print(f"{arm}: {steps} steps, test Dice {report['dice']:.3f}, absent empty "
              f"{report['absent_empty']:.3f}", flush=True)
    return results


def _row(report: dict[str, Any], steps: int, trained_s: float) -> dict[str, Any]:
    return {"steps": steps, "train_seconds": round(trained_s, 1),
            "dice": round(report["dice"], 4), "absent_empty": round(report["absent_empty"], 4),
            "by_structure": {k: [round(v[0], 4), v[1]] for k, v in report["by_structure"].items()},
            "by_source": {k: [round(v[0], 4), v[1]] for k, v in report["by_source"].items()}}


def _write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


#: the structures the grounding module's targets name, in the docs' table
TARGET_STRUCTURES = ("body", "bone", "left_lung", "right_lung", "lungs", "liver", "heart",
                     "vertebra", "brain", "left_cerebral_hemisphere",
                     "right_cerebral_hemisphere", "head", "white_matter", "lesion")


def markdown(results: dict[str, Any], structures: tuple[str, ...] | None = None) -> str:
    """The arms as a Markdown table: every structure, or those of ``structures``."""
    arms = results["arms"]
    keys = list(structures) if structures else sorted(
        {k for a in arms.values() for k in a["by_structure"]})
    head = ("| arm | steps | train s | Dice (all) | absent empty | "
            + " | ".join(k.replace("_", " ") for k in keys) + " |")
    lines = [head, "|" + "---|" * (5 + len(keys))]
    for name, a in arms.items():
        cells = [f"{a['by_structure'][k][0]:.2f}" if k in a["by_structure"] else "–" for k in keys]
        lines.append(f"| {name} | {a['steps']} | {a.get('train_seconds', 0):.0f} | {a['dice']:.3f} "
                     f"| {a['absent_empty']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medsegr.training.grounding_ablation",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a training config with [grounding_stage] (its init checkpoint's LLM)")
    p.add_argument("--seconds", type=float, default=240.0, help="training time per arm")
    p.add_argument("--arms", default=",".join(ARMS),
                   help=f"comma-separated, of {', '.join(ARMS + REFERENCE_ARMS)}")
    p.add_argument("--out", default="docs/eval/grounding-ablation.json")
    p.add_argument("--table", action="store_true",
                   help="only print the table of --out's arms (the targets' structures)")
    args = p.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.out).read_text(encoding="utf-8")), TARGET_STRUCTURES))
        return 0
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS) - set(REFERENCE_ARMS))
    if unknown:
        p.error(f"unknown arm(s): {', '.join(unknown)}")
    results = run(args.config, args.seconds, Path(args.out), arms)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

