"""The benchmark's report: Markdown tables, a JSON record and two plots.

- :func:`summarise` derives, per workload and path, the median and spread of the
  latency, tokens per second, peak memory, and the reference/MedSegR ratio;
- :func:`targets` checks the performance targets that apply to the device;
- :func:`render_markdown` prints all of it with the machine and the method;
- :func:`to_json` is every number, raw runs included;
- :func:`write_plots` draws latency against the number of turns and against the
  number of slices, both paths on each (matplotlib, PNG).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from medsegr.bench.equality import DICE_MIN
from medsegr.bench.stats import Spread
from medsegr.bench.timing import PathRun
from medsegr.bench.context import MEDSEGR, PATHS, REFERENCE, WorkloadResult
from medsegr.io.atomic import atomic_write_text
from medsegr.io.images import atomic_output

#: issue targets (ratios are measured in the same run on the same machine)
TARGET_CONVERSATION_RATIO = 3.0
TARGET_VOLUME_RATIO = 5.0
TARGET_SLICE_CPU_S = 1.5
TARGET_SLICE_GPU_S = 0.150
TARGET_MASK_SLICES_PER_S_GPU = 500.0

PATH_LABELS = {MEDSEGR: "MedSegR", REFERENCE: "reference (LISA-style)"}
PHASES = ("encode", "prefill", "decode", "reread", "masks")


def _nan() -> float:
    return float("nan")


def path_summary(runs: list[PathRun]) -> dict[str, Any]:
    """Median/spread of latency and tokens/s, peak memory and the phase medians."""
    if not runs:
        return {"runs": 0}
    peaks = [r.memory.peak_rss_mib for r in runs if r.memory is not None]
    cuda = [r.memory.cuda_peak_mib for r in runs
            if r.memory is not None and r.memory.cuda_peak_mib is not None]
    scopes = {r.memory.scope for r in runs if r.memory is not None}
    return {
        "runs": len(runs),
        "latency_s": dataclasses.asdict(Spread.of([r.latency_s for r in runs])),
        "tokens_per_s": dataclasses.asdict(Spread.of([r.tokens_per_s for r in runs])),
        "answer_tokens": runs[0].answer_tokens,
        "llm_tokens": runs[0].llm_tokens,
        "peak_rss_mib": max(peaks) if peaks else None,
        "memory_scope": "block" if scopes == {"block"} else "process",
        "cuda_peak_mib": max(cuda) if cuda else None,
        "phases_s": {name: Spread.of([r.phases[name] for r in runs if name in r.phases]).median
                     for name in PHASES if any(name in r.phases for r in runs)},
        "requests_s": dataclasses.asdict(Spread.of([t for r in runs for t in r.requests_s]))
        if any(r.requests_s for r in runs) else None,
    }


def summarise(workload: WorkloadResult) -> dict[str, Any]:
    out: dict[str, Any] = {path: path_summary(workload.runs(path)) for path in PATHS}
    ours = out[MEDSEGR].get("latency_s", {}).get("median", _nan())
    theirs = out[REFERENCE].get("latency_s", {}).get("median", _nan())
    out["ratio"] = theirs / ours if ours and not math.isnan(ours) and not math.isnan(theirs) \
        else _nan()
    return out


def _by_name(workloads: list[WorkloadResult], name: str) -> WorkloadResult | None:
    return next((w for w in workloads if w.name == name and w.skipped is None), None)


def targets(result: Any) -> list[dict[str, Any]]:
    """The issue's targets that this run can speak to, with value and verdict."""
    rows: list[dict[str, Any]] = []
    device = str(result.machine.get("device", "cpu"))
    on_cuda = device.startswith("cuda")

    def row(target: str, value: float | None, limit: float, unit: str, higher: bool,
            note: str = "") -> None:
        if value is None or math.isnan(value):
            verdict = "not measured"
        else:
            verdict = "PASS" if (value >= limit if higher else value <= limit) else "FAIL"
        rows.append({"target": target, "value": value, "limit": limit, "unit": unit,
                     "comparison": "≥" if higher else "≤", "result": verdict, "note": note})

    conv = _by_name(result.workloads, "conversation")
    turns = result.plan.conversation_turns
    row(f"{turns}-turn conversation, reference / MedSegR total time",
        summarise(conv)["ratio"] if conv else None, TARGET_CONVERSATION_RATIO, "×", True,
        "" if turns == 5 else f"{turns} turns (the target is for 5)")
    vol = _by_name(result.workloads, "volume")
    slices = result.plan.volume_slices
    row(f"{slices}-slice volume question, reference / MedSegR",
        summarise(vol)["ratio"] if vol else None, TARGET_VOLUME_RATIO, "×", True,
        "" if slices == 64 else f"{slices} slices (the target is for 64)")
    sl = _by_name(result.workloads, "slice")
    slice_s = summarise(sl)[MEDSEGR].get("latency_s", {}).get("median") if sl else None
    if not on_cuda:
        cores = result.machine.get("usable_cores")
        row(f"slice question, {result.plan.answer_tokens}-token answer, on 2 CPU cores (MedSegR "
            "median)", slice_s, TARGET_SLICE_CPU_S, "s", False,
            "" if cores == 2 else f"measured on {cores} usable cores, not 2")
        rows.append({"target": "on an H100: slice question ≤ 150 ms; volume mask decoding "
                     "≥ 500 slices/s", "value": None, "limit": None, "unit": "",
                     "comparison": "", "result": "not measured",
                     "note": "no GPU on this machine: the GPU numbers are missing"})
    else:
        gpu = str(result.machine.get("gpu", "GPU"))
        row(f"slice question on the GPU ({gpu}; the target is for an H100)", slice_s,
            TARGET_SLICE_GPU_S, "s", False)
        rate = None
        if vol:
            masks = summarise(vol)[MEDSEGR]["phases_s"].get("masks")
            rate = slices / masks if masks else None
        row(f"volume mask decoding on the GPU ({gpu}), MedSegR", rate,
            TARGET_MASK_SLICES_PER_S_GPU, "slices/s", True)
    return rows


