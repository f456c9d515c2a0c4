"""``medsegr train CONFIG [--resume auto|DIR] [--max-steps N]``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune MedSegR on a MedSeg-QA-style dataset "
                       "(also under `accelerate launch`)")
    p.add_argument("config", help="training config (TOML/JSON; see docs/training.md)")
    p.add_argument("--resume", default=None, metavar="auto|DIR",
                   help="continue from a checkpoint folder, or the latest one (auto)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps (the learning-rate schedule is unchanged)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medsegr.training.config import TrainConfig
    from medsegr.training.trainer import train

    config = TrainConfig.from_file(args.config)
    result = train(config, resume=args.resume, max_steps=args.max_steps,
                   progress=not args.no_progress)
    joint = (f"joint stage {result.steps} steps: loss {result.first_loss:.4f} -> "
             f"{result.last_loss:.4f}" if result.steps else "no joint-stage steps")
    print(f"{joint}; grounding stage {result.grounding_stage_steps} steps; "
          f"{result.encoded_slices} slices encoded")
    print(f"fine-tuned checkpoint: {result.final_checkpoint}")
    return 0
