"""``medsegr bench``: the benchmarks. By default MedSegR against a LISA-style reference,
side by side; with ``--engine``, the engine suite (cold start, slice question,
follow-up, volume, HTTP path; every workload in a fresh process).

::

    medsegr bench [--quick] [--json FILE] [--plots DIR] [--device auto|cpu|cuda[:N]]
                  [--workloads slice,conversation,volume,server] [--no-server]
                  [--checkpoint DIR | --base [--config FILE]] [--model bundled|tiny]
                  [--cpu-int8] [--compile]
                  [--repeats N] [--profile FILE]
    medsegr bench --engine [--quick] [--json FILE] [--device cpu|cuda[:N]]
                  [--workloads cold-first,slice,cold-cached,followup,volume,http]
                  [--model bundled|tiny] [--retries N] [--retry-wait S] [--wait-idle S]

Prints the report (Markdown) on stdout and progress on stderr. Exit status 0 when
both paths gave equal answers in every workload (engine suite: when every workload
ran; performance targets met or not: they are reported, not enforced), 1 when an
equality check failed (a workload failed), 2 on bad input. Nothing heavy is
imported until the command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from medsegr.errors import InputError
from medsegr.cli.model_options import add_model_options, chosen_checkpoint

WORKLOADS = ("slice", "conversation", "volume", "server")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark MedSegR against a LISA-style reference path (same weights)",
        description="Run the same questions through MedSegR's pipeline and through a "
        "LISA-style reference on the same loaded model (no KV cache, image re-encoded at "
        "every turn, the whole model once per slice in volume mode), check that both give "
        "the same answers, and report latency, tokens/s, peak memory and the ratio.")
    parser.add_argument("--engine", action="store_true",
                        help="run the engine suite instead: cold start (empty and filled "
                        "cache), slice question, follow-up, volume and (asked for) the HTTP "
                        "path, each workload in a fresh process; base parts only")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 2 repetitions, 3 turns, an 8-slice volume "
                        "(--engine: 2 repetitions, a 16-slice volume)")
    parser.add_argument("--json", metavar="FILE", type=Path, default=None,
                        help="also write every number (raw repetitions included) as JSON")
    parser.add_argument("--plots", metavar="DIR", type=Path, default=None,
                        help="write latency_vs_turns.png and latency_vs_slices.png here")
    parser.add_argument("--device", default=None,
                        help="auto (the default), cpu, cuda or cuda:N (--engine: cpu default)")
    parser.add_argument("--workloads", default=None, metavar="LIST",
                        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all; "
                        "--engine: from cold-first, slice, cold-cached, followup, volume, "
                        "http; default: all but http)")
    parser.add_argument("--server", action=argparse.BooleanOptionalAction, default=True,
                        help="run the concurrent-sessions workload through a real engine "
                        "server on loopback (default: on; --no-server leaves it out)")
    add_model_options(parser, "the untrained base parts (no fine-tuned checkpoint)")
    parser.add_argument("--model", choices=["bundled", "tiny"], default="bundled",
                        help="bundled: the real pretrained parts (default); tiny: a tiny "
                        "random model of the same classes, to smoke-test the benchmark")
    parser.add_argument("--cpu-int8", action="store_true",
                        help="run the LLM as dynamic int8 on CPU on both paths (the engine's "
                        "production CPU setting; the reference's answers then differ, see "
                        "docs/benchmarks.md). Default: float32 on both paths")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the image encoder and the grounding module "
                        "(backbone and per-query decoding); compilation happens in the "
                        "untimed warm-up")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help="repeat every workload N times on both paths")
    parser.add_argument("--profile", type=Path, default=None, metavar="FILE",
                        help="also profile one slice question on each path (torch profiler) "
                        "and write the operator tables to FILE")
    parser.add_argument("--retries", type=int, default=1, metavar="N",
                        help="--engine: re-run a failed workload N times (default 1)")
    parser.add_argument("--retry-wait", type=float, default=60.0, metavar="S",
                        help="--engine: seconds to wait before a retry (default 60)")
    parser.add_argument("--wait-idle", type=float, default=30.0, metavar="S",
                        help="--engine: before each workload, wait up to S seconds for other "
                        "processes to stop using the CPU (default 30; 0: do not check)")
    parser.set_defaults(handler=cmd_bench)


def _workloads(args: argparse.Namespace) -> tuple[str, ...]:
    listed = ",".join(WORKLOADS) if args.workloads is None else args.workloads
    names = tuple(n.strip() for n in listed.split(",") if n.strip())
    if not names:
        raise InputError("--workloads is empty")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise InputError(f"unknown workload(s) {', '.join(unknown)} "
                         f"(choose from {', '.join(WORKLOADS)})")
    if not args.server:
        names = tuple(n for n in names if n != "server")
        if not names:
            raise InputError("--no-server leaves no workload to run")
    return names


def _check_output(path: Path | None, what: str, folder: bool = False) -> None:
    """Refuse an unusable output path before any work."""
    if path is None:
        return
    if folder:
        if path.exists() and not path.is_dir():
            raise InputError(f"{what} {path} exists and is not a folder")
        return
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{what}: {parent} is not a folder")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_engine(args: argparse.Namespace) -> int:
    """``medsegr bench --engine``: the engine suite."""
    from medsegr.bench.engine_plan import engine_workloads

    workloads = engine_workloads(args.workloads)
    given = [flag for flag, used in (
        ("--plots", args.plots is not None), ("--profile", args.profile is not None),
        ("--compile", args.compile), ("--cpu-int8", args.cpu_int8),
        ("--repeats", args.repeats is not None), ("--no-server", not args.server),
        ("--checkpoint", args.checkpoint != "default"), ("--base", args.base),
        ("--config", args.config is not None)) if used]
    if given:
        raise InputError(f"{', '.join(given)}: not for --engine (it runs the base parts)")
    if args.retries < 0:
        raise InputError("--retries must be 0 or more")
    _check_output(args.json, "--json")

    from medsegr.bench.engine_report import machine_facts, render, summarise, to_json
    from medsegr.bench.engine_runner import EngineOptions, run_engine
    from medsegr.bench.machine import host_facts
    from medsegr.bench.report import write_json_data

    options = EngineOptions(quick=args.quick, device=args.device or "cpu", model=args.model,
                            workloads=workloads, retries=args.retries,
                            retry_wait_s=args.retry_wait, wait_idle_s=args.wait_idle)
    host = host_facts()
    t0 = time.monotonic()
    bench = run_engine(options, _progress)
    elapsed = time.monotonic() - t0
    machine = machine_facts(host, bench)
    summary = summarise(bench)
    sys.stdout.write(render(bench, summary, machine) + "\n")
    sys.stdout.write(f"_Benchmark wall time: {elapsed:.0f} s._\n")
    sys.stdout.flush()
    if args.json is not None:
        written = write_json_data(to_json(bench, summary, machine, elapsed), args.json)
        _progress(f"JSON written to {written}")
    return 1 if any(r.error for runs in bench.runs.values() for r in runs) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.engine:
        return cmd_engine(args)
    if args.device is None:
        args.device = "auto"
    workloads = _workloads(args)
    if args.repeats is not None and not 1 <= args.repeats <= 100:
        raise InputError("--repeats must be between 1 and 100")
    if args.config is not None and args.model == "tiny":
        raise InputError("--config applies to --model bundled")
    # the tiny model is built from its own configuration: no checkpoint folder is read
    checkpoint = None if args.model == "tiny" else chosen_checkpoint(args)
    _check_output(args.json, "--json")
    _check_output(args.profile, "--profile")
    _check_output(args.plots, "--plots", folder=True)

    from medsegr.bench.report import render_markdown, write_json, write_plots
    from medsegr.bench.runner import BenchOptions, load_pipeline, run_bench
    from medsegr.modeling.device import resolve_device

    resolve_device(args.device)  # a clear error for an unusable device, before loading
    options = BenchOptions(quick=args.quick, device=args.device, workloads=workloads,
                           model=args.model, checkpoint=checkpoint,
                           config_file=args.config, cpu_int8=args.cpu_int8,
                           compile=args.compile, repeats=args.repeats)
    from medsegr.bench.runner import checkpoint_path

    checkpoint_path(options)  # a clear error for a folder that is not a checkpoint

    progress = _progress
    progress(f"loading the {options.model} model on {options.device} ...")
    pipeline, load_s = load_pipeline(options, options.plan())
    result = run_bench(options, progress, pipeline=pipeline, load_s=load_s)
    sys.stdout.write(render_markdown(result))
    sys.stdout.flush()
    if args.json is not None:
        progress(f"wrote {write_json(result, args.json)}")
    if args.plots is not None:
        for path in write_plots(result, args.plots):
            progress(f"wrote {path}")
    if args.profile is not None:
        from medsegr.bench.profiling import write_profile
        from medsegr.bench.context import PATHS, SAMPLE, BenchContext
        from medsegr.io.images import load_image
        from medsegr.cli.samples import resolve

        ctx = BenchContext(pipeline, load_image(resolve("sample:" + SAMPLE)), result.plan)
        progress(f"wrote {write_profile(ctx, args.profile, PATHS)}")
    if not result.equality_passed:
        failed = [w.title for w in result.workloads if w.skipped is None and not w.equality.passed]
        print(f"medsegr bench: the two paths' answers differ in: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
