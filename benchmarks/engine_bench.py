#!/usr/bin/env python
"""Engine benchmark: the real bundled MedSegR model, measured workload by workload.

Usage::

    .venv/bin/python benchmarks/engine_bench.py [--quick] [--json OUT] [--device cpu]

Every workload runs in its own fresh Python process (this same script, started
with the hidden ``--worker NAME`` argument, which prints one JSON line), so that
cold-start times and peak memory (``ru_maxrss`` of that process) are honest.
The workloads (numbered as in the report; they run in the order 1, 3, 2, 4, 5):

1. cold start, first run: an empty temporary ``MEDSEGR_CACHE_DIR``, so the one-time
   GGUF -> safetensors conversion (and whatever else the engine caches) and the
   weight hash checks happen;
2. cold start, cached: the normal cache, already populated (full mode: a priming
   run, not counted; ``--quick``: workload 3, which runs before it, fills it);
3. slice question with a fixed 30-token answer (``generation.min_new_tokens =
   max_new_tokens = 30``) on the MNI T1 sample, axial slice 90; one untimed
   warm-up question, then N repetitions (5; ``--quick``: 2), each on a new session
   so that the image encoder runs every time;
4. follow-up: a timed first question and a follow-up on the same session and
   slice (embedding and KV cache reused), 3 pairs (``--quick``: 1);
5. volume: a volume question (``volume=True``) on 64 consecutive axial slices
   (62..125; ``--quick``: 16) of the MNI T1, after an untimed warm-up question.

The report (Markdown, on stdout) lists the machine, a results table and the
targets: cached cold start <= 5 s, slice question <= 2 s, follow-up <= 0.5 x the
first question, peak memory <= 2 GiB in every workload. Progress goes to stderr;
``--json OUT`` also writes every number (raw worker results included). The exit
status is 1 when a workload failed (after ``--retries``), else 0, targets or not.

Notes on method:

* Cold-start time is measured from ``time.perf_counter()`` at the very top of the
  worker (before any heavy import) until ``MedSegRPipeline.load`` returns; the
  interpreter's own start-up (spawn -> top of script, same monotonic clock) is shown
  separately. The OS page cache is *not* dropped: "cold" means a new process.
* The untrained base parts almost never write ``[SEG]``, so a volume question would
  decode no masks at all. To measure the grounding path, the volume worker wraps
  the engine's ``generate``: when the real answer has no ``[SEG]``, one ``[SEG]``
  token is appended and its real last-layer LLM hidden state is computed (one extra
  forward pass, timed and subtracted from the total). The mask decoder then runs on
  every slice exactly as in ``ChatSession.ask``, inside its own ``masks`` timing.
* CPU time used by other processes while a workload ran (``/proc/stat`` minus the
  worker's own CPU time) is reported, because a busy machine inflates every number
  (with torch's intra-op threads on every core, a single competing process can
  slow token decoding many times over). Before each workload the parent waits up
  to ``--wait-idle`` seconds for the machine to go quiet.
* Peak memory is the worker's ``ru_maxrss``; the slice and volume workers also note
  it after loading, after the warm-up and (volume) after encoding and mask decoding,
  to show which phase sets the peak.
"""

from __future__ import annotations

import time

# Taken before any other import: the worker's cold-start clock starts here
# (so the imports below deliberately come after code).
_T_TOP_PERF = time.perf_counter()
_T_TOP_MONO = time.monotonic()

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[1]

# --- workload parameters -------------------------------------------------------------
SAMPLE = "brain-mri"
SLICE_INDEX = 90
ANSWER_TOKENS = 30
QUESTION = "Which tissue forms the deep, myelinated part of the cerebral hemispheres? Segment it."
WARMUP_QUESTION = "Describe what this MRI slice shows."
FOLLOWUP_QUESTION = "Now describe only its boundary with the grey matter."
VOLUME_QUESTION = "Segment the white matter in the whole scan."
VOLUME_CENTER = 94  # 64 slices centred here = 62..125

# --- targets ----------------------------------------------------------------------------
TARGET_COLD_CACHED_S = 5.0
TARGET_SLICE_S = 2.0
TARGET_FOLLOWUP_RATIO = 0.5
TARGET_PEAK_MIB = 2048.0

#: a workload's worker is killed after this long (s)
WORKER_TIMEOUT_S = 1200.0
#: average foreign CPU load (cores) above which a workload's numbers are flagged
BUSY_CORES = 0.25


@dataclass(frozen=True)
class Plan:
    """How much of each workload to run (``--quick`` makes it smaller)."""

    mode: str
    slice_reps: int
    followup_reps: int
    cached_runs: int
    volume_slices: int


FULL = Plan(mode="full", slice_reps=5, followup_reps=3, cached_runs=3, volume_slices=64)
QUICK = Plan(mode="quick", slice_reps=2, followup_reps=1, cached_runs=1, volume_slices=16)


# =========================================================================== helpers


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {"median": median(values), "min": float(min(values)), "max": float(max(values))}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass(frozen=True)
class CpuSample:
    """System-wide CPU jiffies from ``/proc/stat`` (busy = user+nice+system+irq+softirq)."""

    busy: int
    steal: int

    @classmethod
    def now(cls) -> CpuSample:
        try:
            with open("/proc/stat", encoding="ascii") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return cls(0, 0)
        fields += [0] * (10 - len(fields))
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        return cls(user + nice + system + irq + softirq, steal)


def _clock_tick() -> float:
    return float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def busy_cores(seconds: float) -> float:
    """Average number of busy cores, machine-wide, over the next ``seconds``."""
    a = CpuSample.now()
    time.sleep(seconds)
    b = CpuSample.now()
    return (b.busy - a.busy) / _clock_tick() / seconds


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, check=False,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                               timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head}" + (f" + {len(dirty)} modified file(s)" if dirty else "")


# =========================================================================== workers
# Everything heavy (torch, medsegr.pipeline) is imported inside these functions only.


