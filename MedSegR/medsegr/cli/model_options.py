"""The command-line options that choose the model (``--checkpoint DIR | --base
[--config FILE]``), shared by ``medsegr ask``, ``serve`` and ``bench``.

Light: importing it pulls in neither torch nor the model code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medsegr.errors import InputError


def add_model_options(parser: argparse.ArgumentParser, base_help: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--checkpoint", default="default", metavar="DIR",
                       help="fine-tuned checkpoint folder (default: the bundled one; the base "
                       "parts where there is none)")
    group.add_argument("--base", action="store_true", help=base_help)
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="model configuration file (TOML/JSON) for --base: other base parts")


def chosen_checkpoint(args: argparse.Namespace) -> str | None:
    """The checkpoint the options name (None: the base parts), after checking that they
    fit together and that a named folder exists."""
    if args.config is not None and not args.base:
        raise InputError("--config applies to --base (a checkpoint brings its own configuration)")
    if args.config is not None and not Path(args.config).is_file():
        raise InputError(f"config file not found: {args.config}")
    if args.base:
        return None
    if args.checkpoint != "default" and not Path(args.checkpoint).is_dir():
        raise InputError(f"checkpoint folder not found: {args.checkpoint}")
    return args.checkpoint
