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
from typing import NoReturn, Sequence

from medsegr import __version__
from medsegr.errors import InputError, MedSegRError
from medsegr.cli.model_options import add_model_options, chosen_model
from medsegr.cli.preflight import check_output_folder, check_reserved_tokens
from medsegr.io.limits import LIMIT_OPTIONS, ImageTooLarge, add_limit_options, limits_from_args
from medsegr.option_types import (axis_name, box_hint, device_name, new_tokens, point_hint,
                                  server_url, slice_index)

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


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} "
                  f"(see {self.prog} --help)\n")


def one_line(text: str) -> str:
    """``text`` as one printable line: line breaks and other unprintable characters
    escaped (a message may quote a user's path or option value)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for c in text)


def _window_name(text: str) -> str:
    from medsegr.imaging.intensity import CT_WINDOWS

    if text not in CT_WINDOWS:
        raise argparse.ArgumentTypeError(f"unknown CT window {text!r} (known: "
                                         f"{', '.join(CT_WINDOWS)})")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medsegr", description="MedSegR: reasoning segmentation "
                                     "for medical images.")
    parser.add_argument("--version", action="version", version=f"medsegr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question about an image and segment what it names")
    ask.add_argument("image", help="NRRD, NIfTI, MetaImage, a DICOM file or series folder, "
                     "PNG/JPEG, or sample:NAME (see `medsegr samples`)")
    ask.add_argument("question", help="the question (at most 2,000 characters)")
    scope = ask.add_mutually_exclusive_group()
    scope.add_argument("--slice", type=slice_index, default=None, metavar="K",
                       help="slice index along --axis (default: the middle slice)")
    scope.add_argument("--volume", action="store_true", help="answer about the whole volume")
    ask.add_argument("--axis", type=axis_name, default="axial",
                     help="axial, coronal, sagittal, or numpy axis k/j/i (default axial)")
    ask.add_argument("--out", default="medsegr-output", metavar="DIR", help="output folder")
    ask.add_argument("--dicom-seg", action=argparse.BooleanOptionalAction, default=None,
                     help="also write segmentation.dcm, a DICOM SEG referencing the source "
                     "series (default: on for a DICOM input)")
    ask.add_argument("--box", type=box_hint, default=None, metavar="X0,Y0,X1,Y1",
                     help="optional box hint in in-plane voxel indices")
    ask.add_argument("--point", type=point_hint, action="append", default=[],
                     metavar="X,Y[,LABEL]",
                     help="optional point hint (label 1 inside, 0 outside); repeatable")
    ask.add_argument("--window", type=_window_name, default=None, help="CT window preset (soft_tissue, abdomen, "
                     "liver, brain, lung, bone, wide)")
    ask.add_argument("--modality", choices=["CT", "MR", "OT"], default=None,
                     help="override the detected modality")
    ask.add_argument("--device", type=device_name, default="auto",
                     help="auto, cpu, cuda or cuda:N")
    add_model_options(ask, "run the untrained base parts (no fine-tuned checkpoint)")
    ask.add_argument("--max-new-tokens", type=new_tokens, default=None, metavar="N",
                     help="most tokens of answer text (1..1024)")
    add_limit_options(ask)
    ask.add_argument("--json", action="store_true", help="print the JSON record instead of text")
    ask.add_argument("--server", type=server_url, default=None, metavar="URL",
                     help="ask a running engine (medsegr serve, http:// or https://) instead of "
                     "loading a model here")
    remote_token = ask.add_mutually_exclusive_group()
    remote_token.add_argument("--token", default=None, help="the engine's token (with --server; "
                              "prefer --token-file or $MEDSEGR_TOKEN)")
    remote_token.add_argument("--token-file", default=None, metavar="FILE",
                              help="file holding the engine's token (with --server)")
    ask.add_argument("-v", "--verbose", action="store_true")

    info = sub.add_parser("info", help="check the weights and show the model that would be loaded")
    info.add_argument("--device", type=device_name, default="auto")
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
    from medsegr.answers import Hints

    return Hints(box=args.box, points=list(args.point))


def _check_hints_fit(args: argparse.Namespace, shape: tuple[int, int, int], axis: int) -> None:
    """Refuse box and point hints outside the slice before the model is loaded."""
    rows, cols = (shape[a] for a in (0, 1, 2) if a != axis)
    corners = [(x, y, "--point") for x, y, _ in args.point]
    if args.box is not None:
        x0, y0, x1, y1 = args.box
        corners += [(x0, y0, "--box"), (x1, y1, "--box")]
    for x, y, option in corners:
        if not (-0.5 <= x <= cols - 0.5 and -0.5 <= y <= rows - 0.5):
            raise InputError(f"{option} ({x:g}, {y:g}) lies outside the slice ({cols} x {rows} "
                             "voxels)")


def _load_input_image(args: argparse.Namespace):  # -> MedicalImage
    from medsegr.io.images import load_image
    from medsegr.cli.samples import resolve

    try:
        return load_image(resolve(args.image), modality=args.modality,
                          limits=limits_from_args(args), stored_type=True)
    except ImageTooLarge as exc:
        raise InputError(f"{exc}; raise it with {LIMIT_OPTIONS[exc.limit]}") from None


def _check_remote_options(args: argparse.Namespace) -> str | None:
    """The engine's token for ``--server`` (read and checked now); refuses the options
    that choose a local model with ``--server``, and a token without it."""
    from medsegr.server.commands import read_token

    if args.server is None:
        if args.token is not None or args.token_file is not None:
            raise InputError("--token and --token-file apply to --server (the engine they "
                             "unlock); add --server URL or leave them out")
        return None
    if args.base or args.config or args.checkpoint != "default":
        raise InputError("--base, --config and --checkpoint choose a local model; with --server "
                         "the engine's own model answers (leave them out)")
    return read_token(args)


def cmd_ask(args: argparse.Namespace) -> int:
    from medsegr.config import MedSegRConfig
    from medsegr.prompts import validate_question

    token = _check_remote_options(args)
    # the model options (configuration values, checkpoint files) are checked here, and
    # the question against the chosen model's special tokens: all before any loading
    model = chosen_model(args) if args.server is None else None
    reserved = model.reserved_tokens if model is not None else \
        (MedSegRConfig().model.seg_token, MedSegRConfig().model.image_token)
    question = check_reserved_tokens(validate_question(args.question, ()), reserved)
    hints = _hints(args)
    check_output_folder(Path(args.out))
    image = _load_input_image(args)
    from medsegr.io.dicom_seg import is_dicom_input, plan_dicom_seg
    from medsegr.cli.samples import resolve

    source = resolve(args.image)
    dicom_plan = plan_dicom_seg(source, image.geometry, args.dicom_seg)
    dicom_input = is_dicom_input(source)
    if args.volume and image.is_2d:
        raise InputError("--volume needs a 3-D image; this image is 2-D")
    axis = 0
    if not image.is_2d:
        from medsegr.imaging.slicing import resolve_axis

        axis = resolve_axis(args.axis, image.direction)
        if args.slice is not None and not 0 <= args.slice < image.shape[axis]:
            raise InputError(f"slice index {args.slice} is out of range "
                             f"(0..{image.shape[axis] - 1} along {args.axis})")
    elif args.slice is not None and args.slice != 0:
        raise InputError(f"slice index {args.slice} is out of range (a 2-D image has slice 0)")
    _check_hints_fit(args, image.shape, axis)
    if model is None:  # --server
        from medsegr.cli.remote_ask import ask_remote

        return ask_remote(args, image, question, hints, dicom_seg=dicom_plan, token=token,
                          dicom_input=dicom_input)
    checkpoint, config = model.checkpoint, model.config

    from medsegr.cli.outputs import print_answer, print_dicom_seg_messages, write_results
    from medsegr.pipeline import MedSegRPipeline

    t0 = time.perf_counter()
    if args.window is not None:
        from medsegr.imaging.intensity import normalise

        normalise(image.array[:1, :1, :1], image.modality, args.window)  # validate early
    from medsegr.modeling.load_status import listening, print_to_stderr

    with listening(print_to_stderr):
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
    from medsegr.io.dicom_seg import answer_segments, staged_writer

    paths = write_results(args.out, session, question, answer, pipe.info(),
                          extra=staged_writer(dicom_plan, answer_segments(answer), pipe.info()))
    print_dicom_seg_messages(dicom_plan, dicom_input)
    print_answer(answer, paths, args.json,
                 f"{answer.timings['total']:.2f} s answer, {load_s:.2f} s model load")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from medsegr.pipeline import MedSegRPipeline

    checkpoint = chosen_model(argparse.Namespace(checkpoint=args.checkpoint, base=False,
                                                 config=None)).checkpoint
    pipe = MedSegRPipeline.load(checkpoint, device=args.device)
    print(json.dumps(pipe.info(), indent=2))
    return EXIT_OK


def cmd_samples() -> int:
    from medsegr.cli.samples import SAMPLES, sample_path

    for name, (_, _, text) in SAMPLES.items():
        try:
            where = str(sample_path(name))
        except MedSegRError as exc:
            where = f"unavailable: {exc}"
        print(f"sample:{name:<10} {text}\n    {where}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if not exc.code:  # --help, --version: done
            raise
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT  # already reported
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
        print(f"medsegr: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("medsegr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