def _machine_facts(device: str) -> dict[str, Any]:
    import medsegr  # cheap: no torch
    import torch

    facts: dict[str, Any] = {
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "engine_version": medsegr.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        facts["cuda_device"] = torch.cuda.get_device_name(0)
    return facts


def _cuda_peak_mib(device: str) -> float | None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated()) / 2**20
    return None


class Probe:
    """Foreign CPU load while a block of worker code runs, and a pre-run wait for quiet.

    ``with probe.measure() as load:`` then ``load.cores``: the average number of cores
    that *other* processes kept busy during the block.
    """

    def __init__(self, wait_idle_s: float) -> None:
        self.wait_idle_s = wait_idle_s
        self.waited_s = 0.0
        self.cores = 0.0

    def wait_for_quiet(self) -> None:
        """Wait up to ``wait_idle_s`` until other processes use < ``BUSY_CORES`` cores
        (this process is asleep meanwhile)."""
        t0 = time.monotonic()
        while self.wait_idle_s > 0 and time.monotonic() - t0 < self.wait_idle_s:
            if busy_cores(0.5) < BUSY_CORES:
                break
            time.sleep(2.0)
        self.waited_s += time.monotonic() - t0

    def measure(self) -> Self:
        return self

    def __enter__(self) -> Self:
        self._cpu0, self._own0, self._t0 = CpuSample.now(), own_cpu_s(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu1, own1, wall = CpuSample.now(), own_cpu_s(), time.monotonic() - self._t0
        busy = (cpu1.busy - self._cpu0.busy) / _clock_tick()
        self.cores = max(0.0, busy - (own1 - self._own0)) / wall if wall > 0 else 0.0


def _bench_config() -> Any:
    from medsegr.config import MedSegRConfig

    cfg = MedSegRConfig()
    cfg.generation.min_new_tokens = ANSWER_TOKENS
    cfg.generation.max_new_tokens = ANSWER_TOKENS
    return cfg


def _answer_record(answer: Any) -> dict[str, Any]:
    """The numbers of one :class:`medsegr.pipeline.Answer`."""
    timings = {k: float(v) for k, v in answer.timings.items()}
    generated = int(answer.tokens.get("generated", 0))
    decode_s = timings.get("decode", 0.0)
    return {
        "timings": timings,
        "tokens": {k: int(v) for k, v in answer.tokens.items()},
        "encoded_slices": int(answer.encoded_slices),
        "segments": len(answer.segments),
        "decode_tok_per_s": generated / decode_s if decode_s > 0 else float("nan"),
        "text": answer.text[:160],
    }


def worker_cold(device: str, spawn_mono: float) -> dict[str, Any]:
    """Process top -> pipeline loaded, with the import / load split and, when they
    happen, the time spent hashing weight files and converting the GGUF."""
    import medsegr.pipeline as pipeline_mod

    t_import = time.perf_counter()

    # Time (not change) the steps of loading: the vision part, the LLM, and inside
    # them the weight hashing and the one-time GGUF conversion. Each probe wraps a
    # module attribute that the engine looks up at call time; a renamed function is
    # simply not timed.
    import importlib

    import medsegr.modeling.weights as weights_mod

    llm_dir = weights_mod.cache_dir() / "llm"
    cache_was_filled = llm_dir.is_dir() and any(llm_dir.iterdir())
    spent: dict[str, float] = {}
    calls: dict[str, int] = {}
    probes = [("medsegr.modeling.weights", "sha256_file", "hashing"),
              ("medsegr.modeling.language", "converted_gguf_dir", "conversion"),
              ("medsegr.modeling.builder", "build_vision", "vision"),
              ("medsegr.modeling.builder", "load_language_model", "llm"),
              ("medsegr.modeling.inference_opt", "optimise_for_inference", "optimise")]

    def probe(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            hashing_before = spent.get("hashing", 0.0)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                took = time.perf_counter() - t
                if name == "conversion":  # reported without its own hash check
                    took -= spent.get("hashing", 0.0) - hashing_before
                spent[name] = spent.get(name, 0.0) + took
                calls[name] = calls.get(name, 0) + 1
        return wrapper

    for module_name, attr, name in probes:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if callable(getattr(module, attr, None)):
            setattr(module, attr, probe(name, getattr(module, attr)))

    pipe = pipeline_mod.MedSegRPipeline.load(None, device=device)
    t_loaded = time.perf_counter()
    info = pipe.info()
    return {
        "interpreter_s": _T_TOP_MONO - spawn_mono,
        "import_s": t_import - _T_TOP_PERF,
        "load_s": t_loaded - t_import,
        "total_s": t_loaded - _T_TOP_PERF,
        "spawn_to_loaded_s": (_T_TOP_MONO - spawn_mono) + (t_loaded - _T_TOP_PERF),
        "hashing_s": spent.get("hashing", 0.0),
        "hash_calls": calls.get("hashing", 0),
        "conversion_s": spent.get("conversion", 0.0),
        "vision_s": spent.get("vision"),
        "llm_s": spent.get("llm"),
        "optimise_s": spent.get("optimise"),
        "converted": not cache_was_filled and spent.get("conversion", 0.0) > 1.0,
        "cache_dir": str(weights_mod.cache_dir()),
        "dtype": info.get("dtype"),
        "visual_tokens": info.get("visual_tokens"),
    }


def _load_for_questions(device: str) -> tuple[Any, Any, dict[str, float]]:
    from medsegr.io.images import load_image
    from medsegr.pipeline import MedSegRPipeline
    from medsegr.cli.samples import sample_path

    t0 = time.perf_counter()
    pipe = MedSegRPipeline.load(None, config=_bench_config(), device=device)
    t1 = time.perf_counter()
    image = load_image(sample_path(SAMPLE))
    t2 = time.perf_counter()
    return pipe, image, {"load_s": t1 - t0, "image_load_s": t2 - t1,
                         "rss_after_load_mib": peak_rss_mib()}


def worker_slice(device: str, reps: int, probe: Probe) -> dict[str, Any]:
    """A fresh session per repetition, so every question encodes its slice."""
    pipe, image, setup = _load_for_questions(device)
    warm = pipe.new_session(image).ask(WARMUP_QUESTION, axis="axial", slice_index=SLICE_INDEX)
    setup["rss_after_warmup_mib"] = peak_rss_mib()
    runs = []
    session_s = []
    for _ in range(reps):
        probe.wait_for_quiet()
        t = time.perf_counter()
        session = pipe.new_session(image)
        session_s.append(time.perf_counter() - t)
        with probe.measure():
            answer = session.ask(QUESTION, axis="axial", slice_index=SLICE_INDEX)
        runs.append({**_answer_record(answer), "foreign_cores": probe.cores})
    return {**setup, "image_shape": list(image.shape), "warmup": _answer_record(warm),
            "new_session_s": session_s, "runs": runs, "waited_s": probe.waited_s}


def worker_followup(device: str, reps: int, probe: Probe) -> dict[str, Any]:
    """First question, then a follow-up on the same session and slice."""
    pipe, image, setup = _load_for_questions(device)
    warm = pipe.new_session(image).ask(WARMUP_QUESTION, axis="axial", slice_index=SLICE_INDEX)
    pairs = []
    for _ in range(reps):
        probe.wait_for_quiet()
        session = pipe.new_session(image)
        with probe.measure():
            first = session.ask(QUESTION, axis="axial", slice_index=SLICE_INDEX)
            follow = session.ask(FOLLOWUP_QUESTION, axis="axial", slice_index=SLICE_INDEX)
        f_rec, u_rec = _answer_record(first), _answer_record(follow)
        pairs.append({"first": f_rec, "followup": u_rec, "foreign_cores": probe.cores,
                      "ratio": u_rec["timings"]["total"] / f_rec["timings"]["total"]})
    return {**setup, "warmup": _answer_record(warm), "pairs": pairs, "waited_s": probe.waited_s}


def _sub_volume(image: Any, count: int) -> tuple[Any, int, int]:
    """``count`` consecutive axial slices of ``image`` as a new MR volume (same
    spacing and direction; the origin moves to the first kept slice)."""
    import numpy as np
    from medsegr.io.images import image_from_array
    from medsegr.imaging.slicing import resolve_axis

    axis = resolve_axis("axial", image.direction)
    n = image.shape[axis]
    count = min(count, n)
    lo = max(0, min(VOLUME_CENTER - count // 2, n - count))
    part = np.take(image.array, np.arange(lo, lo + count), axis=axis)
    ijk = [0.0, 0.0, 0.0]
    ijk[2 - axis] = float(lo)  # numpy axis a = ITK index axis 2 - a
    origin = (image.geometry.ijk_to_lps() @ np.array([*ijk, 1.0]))[:3]
    volume = image_from_array(np.ascontiguousarray(part), spacing=image.spacing,
                              origin=tuple(float(v) for v in origin),
                              direction=image.direction, modality="MR")
    return volume, lo, axis


def worker_volume(device: str, count: int, probe: Probe) -> dict[str, Any]:
    """A volume question on ``count`` slices; see the module notes on ``[SEG]``."""
    import medsegr.pipeline as pipeline_mod
    import torch

    pipe, image, setup = _load_for_questions(device)
    volume, lo, axis = _sub_volume(image, count)
    del image
    # untimed warm-up on another session (first-call costs of the encoder and LLM)
    warm = pipe.new_session(volume).ask(WARMUP_QUESTION, axis="axial",
                                        slice_index=volume.shape[axis] // 2)
    setup["rss_after_warmup_mib"] = peak_rss_mib()
    # peak RSS so far, noted after the encoder and after the mask decoder (ru_maxrss
    # only grows, so this shows in which phase the peak was reached)
    milestones: dict[str, float] = {}
    real_embeddings = pipeline_mod.ChatSession.embeddings
    real_keep = getattr(pipeline_mod, "keep_connected", None)

    def embeddings_probe(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = real_embeddings(self, *args, **kwargs)
        milestones["after_encode"] = peak_rss_mib()
        return result

    def keep_probe(*args: Any, **kwargs: Any) -> Any:
        milestones.setdefault("after_mask_decode", peak_rss_mib())
        assert real_keep is not None
        result = real_keep(*args, **kwargs)
        milestones["after_keep_connected"] = peak_rss_mib()
        return result

    real_generate = getattr(pipeline_mod, "generate")  # noqa: B009 (not re-exported by the module)
    forced: dict[str, Any] = {"used": False, "seconds": 0.0}

    def generate_with_seg(m: Any, keys: list[Any], bank: dict[str, Any], *args: Any,
                          **kwargs: Any) -> Any:
        gen = real_generate(m, keys, bank, *args, **kwargs)
        if gen.seg_states.shape[0] > 0:
            return gen
        t = time.perf_counter()
        with torch.no_grad():
            seq = [*keys, *gen.token_ids, m.seg_token_id]
            out = m.llm(inputs_embeds=m.embed_keys(seq, bank), use_cache=False,
                        output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1][0, -1]
        forced["used"] = True
        forced["seconds"] += time.perf_counter() - t
        return dataclasses.replace(gen, token_ids=[*gen.token_ids, m.seg_token_id],
                                   seg_states=hidden[None])

    setattr(pipeline_mod, "generate", generate_with_seg)  # noqa: B010 (not re-exported by the module)
    pipeline_mod.ChatSession.embeddings = embeddings_probe  # type: ignore[method-assign]
    if real_keep is not None:
        setattr(pipeline_mod, "keep_connected", keep_probe)  # noqa: B010 (not re-exported by the module)
    try:
        probe.wait_for_quiet()
        t = time.perf_counter()
        session = pipe.new_session(volume)
        new_session_s = time.perf_counter() - t
        with probe.measure():
            answer = session.ask(VOLUME_QUESTION, axis="axial", volume=True)
    finally:
        setattr(pipeline_mod, "generate", real_generate)  # noqa: B010 (not re-exported by the module)
        pipeline_mod.ChatSession.embeddings = real_embeddings  # type: ignore[method-assign]
        if real_keep is not None:
            setattr(pipeline_mod, "keep_connected", real_keep)  # noqa: B010 (not re-exported by the module)
    record = _answer_record(answer)
    record["text"] = answer.raw_text[:200]
    return {**setup, "slices": volume.shape[axis], "first_slice": lo, "axis": axis,
            "volume_shape": list(volume.shape), "key_slices": list(answer.key_slices),
            "new_session_s": new_session_s, "warmup": _answer_record(warm),
            "answer": record, "voxels": [int(s.voxels) for s in answer.segments],
            "forced_seg": forced["used"], "forced_seg_s": float(forced["seconds"]),
            "foreign_cores": probe.cores, "waited_s": probe.waited_s,
            "rss_milestones_mib": {"after_load": setup["rss_after_load_mib"],
                                   "after_warmup": setup["rss_after_warmup_mib"],
                                   **milestones, "end": peak_rss_mib()}}


def run_worker(args: argparse.Namespace) -> int:
    """Entry point of ``--worker NAME``: run it, print one JSON line."""
    name = args.worker
    probe = Probe(args.wait_idle)
    if name in ("cold-first", "cold-cached", "cold-priming"):
        result = worker_cold(args.device, args.spawn)
    elif name == "slice":
        result = worker_slice(args.device, args.reps, probe)
    elif name == "followup":
        result = worker_followup(args.device, args.reps, probe)
    elif name == "volume":
        result = worker_volume(args.device, args.volume_slices, probe)
    else:
        raise SystemExit(f"unknown worker {name!r}")
    result.update({
        "worker": name,
        "wall_s": time.perf_counter() - _T_TOP_PERF,
        "cpu_s": own_cpu_s(),
        "peak_rss_mib": peak_rss_mib(),
        "cuda_peak_mib": _cuda_peak_mib(args.device),
        **_machine_facts(args.device),
    })
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# =========================================================================== parent


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
class Bench:
    plan: Plan
    device: str
    retries: int
    retry_wait_s: float
    #: wait up to this long (s) before each workload for other processes to go quiet
    wait_idle_s: float = 0.0
    #: whether a separate priming run preceded the cached cold starts
    priming: bool = True
    runs: dict[str, list[WorkerRun]] = field(default_factory=dict)
    #: label -> (seconds waited, machine was quiet)
    waited: dict[str, tuple[float, bool]] = field(default_factory=dict)

    def wait_for_quiet(self, label: str) -> None:
        """Wait (up to ``wait_idle_s``) until other processes use < ``BUSY_CORES`` cores."""
        if self.wait_idle_s <= 0:
            return
        t0 = time.monotonic()
        while True:
            load = busy_cores(1.0)
            if load < BUSY_CORES:
                break
            if time.monotonic() - t0 >= self.wait_idle_s:
                log(f"  machine still busy ({load:.2f} cores); going ahead")
                self.waited[label] = (time.monotonic() - t0, False)
                return
            log(f"  other processes use {load:.2f} cores; waiting ...")
            time.sleep(4.0)
        if time.monotonic() - t0 > 1.5:
            self.waited[label] = (time.monotonic() - t0, True)

    def spawn(self, name: str, extra_env: dict[str, str] | None = None,
              reps: int = 1, label: str | None = None) -> WorkerRun:
        """Run worker ``name`` in a fresh process (retrying after a pause if it fails,
        e.g. because the engine is being edited at that moment)."""
        label = label or name
        attempts = 0
        while True:
            attempts += 1
            self.wait_for_quiet(label)
            run = self._spawn_once(name, extra_env, reps)
            run.attempts = attempts
            if run.error is None and run.result is not None:
                log(f"  {label}: done in {run.wall_s:.1f} s "
                    f"(peak {run.result['peak_rss_mib']:.0f} MiB)")
                break
            reason = (run.error or "no result").strip().splitlines()[-1][:300]
            log(f"  {label}: FAILED (attempt {attempts}): {reason}")
            if attempts > self.retries:
                break
            log(f"  waiting {self.retry_wait_s:.0f} s before retrying ...")
            time.sleep(self.retry_wait_s)
        self.runs.setdefault(name, []).append(run)
        return run

    def _spawn_once(self, name: str, extra_env: dict[str, str] | None, reps: int) -> WorkerRun:
        env = dict(os.environ)
        env.update(extra_env or {})
        cpu0, child0 = CpuSample.now(), children_cpu_s()
        t0 = time.monotonic()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
               "--device", self.device, "--reps", str(reps),
               "--volume-slices", str(self.plan.volume_slices), "--spawn", repr(t0),
               "--wait-idle", repr(self.wait_idle_s)]
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                  timeout=WORKER_TIMEOUT_S, check=False)
            out, err, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout if isinstance(exc.stdout, str) else ""
            err = f"worker timed out after {WORKER_TIMEOUT_S:.0f} s"
            rc = -1
        wall = time.monotonic() - t0
        cpu1, child1 = CpuSample.now(), children_cpu_s()
        tick = _clock_tick()
        busy_s = (cpu1.busy - cpu0.busy) / tick
        foreign = max(0.0, busy_s - (child1 - child0)) / wall if wall > 0 else 0.0
        steal = (cpu1.steal - cpu0.steal) / tick / wall if wall > 0 else 0.0
        result = None
        for line in reversed(out.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    parsed = json.loads(line)
                except ValueError:
                    continue
                if isinstance(parsed, dict) and parsed.get("worker") == name:
                    result = parsed
                    break
        error = None
        if rc != 0 or result is None:
            tail = "\n".join((err or "").strip().splitlines()[-15:])
            error = f"exit status {rc}; stderr tail:\n{tail}" if tail else f"exit status {rc}"
        return WorkerRun(name, result, error, wall, foreign, steal, 1)


def log(message: str) -> None:
    if message:
        print(message, file=sys.stderr, flush=True)


def run_all(bench: Bench) -> None:
    plan = bench.plan
    log(f"MedSegR engine benchmark ({plan.mode}) on {bench.device}")
    log("[1/5] cold start, first run (empty temporary cache: conversion + hashing)")
    tmp = tempfile.mkdtemp(prefix="medsegr-bench-cache-")
    try:
        bench.spawn("cold-first", {"MEDSEGR_CACHE_DIR": tmp})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # The slice workload runs before the cached cold starts: in quick mode it is
    # what makes sure the normal cache is populated (full mode adds a priming run).
    log(f"[2/5] slice question, {ANSWER_TOKENS}-token answer, {plan.slice_reps} repetitions")
    bench.spawn("slice", reps=plan.slice_reps)
    priming = " (no priming run: the slice workload filled the cache)"
    if bench.priming:
        priming = " (1 priming run, not counted)"
    log(f"[3/5] cold start, cached: {plan.cached_runs} timed run(s){priming}")
    if bench.priming:
        bench.spawn("cold-priming", label="priming run (not counted)")
    for i in range(plan.cached_runs):
        bench.spawn("cold-cached", label=f"cached run {i + 1}/{plan.cached_runs}")
    log(f"[4/5] follow-up on the same session, {plan.followup_reps} pair(s)")
    bench.spawn("followup", reps=plan.followup_reps)
    log(f"[5/5] {plan.volume_slices}-slice volume question")
    bench.spawn("volume")


# --------------------------------------------------------------------------- summary


def ok(value: float | None, limit: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "PASS" if value <= limit else "FAIL"


def summarise(bench: Bench) -> dict[str, Any]:
    """Derived numbers per workload, from the raw worker results."""
    out: dict[str, Any] = {}

    def good(name: str) -> list[dict[str, Any]]:
        return [r.result for r in bench.runs.get(name, []) if r.result is not None]

    def proc_meta(name: str) -> dict[str, Any]:
        runs = bench.runs.get(name, [])
        return {"peak_rss_mib": max((r.result["peak_rss_mib"] for r in runs if r.result),
                                    default=None),
                "foreign_cores": max((r.foreign_cores for r in runs), default=0.0),
                "steal_cores": max((r.steal_cores for r in runs), default=0.0),
                "errors": [r.error for r in runs if r.error]}

    first = good("cold-first")
    if first:
        r = first[0]
        out["cold_first"] = {**proc_meta("cold-first"), **{k: r[k] for k in (
            "total_s", "spawn_to_loaded_s", "interpreter_s", "import_s", "load_s",
            "hashing_s", "hash_calls", "conversion_s", "converted")},
            "vision_s": r.get("vision_s"), "llm_s": r.get("llm_s"),
            "optimise_s": r.get("optimise_s")}
    cached = good("cold-cached")
    if cached:
        out["cold_cached"] = {
            **proc_meta("cold-cached"), "runs": len(cached),
            **{k: spread([r[k] for r in cached]) for k in (
                "total_s", "spawn_to_loaded_s", "interpreter_s", "import_s", "load_s",
                "hashing_s")},
            **{k: spread([r[k] for r in cached]) for k in ("vision_s", "llm_s", "optimise_s")
               if all(r.get(k) is not None for r in cached)}}
        priming = good("cold-priming")
        if priming:
            out["cold_cached"]["priming_total_s"] = priming[0]["total_s"]
            out["cold_cached"]["priming_peak_rss_mib"] = priming[0]["peak_rss_mib"]
    sl = good("slice")
    if sl:
        runs = sl[0]["runs"]
        t = {k: spread([r["timings"][k] for r in runs])
             for k in ("total", "encode", "prefill", "decode", "masks")}
        out["slice"] = {**proc_meta("slice"), "runs": len(runs), "timings": t,
                        "decode_tok_per_s": spread([r["decode_tok_per_s"] for r in runs]),
                        "generated_tokens": [r["tokens"]["generated"] for r in runs],
                        "prompt_tokens": runs[0]["tokens"]["prompt"],
                        "encoded_slices": [r["encoded_slices"] for r in runs],
                        "new_session_s": spread(sl[0]["new_session_s"]),
                        "warmup_total_s": sl[0]["warmup"]["timings"]["total"],
                        "load_s": sl[0]["load_s"], "answer": runs[0]["text"],
                        "foreign_cores_per_run": [r.get("foreign_cores") for r in runs],
                        "quiet": _quiet_spread(runs, lambda r: r["timings"]["total"]),
                        "rss_after_load_mib": sl[0].get("rss_after_load_mib"),
                        "rss_after_warmup_mib": sl[0].get("rss_after_warmup_mib")}
    fu = good("followup")
    if fu:
        pairs = fu[0]["pairs"]
        out["followup"] = {
            **proc_meta("followup"), "runs": len(pairs),
            "first_total_s": spread([p["first"]["timings"]["total"] for p in pairs]),
            "followup_total_s": spread([p["followup"]["timings"]["total"] for p in pairs]),
            "ratio": spread([p["ratio"] for p in pairs]),
            "foreign_cores_per_run": [p.get("foreign_cores") for p in pairs],
            "quiet_ratio": _quiet_spread(pairs, lambda p: p["ratio"]),
            "followup_timings": {k: median([p["followup"]["timings"][k] for p in pairs])
                                 for k in ("encode", "prefill", "decode", "masks")},
            "first_timings": {k: median([p["first"]["timings"][k] for p in pairs])
                              for k in ("encode", "prefill", "decode", "masks")},
            "encoded_slices": [p["followup"]["encoded_slices"] for p in pairs],
            "reused_tokens": [p["followup"]["tokens"]["reused"] for p in pairs],
            "prompt_tokens": [p["followup"]["tokens"]["prompt"] for p in pairs]}
    vol = good("volume")
    if vol:
        v = vol[0]
        tm = v["answer"]["timings"]
        total = tm["total"] - v["forced_seg_s"]
        out["volume"] = {
            **proc_meta("volume"), "slices": v["slices"], "first_slice": v["first_slice"],
            "total_s": total, "encode_s": tm["encode"], "llm_s": tm["prefill"] + tm["decode"],
            "prefill_s": tm["prefill"], "decode_s": tm["decode"], "masks_s": tm["masks"],
            "other_s": total - tm["encode"] - tm["prefill"] - tm["decode"] - tm["masks"],
            "encode_s_per_slice": tm["encode"] / max(1, v["answer"]["encoded_slices"]),
            "encoded_slices": v["answer"]["encoded_slices"],
            "mask_slices_per_s": (v["slices"] / tm["masks"] if tm["masks"] > 0
                                  else float("nan")),
            "segments": v["answer"]["segments"], "voxels": v["voxels"],
            "forced_seg": v["forced_seg"], "forced_seg_s": v["forced_seg_s"],
            "key_slices": v["key_slices"], "new_session_s": v["new_session_s"],
            "rss_milestones_mib": v.get("rss_milestones_mib", {}),
            "foreign_cores_during_ask": v.get("foreign_cores")}
    return out


def _quiet_spread(runs: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]
                  ) -> dict[str, Any]:
    """Median/min/max of ``value`` over the runs during which other processes used
    fewer than ``BUSY_CORES`` cores, and how many such runs there were."""
    quiet = [value(r) for r in runs if r.get("foreign_cores", 0.0) < BUSY_CORES]
    return {"runs": len(quiet), "of": len(runs), **(spread(quiet) if quiet else {})}


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cached = summary.get("cold_cached", {}).get("total_s", {}).get("median")
    rows.append({"target": "cached cold start (median, process top -> loaded)",
                 "value": cached, "unit": "s", "limit": TARGET_COLD_CACHED_S,
                 "result": ok(cached, TARGET_COLD_CACHED_S)})
    sl = summary.get("slice", {}).get("timings", {}).get("total", {}).get("median")
    quiet = summary.get("slice", {}).get("quiet", {})
    rows.append({"target": f"slice question, {ANSWER_TOKENS}-token answer (median)",
                 "value": sl, "unit": "s", "limit": TARGET_SLICE_S,
                 "result": ok(sl, TARGET_SLICE_S), "quiet": quiet.get("median"),
                 "quiet_runs": f"{quiet.get('runs', 0)}/{quiet.get('of', 0)}",
                 "quiet_result": ok(quiet.get("median"), TARGET_SLICE_S)})
    ratio = summary.get("followup", {}).get("ratio", {}).get("median")
    quiet = summary.get("followup", {}).get("quiet_ratio", {})
    rows.append({"target": "follow-up / first question (median)", "value": ratio, "unit": "x",
                 "limit": TARGET_FOLLOWUP_RATIO, "result": ok(ratio, TARGET_FOLLOWUP_RATIO),
                 "quiet": quiet.get("median"),
                 "quiet_runs": f"{quiet.get('runs', 0)}/{quiet.get('of', 0)}",
                 "quiet_result": ok(quiet.get("median"), TARGET_FOLLOWUP_RATIO)})
    peaks: dict[str, float] = {k: float(v["peak_rss_mib"]) for k, v in summary.items()
                               if isinstance(v, dict) and v.get("peak_rss_mib") is not None}
    worst = max(peaks, key=lambda k: peaks[k]) if peaks else None
    rows.append({"target": "peak memory, all workloads" + (f" (max: {worst})" if worst else ""),
                 "value": peaks[worst] if worst else None, "unit": "MiB",
                 "limit": TARGET_PEAK_MIB,
                 "result": ok(peaks[worst] if worst else None, TARGET_PEAK_MIB)})
    return rows


def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _phases(d: dict[str, Any], get: Callable[[str], Any]) -> str:
    """``vision a + LLM b + optimise c + rest d`` for a cold-start summary."""
    names = {"vision_s": "vision", "llm_s": "LLM", "optimise_s": "optimise"}
    parts, known = [], 0.0
    for key, label in names.items():
        value = get(key)
        if value is not None:
            parts.append(f"{label} {_f(value)}")
            known += float(value)
    load = get("load_s")
    if load is not None:
        parts.append(f"rest {_f(float(load) - known)}")
    return " + ".join(parts)


def _mm(s: dict[str, float], digits: int = 2) -> str:
    return f"{_f(s['min'], digits)}–{_f(s['max'], digits)}"


def render(bench: Bench, summary: dict[str, Any], machine: dict[str, Any]) -> str:
    plan = bench.plan
    lines: list[str] = []
    title = "MedSegR engine benchmark" + (" — QUICK mode (reduced workloads)"
                                          if plan.mode == "quick" else "")
    lines += [f"## {title}", ""]
    lines += [
        (f"- **CPU**: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
         f"({machine['usable_cores']} usable by this process)"),
        (f"- **torch**: {machine.get('torch_version', '?')}, "
         f"{machine.get('torch_threads', '?')} intra-op threads "
         f"({machine.get('torch_interop_threads', '?')} inter-op); device {bench.device}"
         + (f" ({machine['cuda_device']})" if machine.get("cuda_device") else "")),
        (f"- **Python**: {machine['python']}; medsegr {machine.get('engine_version', '?')}; "
         f"git {machine['git']}"),
        f"- **Date**: {machine['date']}; load average before the run: {machine['loadavg']}",
        (f"- **Model**: bundled base parts (LiteMedSAM + SmolLM2-135M-Instruct), "
         f"`MedSegRPipeline.load(None, ...)`; sample `{SAMPLE}` (MNI152 T1)"),
        (f"- **Plan**: {plan.mode}: slice question x{plan.slice_reps}, follow-up pairs "
         f"x{plan.followup_reps}, cached cold starts x{plan.cached_runs}, volume of "
         f"{plan.volume_slices} slices"),
        "",
    ]
    mem = "Peak RSS MiB (≤ 2 GiB)"
    lines += ["### Results", "",
              (f"| Workload | Runs | Median (s) | Min–max (s) | Split (medians, s) | {mem} "
               "| Other CPU (cores) |"),
              "|---|---:|---:|---:|---|---:|---:|"]

    def memcell(d: dict[str, Any]) -> str:
        p = d.get("peak_rss_mib")
        return f"{_f(p, 0)} {ok(p, TARGET_PEAK_MIB)}" if p is not None else "n/a"

    def busy(d: dict[str, Any]) -> str:
        cell = _f(d.get("foreign_cores"), 2)
        if d.get("steal_cores", 0.0) > 0.05:
            cell += f" (steal {_f(d['steal_cores'], 2)})"
        return cell + (" ⚠" if d.get("foreign_cores", 0.0) > BUSY_CORES else "")

    missing = []
    c1 = summary.get("cold_first")
    if c1:
        split = (f"interpreter {_f(c1['interpreter_s'])} (not in total) · import "
                 f"{_f(c1['import_s'])} · load {_f(c1['load_s'])} = "
                 f"{_phases(c1, lambda k: c1.get(k))}; inside: GGUF→safetensors "
                 f"conversion {_f(c1['conversion_s'])}, hashing {_f(c1['hashing_s'])} in "
                 f"{c1['hash_calls']} file(s){'' if c1['converted'] else '; NO conversion ran!'}")
        lines.append(f"| 1. Cold start, first run (empty cache) | 1 | {_f(c1['total_s'])} | – "
                     f"| {split} | {memcell(c1)} | {busy(c1)} |")
    else:
        missing.append("1. cold start, first run")
    c2: dict[str, Any] = summary.get("cold_cached") or {}
    if c2:
        split = (f"interpreter {_f(c2['interpreter_s']['median'])} (not in total) · import "
                 f"{_f(c2['import_s']['median'])} · load {_f(c2['load_s']['median'])} "
                 f"= {_phases(c2, lambda k: c2.get(k, {}).get('median'))} (hashing "
                 f"{_f(c2['hashing_s']['median'])})")
        lines.append(f"| 2. Cold start, cached | {c2['runs']} | {_f(c2['total_s']['median'])} "
                     f"| {_mm(c2['total_s'])} | {split} | {memcell(c2)} | {busy(c2)} |")
    else:
        missing.append("2. cold start, cached")
    s = summary.get("slice")
    if s:
        t = s["timings"]
        split = (f"encode {_f(t['encode']['median'])} · prefill {_f(t['prefill']['median'])} "
                 f"({s['prompt_tokens']} prompt tokens) · decode {_f(t['decode']['median'])} "
                 f"({_f(s['decode_tok_per_s']['median'], 1)} tok/s, "
                 f"{_mm(s['decode_tok_per_s'], 1)}) · masks {_f(t['masks']['median'], 3)}")
        lines.append(f"| 3. Slice question, {ANSWER_TOKENS}-token answer (new session each) "
                     f"| {s['runs']} | {_f(t['total']['median'])} | {_mm(t['total'])} | {split} "
                     f"| {memcell(s)} | {busy(s)} |")
    else:
        missing.append("3. slice question")
    fu = summary.get("followup")
    if fu:
        ft = fu["followup_timings"]
        split = (f"first {_f(fu['first_total_s']['median'])} → follow-up: encode "
                 f"{_f(ft['encode'], 3)} · prefill {_f(ft['prefill'])} · decode "
                 f"{_f(ft['decode'])}; ratio {_f(fu['ratio']['median'])} "
                 f"({_mm(fu['ratio'])}); encoded_slices {fu['encoded_slices']}; reused "
                 f"{fu['reused_tokens']} of {fu['prompt_tokens']} prompt tokens")
        lines.append(f"| 4. Follow-up, same session & slice | {fu['runs']} "
                     f"| {_f(fu['followup_total_s']['median'])} | {_mm(fu['followup_total_s'])} "
                     f"| {split} | {memcell(fu)} | {busy(fu)} |")
    else:
        missing.append("4. follow-up")
    v = summary.get("volume")
    if v:
        split = (f"encode {_f(v['encode_s'])} ({_f(v['encode_s_per_slice'])} s/slice, "
                 f"{v['encoded_slices']} slices) · LLM {_f(v['llm_s'])} (prefill "
                 f"{_f(v['prefill_s'])} + decode {_f(v['decode_s'])}) · masks "
                 f"{_f(v['masks_s'])} ({_f(v['mask_slices_per_s'], 1)} slices/s) · other "
                 f"{_f(v['other_s'])}")
        label = (f"5. Volume, {v['slices']} axial slices "
                 f"({v['first_slice']}..{v['first_slice'] + v['slices'] - 1})")
        lines.append(f"| {label} | 1 | {_f(v['total_s'])} | – | {split} | {memcell(v)} "
                     f"| {busy(v)} |")
    else:
        missing.append("5. volume")
    lines.append("")

    lines += ["### Targets", "",
              ("| Target | Value | Limit | Result | Quiet repetitions only (other CPU "
               f"< {BUSY_CORES} cores) |"),
              "|---|---:|---:|:---:|---|"]
    for row in targets(summary):
        digits = 0 if row["unit"] == "MiB" else 2
        quiet_cell = "–"
        if "quiet" in row:
            quiet_cell = (f"{_f(row['quiet'], digits)} {row['unit']} ({row['quiet_runs']} runs): "
                          f"{row['quiet_result']}")
        lines.append(f"| {row['target']} | {_f(row['value'], digits)} {row['unit']} "
                     f"| ≤ {_f(row['limit'], digits)} {row['unit']} | **{row['result']}** "
                     f"| {quiet_cell} |")
    lines.append("")

    notes: list[str] = []
    if plan.mode == "quick":
        notes.append("QUICK mode: fewer repetitions and a "
                     f"{plan.volume_slices}-slice volume; not comparable with full runs.")
    if s:
        notes.append(f"Slice question timings are `Answer.timings` (the encoder runs each time, "
                     f"encoded_slices {s['encoded_slices']}); creating the session (volume "
                     f"normalisation) took {_f(s['new_session_s']['median'], 3)} s more and is "
                     f"not in them. Untimed warm-up question: {_f(s['warmup_total_s'])} s. "
                     f"Tokens generated: {s['generated_tokens']}; tok/s = generated / decode "
                     "time.")
    if s and any(c is not None for c in s.get("foreign_cores_per_run", [])):
        loads = ", ".join(_f(c) for c in s["foreign_cores_per_run"])
        notes.append(f"Slice question: other processes' CPU load (cores) during each "
                     f"repetition: {loads}.")
    if fu and any(c is not None for c in fu.get("foreign_cores_per_run", [])):
        loads = ", ".join(_f(c) for c in fu["foreign_cores_per_run"])
        notes.append(f"Follow-up pairs: other processes' CPU load (cores) during each pair: "
                     f"{loads}.")
    if v and v["forced_seg"]:
        notes.append(f"Volume: the base model's answer had no [SEG], so one was appended "
                     f"(real LLM hidden state, {_f(v['forced_seg_s'])} s, excluded from the "
                     f"total) to make the mask decoder run on all {v['slices']} slices "
                     f"({v['voxels']} voxels kept). Key slice(s): {v['key_slices']}.")
    elif v:
        notes.append(f"Volume: the answer produced {v['segments']} segment(s) on its own.")
    if v and v.get("rss_milestones_mib"):
        marks = ", ".join(f"{k.replace('_', ' ')} {_f(m, 0)}"
                          for k, m in v["rss_milestones_mib"].items())
        notes.append(f"Volume peak RSS so far (MiB) at each step: {marks}.")
    if s and s.get("rss_after_load_mib") is not None:
        notes.append(f"Slice workload peak RSS (MiB): after load {_f(s['rss_after_load_mib'], 0)}, "
                     f"after warm-up {_f(s['rss_after_warmup_mib'], 0)}, end "
                     f"{_f(s['peak_rss_mib'], 0)}.")
    if c2 and c2["runs"] and bench.plan.cached_runs and not bench.priming:
        notes.append("Cached cold start: no separate priming run (quick mode); the slice "
                     "workload, run before it, populated the cache.")
    for run in bench.runs.get("cold-cached", []):
        if run.result and run.result.get("conversion_s", 0.0) > 1.0:
            notes.append("⚠ a cached cold start converted the GGUF: the cache was NOT populated.")
    if bench.waited:
        notes.append("Waited for other processes to go quiet before: " + ", ".join(
            f"{k} {w:.0f} s" + ("" if quiet else " (gave up)")
            for k, (w, quiet) in bench.waited.items()) + ".")
    for key, d in summary.items():
        if isinstance(d, dict) and d.get("foreign_cores", 0.0) > BUSY_CORES:
            notes.append(f"⚠ {key}: other processes used ~{_f(d['foreign_cores'])} cores on "
                         "average while it ran; its numbers are inflated.")
    for key, runs in bench.runs.items():
        for r in runs:
            if r.attempts > 1:
                notes.append(f"{key}: needed {r.attempts} attempts.")
            if r.error:
                first_line = r.error.strip().splitlines()[-1][:300]
                notes.append(f"**{key} failed**: {first_line}")
    if missing:
        notes.append("Missing (worker failed): " + ", ".join(missing) + ".")
    if notes:
        lines += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def machine_info(bench: Bench) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for runs in bench.runs.values():
        for r in runs:
            if r.result:
                facts = {k: r.result.get(k) for k in (
                    "torch_version", "torch_threads", "torch_interop_threads",
                    "engine_version", "cuda_device") if r.result.get(k) is not None}
                break
        if facts:
            break
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the real bundled MedSegR model (each workload in a fresh process).")
    parser.add_argument("--quick", action="store_true",
                        help="smaller run (< 3 min on 2 cores): 2 repetitions, 16-slice volume")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write all numbers as JSON")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--retries", type=int, default=1,
                        help="re-run a failed workload this many times (default 1)")
    parser.add_argument("--retry-wait", type=float, default=60.0,
                        help="seconds to wait before a retry (default 60)")
    parser.add_argument("--wait-idle", type=float, default=30.0, metavar="S",
                        help="before each workload, wait up to S seconds for other processes "
                             "to stop using the CPU (default 30; 0: do not check)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--volume-slices", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--spawn", type=float, default=_T_TOP_MONO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)

    plan = QUICK if args.quick else FULL
    machine: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": git_state(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3])
        if Path("/proc/loadavg").is_file() else "n/a",
    }
    bench = Bench(plan=plan, device=args.device, retries=max(0, args.retries),
                  retry_wait_s=args.retry_wait, wait_idle_s=args.wait_idle,
                  priming=plan.mode != "quick")
    t0 = time.monotonic()
    run_all(bench)
    elapsed = time.monotonic() - t0
    machine.update(machine_info(bench))
    summary = summarise(bench)
    report = render(bench, summary, machine)
    print(report)
    print(f"_Benchmark wall time: {elapsed:.0f} s._")
    failed = any(r.error for runs in bench.runs.values() for r in runs)
    if args.json:
        payload = {
            "mode": plan.mode, "plan": dataclasses.asdict(plan), "device": args.device,
            "machine": machine, "bench_wall_s": elapsed, "summary": summary,
            "targets": targets(summary),
            "targets_limits": {"cold_cached_s": TARGET_COLD_CACHED_S, "slice_s": TARGET_SLICE_S,
                               "followup_ratio": TARGET_FOLLOWUP_RATIO,
                               "peak_mib": TARGET_PEAK_MIB},
            "raw": {name: [dataclasses.asdict(r) for r in runs]
                    for name, runs in bench.runs.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log(f"JSON written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
