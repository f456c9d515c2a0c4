"""One engine-suite workload in a fresh process: ``python -m medsegr.bench.engine_worker
NAME ...`` runs it and prints its numbers as one JSON line on stdout.

The cold-start clock starts on this module's first line, before any heavy import
(``medsegr`` and ``medsegr.bench`` themselves import neither torch nor the engine),
so the imports below deliberately come after code.
"""

from __future__ import annotations

import time

TOP_PERF = time.perf_counter()
TOP_MONO = time.monotonic()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from medsegr.bench.cpu_load import own_cpu_s  # noqa: E402
from medsegr.bench.engine_plan import ENGINE_WORKLOADS, HttpPlan  # noqa: E402

#: the worker names: the workloads, and the untimed run that fills the cache
WORKER_NAMES = (*ENGINE_WORKLOADS, "cold-priming")


def worker_command(name: str, *, device: str, model: str, reps: int, volume_slices: int,
                   spawn_mono: float, wait_idle_s: float, http: HttpPlan) -> list[str]:
    """The command line that runs worker ``name`` (for the parent)."""
    return [sys.executable, "-m", "medsegr.bench.engine_worker", name, "--device", device,
            "--model", model, "--reps", str(reps), "--volume-slices", str(volume_slices),
            "--spawn", repr(spawn_mono), "--wait-idle", repr(wait_idle_s),
            "--http", json.dumps([http.repeats, http.clients, http.questions])]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the workload ``args.name``; its numbers."""
    name = args.name
    if name.startswith("cold-"):
        from medsegr.bench.cold_start import cold_start

        return cold_start(TOP_PERF, TOP_MONO, args.spawn, args.device, args.model)
    if name == "http":
        from medsegr.bench.http_workload import http_workload

        return http_workload(args.device, args.model, HttpPlan(*json.loads(args.http)))
    from medsegr.bench import engine_workloads as w

    quiet = w.Quiet(args.wait_idle)
    if name == "slice":
        return w.slice_workload(args.device, args.model, args.reps, quiet)
    if name == "followup":
        return w.followup_workload(args.device, args.model, args.reps, quiet)
    return w.volume_workload(args.device, args.model, args.volume_slices, quiet)


def process_facts(device: str) -> dict[str, Any]:
    """Wall and CPU time, peak memory and the software of this worker process."""
    from medsegr.bench.machine import torch_facts
    from medsegr.bench.memory import process_peak_rss_mib

    facts = torch_facts(device)
    cuda_peak = None
    if device.startswith("cuda"):
        import torch

        cuda_peak = float(torch.cuda.max_memory_allocated()) / 2**20
    return {"wall_s": time.perf_counter() - TOP_PERF, "cpu_s": own_cpu_s(),
            "peak_rss_mib": process_peak_rss_mib(), "cuda_peak_mib": cuda_peak,
            "torch_version": facts["torch"], "torch_threads": facts["torch_threads"],
            "torch_interop_threads": facts["torch_interop_threads"],
            "engine_version": facts["medsegr"], "device": device,
            **({"cuda_device": facts["gpu"]} if "gpu" in facts else {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=WORKER_NAMES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="bundled", choices=["bundled", "tiny"])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--volume-slices", type=int, default=64)
    parser.add_argument("--spawn", type=float, default=TOP_MONO,
                        help="the parent's time.monotonic() when it started this process")
    parser.add_argument("--wait-idle", type=float, default=0.0)
    parser.add_argument("--http", default="[5, 4, 4]", help="repeats, clients, questions")
    args = parser.parse_args(argv)
    result = run(args)
    result = {**result, "worker": args.name, **process_facts(args.device)}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
