"""The ``medsegr`` command line.

``medsegr ask IMAGE "question" [--slice K --axis A | --volume] [--out DIR]``
prints the reasoning and writes the segmentation (``.seg.nrrd`` for 3D Slicer and
a label map ``.nrrd``), a JSON record and an overlay PNG. Exit status: 0 on
success, 2 on bad input (with a one-line reason on stderr), 1 on an internal error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from medsegr import __version__
from medsegr.errors import InputError, MedSegRError
from medsegr.model_options import add_model_options, chosen_checkpoint

if TYPE_CHECKING:  # the CLI starts without torch; the pipeline is imported when used
    from medsegr.pipeline import Answer

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2

#: modules that add sub-commands: each has ``register(subparsers)``, which adds its
#: parsers with ``set_defaults(handler=fn)`` (``fn(args) -> exit status``). They must
#: import nothing heavy at module level, so that ``medsegr --help`` stays fast.
COMMAND_MODULES = (
    "medsegr.data.commands",
    "medsegr.training.commands",
    "medsegr.evaluation.commands",
    "medsegr.server.commands",
    "medsegr.bench.commands",
)


def _floats(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what} must be {count} comma-separated numbers, got {text!r}") from None
    if len(values) != count:
        raise InputError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsegr", description="MedSegR: reasoning segmentation "
                                     "for medical images.")
    parser.add_argument("--version", action="version", version=f"medsegr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question about an image and segment what it names")
    ask.add_argument("image", help="NRRD, NIfTI, MetaImage, a DICOM file or series folder, "
                     "PNG/JPEG, or sample:NAME (see `medsegr samples`)")
    ask.add_argument("question", help="the question (at most 2,000 characters)")
    scope = ask.add_mutually_exclusive_group()
    scope.add_argument("--slice", type=int, default=None, metavar="K",
                       help="slice index along --axis (default: the middle slice)")
    scope.add_argument("--volume", action="store_true", help="answer about the whole volume")
    ask.add_argument("--axis", default="axial",
                     help="axial, coronal, sagittal, or numpy axis k/j/i (default axial)")
    ask.add_argument("--out", default="medsegr-output", metavar="DIR", help="output folder")
    ask.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1",
                     help="optional box hint in in-plane voxel indices")
    ask.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                     help="optional point hint (label 1 inside, 0 outside); repeatable")
    ask.add_argument("--window", default=None, help="CT window preset (soft_tissue, abdomen, "
                     "liver, brain, lung, bone, wide)")
    ask.add_argument("--modality", choices=["CT", "MR", "OT"], default=None,
                     help="override the detected modality")
    ask.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_model_options(ask, "run the untrained base parts (no fine-tuned checkpoint)")
    ask.add_argument("--max-new-tokens", type=int, default=None)
    ask.add_argument("--json", action="store_true", help="print the JSON record instead of text")
    ask.add_argument("--server", default=None, metavar="URL",
                     help="ask a running engine (medsegr serve) instead of loading a model here")
    remote_token = ask.add_mutually_exclusive_group()
    remote_token.add_argument("--token", default=None, help="the engine's token (with --server; "
                              "prefer --token-file or $MEDSEGR_TOKEN)")
    remote_token.add_argument("--token-file", default=None, metavar="FILE",
                              help="file holding the engine's token (with --server)")
    ask.add_argument("-v", "--verbose", action="store_true")

    info = sub.add_parser("info", help="check the weights and show the model that would be loaded")
    info.add_argument("--device", default="auto")
    info.add_argument("--checkpoint", default="default")
    sub.add_parser("samples", help="list the real sample images that come with installed packages")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # that part of the package is not installed
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue
        module.register(sub)
    return parser


def _hints(args: argparse.Namespace):  # -> Hints
    from medsegr.pipeline import Hints

    box = _floats(args.box, 4, "--box") if args.box else None
    points = []
    for text in args.point:
        values = text.split(",")
        if len(values) == 2:
            values.append("1")
        x, y, label = _floats(",".join(values), 3, "--point")
        points.append((x, y, int(label)))
    return Hints(box=box, points=points)  # type: ignore[arg-type]


def cmd_ask(args: argparse.Namespace) -> int:
    from medsegr.config import MedSegRConfig
    from medsegr.io.images import load_image
    from medsegr.prompts import validate_question

    question = validate_question(args.question, ())
    hints = _hints(args)
    if args.max_new_tokens is not None and not 1 <= args.max_new_tokens <= 1024:
        raise InputError("--max-new-tokens must be between 1 and 1024")
    from medsegr.samples import resolve

    image = load_image(resolve(args.image), modality=args.modality)
    if args.volume and image.is_2d:
        raise InputError("--volume needs a 3-D image; this image is 2-D")
    if not image.is_2d:
        from medsegr.slicing import resolve_axis

        axis = resolve_axis(args.axis, image.direction)
        if args.slice is not None and not 0 <= args.slice < image.shape[axis]:
            raise InputError(f"slice index {args.slice} is out of range "
                             f"(0..{image.shape[axis] - 1} along {args.axis})")
    _check_output_folder(Path(args.out))
    if args.server:
        from medsegr.remote_ask import ask_remote

        return ask_remote(args, image, question, hints)
    checkpoint = chosen_checkpoint(args)
    config = MedSegRConfig.from_file(args.config) if args.config else None

    from medsegr.outputs import write_results
    from medsegr.pipeline import MedSegRPipeline

    t0 = time.perf_counter()
    if args.window is not None:
        from medsegr.preprocess import normalise

        normalise(image.array[:1, :1, :1], image.modality, args.window)  # validate early
    pipe = MedSegRPipeline.load(checkpoint, config=config, device=args.device)
    load_s = time.perf_counter() - t0
    if not pipe.fine_tuned:
        print("note: no fine-tuned MedSegR checkpoint is loaded; running the untrained base "
              "parts. Answers are not grounded in the image and masks are not meaningful.",
              file=sys.stderr)
    session = pipe.new_session(image, window=args.window)
    session.show_progress = sys.stderr.isatty()
    answer = session.ask(question, axis=args.axis, slice_index=args.slice, volume=args.volume,
                         hints=hints, max_new_tokens=args.max_new_tokens)
    answer.timings["load_model"] = load_s
    paths = write_results(args.out, session, question, answer, pipe.info())
    print_answer(answer, paths, args.json,
                 f"{answer.timings['total']:.2f} s answer, {load_s:.2f} s model load")
    return EXIT_OK


def print_answer(answer: "Answer", paths: dict[str, Path], as_json: bool,
                 time_text: str) -> None:
    """Print an answer (``medsegr.pipeline.Answer``) and the result files written for it:
    the JSON record with ``as_json``, else the text, its segments, the files and
    ``time_text``."""
    if as_json:
        print(json.dumps({**answer.summary(), "files": {k: str(v) for k, v in paths.items()}},
                         indent=2))
        return
    print(answer.text or "(no answer text)")
    print()
    for seg in answer.segments:
        print(f"  segment {seg.index + 1}: {seg.name} ({seg.voxels} voxels)")
    if not answer.segments:
        print("  no segment in this answer")
    print(f"  wrote {paths['segmentation']}, {paths['labels'].name}, "
          f"{paths['answer'].name}, {paths['overlay'].name}")
    print(f"  time: {time_text}")


def _check_output_folder(out: Path) -> None:
    """Refuse an output path that cannot become a folder of results, before any work."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write results under {parent} (permission denied)")


def cmd_info(args: argparse.Namespace) -> int:
    from medsegr.pipeline import MedSegRPipeline

    pipe = MedSegRPipeline.load(args.checkpoint, device=args.device)
    print(json.dumps(pipe.info(), indent=2))
    return EXIT_OK


def cmd_samples() -> int:
    from medsegr.samples import SAMPLES, sample_path

    for name, (_, _, text) in SAMPLES.items():
        try:
            where = str(sample_path(name))
        except MedSegRError as exc:
            where = f"unavailable: {exc}"
        print(f"sample:{name:<10} {text}\n    {where}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
        if args.command == "ask":
            return cmd_ask(args)
        if args.command == "samples":
            return cmd_samples()
        return cmd_info(args)
    except MedSegRError as exc:
        print(f"medsegr: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("medsegr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
