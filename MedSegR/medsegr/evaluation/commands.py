"""``medsegr eval CHECKPOINT DATASET [--split test] [--out DIR]``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split (Dice, gIoU, "
                       "cIoU, text) against an oracle-box and an Otsu reference")
    p.add_argument("checkpoint", help="checkpoint folder, 'default' (the bundled one) or "
                   "'base' (the untrained base parts)")
    p.add_argument("dataset", help="dataset folder (see docs/dataset-format.md)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="eval-output", metavar="DIR")
    p.add_argument("--config", default=None, help="model config file for 'base'")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--per-source", type=int, default=None, metavar="N",
                   help="a quick sample: at most N evenly spaced records of each source")
    p.add_argument("--templates", choices=("trained", "heldout", "all"), default="trained",
                   help="which question wordings: the training family (default), the "
                   "held-out family (the test split's -t records, never trained on), or both")
    p.add_argument("--no-references", action="store_true",
                   help="skip the oracle-box and Otsu references")
    p.add_argument("--presence-threshold", type=float, default=None, metavar="P",
                   help="override the checkpoint's [model] presence_threshold (0..1)")
    p.add_argument("--model-words", action="store_true",
                   help="leave every word to the model: [generation] measured_words off (the "
                   "engine then picks no side or size word from its measurements)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medsegr.config import MedSegRConfig
    from medsegr.errors import InputError
    from medsegr.evaluation.evaluate import evaluate
    from medsegr.evaluation.report import markdown, write_report
    from medsegr.pipeline import MedSegRPipeline

    if not Path(args.dataset).is_dir():
        raise InputError(f"dataset folder not found: {args.dataset}")
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    if args.per_source is not None and args.per_source < 1:
        raise InputError("--per-source must be at least 1")
    if args.checkpoint == "base":
        config = MedSegRConfig.from_file(args.config) if args.config else MedSegRConfig()
        pipe = MedSegRPipeline.load(None, config=config, device=args.device)
    else:
        if args.checkpoint != "default" and not Path(args.checkpoint).is_dir():
            raise InputError(f"checkpoint folder not found: {args.checkpoint}")
        pipe = MedSegRPipeline.load(args.checkpoint, device=args.device)
    if args.presence_threshold is not None:
        if not 0.0 <= args.presence_threshold <= 1.0:
            raise InputError("--presence-threshold must be between 0 and 1")
        pipe.model.config.model.presence_threshold = args.presence_threshold
    if args.model_words:
        pipe.model.config.generation.measured_words = False
    report = evaluate(pipe, args.dataset, args.split, references=not args.no_references,
                      limit=args.limit, progress=not args.no_progress,
                      per_source=args.per_source, templates=args.templates)
    paths = write_report(report, args.out)
    print(markdown(report))
    print(f"wrote {paths['markdown']} and {paths['json']}")
    return 0