# ------------------------------------------------------------------------------- Markdown
def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _seconds(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _weights(result: Any) -> str:
    if result.options.model == "tiny":
        return "tiny random model"
    if result.model.get("checkpoint"):
        return f"fine-tuned checkpoint `{Path(result.model['checkpoint']).name}` on the base parts"
    return "untrained base parts"


def render_markdown(result: Any) -> str:
    m, plan, opts = result.machine, result.plan, result.options
    tiny = opts.model == "tiny"
    lines = [f"## MedSegR against a LISA-style reference — {plan.mode} run", ""]
    if tiny:
        lines += ["> **Tiny random model**: a smoke test of the benchmark itself; its timings "
                  "say nothing about MedSegR.", ""]
    cpu_line = (f"- **Machine**: {m.get('cpu')}, {m.get('logical_cores')} logical cores "
                f"({m.get('usable_cores')} usable, torch {m.get('torch_threads')} threads)")
    if m.get("gpu"):
        cpu_line += f"; GPU {m['gpu']} ({m.get('gpu_memory_gib')} GiB)"
    model = result.model
    base = model.get("base", {}) or {}
    parts = ", ".join(str(v.get("name", k)) if isinstance(v, dict) else f"{k}: {v}"
                      for k, v in base.items()) if isinstance(base, dict) else str(base)
    s = result.settings
    lines += [
        cpu_line,
        f"- **Software**: Python {m.get('python')}, torch {m.get('torch')}, medsegr "
        f"{m.get('medsegr')} (git {m.get('git')}); {m.get('date')}; load average before: "
        f"{m.get('loadavg_before', '–')}",
        f"- **Model**: {_weights(result)} ({parts or '–'}) "
        f"on {m.get('device')}; LLM {s['llm_precision']} on both paths; lean decoder "
        f"{'on' if s['lean_decoder'] else 'off'} (MedSegR path); encoder batch "
        f"{s['encoder_batch']}, mask-decoder batch {s['decoder_batch']}, embeddings cached "
        f"as {s['embedding_cache_dtype']}" + ("; vision parts compiled" if s['compiled_vision']
                                               else ""),
        f"- **Method**: one process; the model was loaded once ({_f(result.load_s)} s) and both "
        f"paths run on that same model object. Every answer is exactly {plan.answer_tokens} "
        f"tokens long and ends with a forced [SEG], so both paths generate the same amount and "
        "decode masks. Repetitions alternate which path goes first; one untimed warm-up "
        f"question per path ({_f(result.warm_up_s)} s) came first. Peak memory is the process's "
        "resident-set high-water mark during each measured block (reset before it), model "
        "included" + ("; CUDA: peak allocated memory" if m.get("gpu") else "") + ".",
        "",
        "### Results",
        "",
        "| Workload | Path | Runs | Median (s) | Min–max (s) | Answer tok/s | LLM tokens "
        "| Peak RSS (MiB) |" + (" CUDA peak (MiB) |" if m.get("gpu") else "")
        + " Reference / MedSegR |",
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if m.get("gpu") else "") + "---:|",
    ]
    skipped, notes = [], []
    for w in result.workloads:
        if w.skipped:
            skipped.append(f"**{w.title}**: skipped — {w.skipped}.")
            continue
        summary = summarise(w)
        for path in PATHS:
            p = summary[path]
            if not p["runs"]:
                continue
            lat = p["latency_s"]
            cells = [w.title, PATH_LABELS[path], str(p["runs"]), _seconds(lat["median"]),
                     f"{_seconds(lat['low'])}–{_seconds(lat['high'])}" if p["runs"] > 1 else "–",
                     _f(p["tokens_per_s"]["median"], 1), str(p["llm_tokens"]),
                     _f(p["peak_rss_mib"], 0) + ("" if p["memory_scope"] == "block" else " ¹")]
            if m.get("gpu"):
                cells.append(_f(p["cuda_peak_mib"], 0))
            cells.append(f"**{_f(summary['ratio'], 1)}×**" if path == REFERENCE else "")
            lines.append("| " + " | ".join(cells) + " |")
        notes += [f"{w.title}: {n}." for n in w.notes]
    lines += ["", "Answer tok/s: tokens of the answer(s) the user gets, divided by the latency. "
              "LLM tokens: tokens the LLM generated to produce them.", ""]

    lines += ["### Where the time goes (medians of the answers' own timings, s)", "",
              "| Workload | Path | encode | prefill | decode | re-read [SEG] | masks |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for w in result.workloads:
        if w.skipped:
            continue
        summary = summarise(w)
        for path in PATHS:
            p = summary[path]
            if p["runs"] and p["phases_s"]:
                lines.append(f"| {w.title} | {PATH_LABELS[path]} | " + " | ".join(
                    _seconds(p["phases_s"].get(name)) for name in PHASES) + " |")
    lines += ["", "The reference's prefill is its first full forward; its decode is every later "
              "token's full re-run; re-read is the extra pass that reads the [SEG] states back. "
              "Server runs report the engine's own timings.", ""]

    lines += ["### Equality of the two paths", "",
              "| Workload | Answers compared | Text | Masks | Verdict |", "|---|---:|---|---|---|"]
    for w in result.workloads:
        if w.skipped:
            continue
        e = w.equality
        masks = ("identical" if e.masks_identical else f"min Dice {e.dice_min:.4f}") \
            + f" ({e.masks_compared} masks)"
        lines.append(f"| {w.title} | {e.compared} | {'identical' if e.text_equal else 'DIFFERS'} "
                     f"| {masks} | **{e.verdict}** |")
        notes += [f"{w.title}: {d}" for d in e.differences]
    lines += ["", f"Criterion: identical text, the same segments, and masks identical or with "
              f"Dice ≥ {DICE_MIN} (the paths run the same kernels in a different order, so hidden "
              "states differ in the last bits and a pixel at the threshold can flip).", ""]

    lines += ["### Targets", "", "| Target | Value | Limit | Result | Note |",
              "|---|---:|---:|:---:|---|"]
    for t in targets(result):
        digits = 3 if t["unit"] == "s" else 1
        value = _f(t["value"], digits) + (f" {t['unit']}" if t["value"] is not None else "")
        limit = (f"{t['comparison']} {_f(t['limit'], digits)} {t['unit']}"
                 if t["limit"] is not None else "–")
        lines.append(f"| {t['target']} | {value} | {limit} | **{t['result']}** | {t['note']} |")
    lines.append("")
    if tiny:
        lines += ["(Targets are about the real model; on the tiny model they mean nothing.)", ""]

    scopes = {summarise(w)[p].get("memory_scope") for w in result.workloads if not w.skipped
              for p in PATHS}
    if "process" in scopes:
        notes.append("¹ this system cannot reset the resident-set high-water mark, so that peak "
                     "is the whole process's so far")
    if skipped or notes:
        lines += ["### Notes", ""] + [f"- {n}" for n in skipped + notes] + [""]
    lines.append(f"_Benchmark wall time: {result.wall_s:.0f} s._")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- JSON
def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def to_json(result: Any) -> dict[str, Any]:
    """Every number of the run (raw repetitions included) as JSON-ready data."""
    data = _jsonable(result)
    for raw, w in zip(data["workloads"], result.workloads):
        raw["equality"].update(passed=w.equality.passed, verdict=w.equality.verdict)
        if not w.skipped:
            raw["summary"] = _jsonable(summarise(w))
    data["targets"] = _jsonable(targets(result))
    data["equality_passed"] = result.equality_passed
    return data


def write_json(result: Any, path: str | os.PathLike[str]) -> Path:
    return write_json_data(to_json(result), path)


def write_json_data(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` as indented JSON to ``path`` (folders made, replaced atomically)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(target, json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------------- plots
def write_plots(result: Any, folder: str | os.PathLike[str]) -> list[Path]:
    """``latency_vs_turns.png`` and ``latency_vs_slices.png`` (those whose workload ran)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    specs = (("conversation", "latency_vs_turns.png", "turns in the conversation",
              "time until the last answer (s)", "Latency against conversation length"),
             ("volume", "latency_vs_slices.png", "slices in the volume", "answer latency (s)",
              "Latency against volume size"))
    styles = {MEDSEGR: ("tab:blue", "o"), REFERENCE: ("tab:red", "s")}
    for name, filename, xlabel, ylabel, title in specs:
        workload = _by_name(result.workloads, name)
        if workload is None or not workload.curves:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for path in PATHS:
            points = workload.curves.get(path)
            if points:
                colour, marker = styles[path]
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker,
                        color=colour, label=PATH_LABELS[path])
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        device = result.machine.get("gpu") or f"{result.machine.get('usable_cores')} CPU cores"
        ax.set_title(f"{title} ({device})", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend()
        fig.tight_layout()
        target = out / filename
        with atomic_output(target) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(target)
    return written
