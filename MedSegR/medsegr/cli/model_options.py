"""The command-line options that choose the model (``--checkpoint DIR | --base
[--config FILE]``), shared by ``medsegr ask``, ``serve`` and ``bench``.

The choice is checked before anything is loaded: the configuration file's values,
and the checkpoint folder's files (its configuration, and safetensors files that are
whole: :func:`medsegr.modeling.weights.check_checkpoint_files`).

Light: importing it pulls in neither torch nor the model code.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from medsegr.config import MedSegRConfig
from medsegr.errors import InputError

#: the environment variable that names the default checkpoint folder
CHECKPOINT_ENV = "MEDSEGR_CHECKPOINT"


def add_model_options(parser: argparse.ArgumentParser, base_help: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--checkpoint", default="default", metavar="DIR",
                       help="fine-tuned checkpoint folder (default: the bundled one; the base "
                       "parts where there is none)")
    group.add_argument("--base", action="store_true", help=base_help)
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="model configuration file (TOML/JSON) for --base: other base parts")


@dataclass(frozen=True)
class ModelChoice:
    """What the model options chose, checked."""

    #: what :meth:`medsegr.pipeline.MedSegRPipeline.load` takes: ``"default"``, a folder,
    #: or None for the base parts
    checkpoint: str | None
    #: the ``--config`` file's configuration (None: none given)
    config: MedSegRConfig | None
    #: the configuration the model will have (the checkpoint's, ``--config``'s, or the
    #: defaults): its special tokens are the ones a question may not hold
    model_config: MedSegRConfig

    @property
    def reserved_tokens(self) -> tuple[str, str]:
        return (self.model_config.model.seg_token, self.model_config.model.image_token)


def default_checkpoint_folder() -> Path | None:
    """The folder ``checkpoint="default"`` loads: ``$MEDSEGR_CHECKPOINT``, else the
    bundled checkpoint beside the engine package (as
    :func:`medsegr.pipeline.default_checkpoint` finds them, without importing torch)."""
    env = os.environ.get(CHECKPOINT_ENV)
    if env:
        return Path(env)
    import medsegr

    bundled = Path(medsegr.__file__).resolve().parent.parent / "Resources" / "checkpoint"
    return bundled if (bundled / "medsegr_config.json").is_file() else None


def chosen_model(args: argparse.Namespace) -> ModelChoice:
    """The model the options name, after checking that they fit together, that a named
    configuration file holds sound values and that the checkpoint folder is complete
    (:class:`medsegr.errors.MedSegRError` otherwise, before anything is loaded)."""
    from medsegr.modeling.weights import check_checkpoint_files

    if args.config is not None and not args.base:
        raise InputError("--config applies to --base (a checkpoint brings its own configuration)")
    if args.config is not None and not Path(args.config).is_file():
        raise InputError(f"config file not found: {args.config}")
    config = MedSegRConfig.from_file(args.config) if args.config is not None else None
    if args.base:
        return ModelChoice(None, config, config or MedSegRConfig())
    if args.checkpoint != "default" and not Path(args.checkpoint).is_dir():
        raise InputError(f"checkpoint folder not found: {args.checkpoint}")
    folder = default_checkpoint_folder() if args.checkpoint == "default" else \
        Path(args.checkpoint)
    if folder is None:  # no bundled checkpoint: the base parts
        return ModelChoice(args.checkpoint, None, MedSegRConfig())
    return ModelChoice(args.checkpoint, None, check_checkpoint_files(folder))


def chosen_checkpoint(args: argparse.Namespace) -> str | None:
    """The checkpoint the options name (None: the base parts), checked as
    :func:`chosen_model` checks it."""
    return chosen_model(args).checkpoint
