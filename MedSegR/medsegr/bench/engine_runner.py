"""The engine suite's parent process: every workload in a fresh worker process.

Each worker (:mod:`medsegr.bench.engine_worker`) prints one JSON line; the parent
waits for the machine to go quiet before each one (``wait_idle_s``), measures the
CPU other processes used meanwhile, and retries a failed worker after a pause (e.g.
while the engine is being edited). The workloads run in the order cold-first,
slice, cold-cached, followup, volume (and http when asked for): the slice workload
runs before the cached cold starts because in quick mode it is what populates the
normal cache (full mode adds a priming run, not counted).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from medsegr.bench.cpu_load import ForeignCpu, children_cpu_s, wait_for_quiet
from medsegr.bench.engine_plan import (ANSWER_TOKENS, DEFAULT_ENGINE_WORKLOADS, ENGINE_FULL,
                                       ENGINE_QUICK, HTTP_FULL, HTTP_QUICK, WORKER_TIMEOUT_S,
                                       EnginePlan, HttpPlan)
from medsegr.bench.engine_worker import worker_command
from medsegr.bench.machine import REPO_ROOT


@dataclass
class EngineOptions:
    """What ``medsegr bench --engine`` was asked to do."""

    quick: bool = False
    device: str = "cpu"
    #: "bundled" (the real base parts) or "tiny" (a tiny random model: a smoke test)
    model: str = "bundled"
    workloads: tuple[str, ...] = DEFAULT_ENGINE_WORKLOADS
    retries: int = 1
    retry_wait_s: float = 60.0
    #: before each workload, wait up to this long (s) for other processes to go quiet
    wait_idle_s: float = 30.0

    def plan(self) -> EnginePlan:
        return ENGINE_QUICK if self.quick else ENGINE_FULL

    def http_plan(self) -> HttpPlan:
        return HTTP_QUICK if self.quick else HTTP_FULL


@dataclass
class WorkerRun:
    """One worker process as seen from the parent."""

    name: str
    result: dict[str, Any] | None
    error: str | None
    wall_s: float
    foreign_cores: float
    steal_cores: float
    attempts: int


@dataclass
class EngineBench:
    """The runs of one engine-suite benchmark."""

    options: EngineOptions
    plan: EnginePlan
    #: whether a separate priming run preceded the cached cold starts
    priming: bool = True
    runs: dict[str, list[WorkerRun]] = field(default_factory=dict)
    #: label -> (seconds waited, machine was quiet)
    waited: dict[str, tuple[float, bool]] = field(default_factory=dict)
    log: Callable[[str], None] = lambda message: None

    def spawn(self, name: str, extra_env: dict[str, str] | None = None, reps: int = 1,
              label: str | None = None) -> WorkerRun:
        """Run worker ``name`` in a fresh process, retrying after a pause if it fails."""
        label = label or name
        attempts = 0
        while True:
            attempts += 1
            waited, quiet = wait_for_quiet(self.options.wait_idle_s, sample_s=1.0,
                                           pause_s=4.0, log=self.log)
            if waited > 1.5 or not quiet:
                self.waited[label] = (waited, quiet)
            run = self._spawn_once(name, extra_env, reps)
            run.attempts = attempts
            if run.error is None and run.result is not None:
                self.log(f"  {label}: done in {run.wall_s:.1f} s "
                         f"(peak {run.result['peak_rss_mib']:.0f} MiB)")
                break
            reason = (run.error or "no result").strip().splitlines()[-1][:300]
            self.log(f"  {label}: FAILED (attempt {attempts}): {reason}")
            if attempts > self.options.retries:
                break
            self.log(f"  waiting {self.options.retry_wait_s:.0f} s before retrying ...")
            time.sleep(self.options.retry_wait_s)
        self.runs.setdefault(name, []).append(run)
        return run

    def _spawn_once(self, name: str, extra_env: dict[str, str] | None, reps: int) -> WorkerRun:
        env = {**os.environ, **(extra_env or {})}
        opts = self.options
        with ForeignCpu(children_cpu_s) as load:
            cmd = worker_command(name, device=opts.device, model=opts.model, reps=reps,
                                 volume_slices=self.plan.volume_slices,
                                 spawn_mono=time.monotonic(), wait_idle_s=opts.wait_idle_s,
                                 http=opts.http_plan())
            try:
                proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True,
                                      text=True, timeout=WORKER_TIMEOUT_S, check=False)
                out, err, rc = proc.stdout, proc.stderr, proc.returncode
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout if isinstance(exc.stdout, str) else ""
                err, rc = f"worker timed out after {WORKER_TIMEOUT_S:.0f} s", -1
        result = _result_line(out, name)
        error = None
        if rc != 0 or result is None:
            tail = "\n".join((err or "").strip().splitlines()[-15:])
            error = f"exit status {rc}; stderr tail:\n{tail}" if tail else f"exit status {rc}"
        return WorkerRun(name, result, error, load.wall_s, load.cores, load.steal_cores, 1)


def _result_line(out: str, name: str) -> dict[str, Any] | None:
    """The worker's JSON line (the last one naming it)."""
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict) and parsed.get("worker") == name:
                return parsed
    return None


def run_engine(options: EngineOptions, log: Callable[[str], None] = lambda m: None
               ) -> EngineBench:
    """Run the selected workloads, each in its own process."""
    plan = options.plan()
    bench = EngineBench(options=options, plan=plan, priming=plan.mode != "quick", log=log)
    chosen = options.workloads
    steps = len(chosen)
    step = 0

    def heading(text: str) -> None:
        nonlocal step
        step += 1
        log(f"[{step}/{steps}] {text}")

    log(f"MedSegR engine benchmark ({plan.mode}) on {options.device}")
    if "cold-first" in chosen:
        heading("cold start, first run (empty temporary cache: conversion + hashing)")
        tmp = tempfile.mkdtemp(prefix="medsegr-bench-cache-")
        try:
            bench.spawn("cold-first", {"MEDSEGR_CACHE_DIR": tmp})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if "slice" in chosen:
        heading(f"slice question, {ANSWER_TOKENS}-token answer, {plan.slice_reps} repetitions")
        bench.spawn("slice", reps=plan.slice_reps)
    if "cold-cached" in chosen:
        bench.priming = bench.priming or "slice" not in chosen
        heading(f"cold start, cached: {plan.cached_runs} timed run(s)"
                + (" (1 priming run, not counted)" if bench.priming
                   else " (no priming run: the slice workload filled the cache)"))
        if bench.priming:
            bench.spawn("cold-priming", label="priming run (not counted)")
        for i in range(plan.cached_runs):
            bench.spawn("cold-cached", label=f"cached run {i + 1}/{plan.cached_runs}")
    if "followup" in chosen:
        heading(f"follow-up on the same session, {plan.followup_reps} pair(s)")
        bench.spawn("followup", reps=plan.followup_reps)
    if "volume" in chosen:
        heading(f"{plan.volume_slices}-slice volume question")
        bench.spawn("volume")
    if "http" in chosen:
        http = options.http_plan()
        heading(f"HTTP path against in-process, {http.repeats} repetitions, "
                f"{http.clients} clients")
        bench.spawn("http")
    return bench
