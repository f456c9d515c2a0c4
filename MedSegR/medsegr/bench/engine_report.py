"""The engine suite's report: derived numbers, targets, Markdown and the JSON record.

- :func:`summarise`: per workload, medians and spreads from the raw worker results;
- :func:`targets`: cached cold start <= 5 s, slice question <= 2 s, its first streamed
  text <= 1 s after the slice is encoded, follow-up <= 0.5 x the first question, peak
  memory <= 2 GiB in every workload;
- :func:`render`: the machine, a results table, the targets and notes (Markdown);
- :func:`to_json`: every number, the raw worker results included.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from medsegr.bench.cpu_load import BUSY_CORES
from medsegr.bench.engine_plan import (ANSWER_TOKENS, TARGET_COLD_CACHED_S, TARGET_FIRST_TEXT_S,
                                       TARGET_FOLLOWUP_RATIO, TARGET_PEAK_MIB, TARGET_SLICE_S)
from medsegr.bench.engine_runner import EngineBench
from medsegr.bench.http_workload import render_http
from medsegr.bench.questions import SAMPLE
from medsegr.bench.stats import Spread, spread


def median(values: Sequence[float]) -> float:
    return Spread.of(values).median


#: the results table's row labels -> their workloads
MISSING_LABELS = {"1. cold start, first run": "cold-first", "2. cold start, cached": "cold-cached",
                  "3. slice question": "slice", "4. follow-up": "followup", "5. volume": "volume"}


def _model(bench: EngineBench) -> str:
    if bench.options.model == "tiny":
        return "tiny random model (a smoke test: its numbers mean nothing)"
    return "bundled base parts (LiteMedSAM + SmolLM2-135M-Instruct)"


def ok(value: float | None, limit: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "PASS" if value <= limit else "FAIL"


def summarise(bench: EngineBench) -> dict[str, Any]:
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
                        "first_text_s": spread([r["first_text_s"] for r in runs
                                                if r.get("first_text_s") is not None]),
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
            "segments": v["answer"]["segments"], "not_found": v["answer"].get("not_found", 0),
            "voxels": v["voxels"], "forced_seg": v["forced_seg"], "forced_seg_s": v["forced_seg_s"],
            "key_slices": v["key_slices"], "new_session_s": v["new_session_s"],
            "rss_milestones_mib": v.get("rss_milestones_mib", {}),
            "foreign_cores_during_ask": v.get("foreign_cores")}
    http = good("http")
    if http:
        out["http"] = {**proc_meta("http"), **http[0]}
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

    def with_quiet(target: str, value: float | None, unit: str, limit: float,
                   quiet: dict[str, Any]) -> dict[str, Any]:
        """A target row, also judged on the quiet repetitions alone."""
        return {"target": target, "value": value, "unit": unit, "limit": limit,
                "result": ok(value, limit), "quiet": quiet.get("median"),
                "quiet_runs": f"{quiet.get('runs', 0)}/{quiet.get('of', 0)}",
                "quiet_result": ok(quiet.get("median"), limit)}

    sl = summary.get("slice", {})
    rows.append(with_quiet(f"slice question, {ANSWER_TOKENS}-token answer (median)",
                           sl.get("timings", {}).get("total", {}).get("median"), "s",
                           TARGET_SLICE_S, sl.get("quiet", {})))
    first_text = sl.get("first_text_s", {}).get("median")
    rows.append({"target": "first streamed text of the slice question, after encoding (median)",
                 "value": first_text, "unit": "s", "limit": TARGET_FIRST_TEXT_S,
                 "result": ok(first_text, TARGET_FIRST_TEXT_S)})
    fu = summary.get("followup", {})
    rows.append(with_quiet("follow-up / first question (median)",
                           fu.get("ratio", {}).get("median"), "x", TARGET_FOLLOWUP_RATIO,
                           fu.get("quiet_ratio", {})))
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


def render(bench: EngineBench, summary: dict[str, Any], machine: dict[str, Any]) -> str:
    plan = bench.plan
    lines: list[str] = []
    title = "MedSegR engine benchmark" + (" — QUICK mode (reduced workloads)"
                                          if plan.mode == "quick" else "")
    lines += [f"## {title}", ""]
    engine_ran = any(name != "http" for name in bench.options.workloads)
    lines += [
        (f"- **CPU**: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
         f"({machine['usable_cores']} usable by this process)"),
        (f"- **torch**: {machine.get('torch_version', '?')}, "
         f"{machine.get('torch_threads', '?')} intra-op threads "
         f"({machine.get('torch_interop_threads', '?')} inter-op); device {bench.options.device}"
         + (f" ({machine['cuda_device']})" if machine.get("cuda_device") else "")),
        (f"- **Python**: {machine['python']}; medsegr {machine.get('engine_version', '?')}; "
         f"git {machine['git']}"),
        f"- **Date**: {machine['date']}; load average before the run: {machine['loadavg']}",
        (f"- **Model**: {_model(bench)}, "
         f"`MedSegRPipeline.load(None, ...)`; sample `{SAMPLE}` (MNI152 T1)"),
    ]
    if engine_ran:
        lines.append(f"- **Plan**: {plan.mode}: slice question x{plan.slice_reps}, follow-up "
                     f"pairs x{plan.followup_reps}, cached cold starts x{plan.cached_runs}, "
                     f"volume of {plan.volume_slices} slices")
    lines.append("")
    # the engine workloads' tables (absent when only the HTTP workload ran)
    missing: list[str] = []
    s, fu, v = summary.get("slice"), summary.get("followup"), summary.get("volume")
    c2: dict[str, Any] = summary.get("cold_cached") or {}
    if engine_ran:
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
        if c2:
            split = (f"interpreter {_f(c2['interpreter_s']['median'])} (not in total) · import "
                     f"{_f(c2['import_s']['median'])} · load {_f(c2['load_s']['median'])} "
                     f"= {_phases(c2, lambda k: c2.get(k, {}).get('median'))} (hashing "
                     f"{_f(c2['hashing_s']['median'])})")
            lines.append(f"| 2. Cold start, cached | {c2['runs']} | {_f(c2['total_s']['median'])} "
                         f"| {_mm(c2['total_s'])} | {split} | {memcell(c2)} | {busy(c2)} |")
        else:
            missing.append("2. cold start, cached")
        if s:
            t = s["timings"]
            split = (f"encode {_f(t['encode']['median'])} · prefill {_f(t['prefill']['median'])} "
                     f"({s['prompt_tokens']} prompt tokens) · decode {_f(t['decode']['median'])} "
                     f"({_f(s['decode_tok_per_s']['median'], 1)} tok/s, "
                     f"{_mm(s['decode_tok_per_s'], 1)}) · masks {_f(t['masks']['median'], 3)}; "
                     f"first text {_f(s.get('first_text_s', {}).get('median'))} after encoding")
            lines.append(f"| 3. Slice question, {ANSWER_TOKENS}-token answer (new session each) "
                         f"| {s['runs']} | {_f(t['total']['median'])} | {_mm(t['total'])} | {split} "
                         f"| {memcell(s)} | {busy(s)} |")
        else:
            missing.append("3. slice question")
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
        notes.append(f"Volume: the answer's last token was forced to be [SEG] (through "
                     f"`MedSegRPipeline.adjust_logits`; the base model almost never writes "
                     f"one), so the grounding module ran on all {v['slices']} slices "
                     f"({v['voxels']} voxels kept"
                     + (f"; {v['not_found']} structure(s) not found" if v.get("not_found") else "")
                     + f"). Key slice(s): {v['key_slices']}.")
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
    missing = [m for m in missing if MISSING_LABELS[m] in bench.options.workloads]
    if missing:
        notes.append("Missing (worker failed): " + ", ".join(missing) + ".")
    if notes:
        lines += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
    if summary.get("http"):
        lines += render_http(summary["http"], bench.options.http_plan().repeats)
    return "\n".join(lines)


def machine_facts(host: dict[str, Any], bench: EngineBench) -> dict[str, Any]:
    """``host`` (:func:`medsegr.bench.machine.host_facts`, taken before the run) with the
    software the workers reported."""
    facts: dict[str, Any] = {
        "cpu_model": host["cpu"], "logical_cores": host["logical_cores"],
        "usable_cores": host["usable_cores"], "python": host["python"],
        "platform": host["platform"], "date": host["date"], "git": host["git"],
        "loadavg": host["loadavg"] or "n/a"}
    for runs in bench.runs.values():
        for r in runs:
            if r.result:
                facts.update({k: r.result[k] for k in (
                    "torch_version", "torch_threads", "torch_interop_threads",
                    "engine_version", "cuda_device") if r.result.get(k) is not None})
                return facts
    return facts


def to_json(bench: EngineBench, summary: dict[str, Any], machine: dict[str, Any],
            wall_s: float) -> dict[str, Any]:
    """Every number of the run, raw worker results included."""
    payload = {
        "mode": bench.plan.mode, "plan": dataclasses.asdict(bench.plan),
        "device": bench.options.device, "machine": machine, "bench_wall_s": wall_s,
        "summary": summary, "targets": targets(summary),
        "targets_limits": {"cold_cached_s": TARGET_COLD_CACHED_S, "slice_s": TARGET_SLICE_S,
                           "first_text_s": TARGET_FIRST_TEXT_S,
                           "followup_ratio": TARGET_FOLLOWUP_RATIO,
                           "peak_mib": TARGET_PEAK_MIB},
        "raw": {name: [dataclasses.asdict(r) for r in runs] for name, runs in bench.runs.items()},
    }
    if "http" in bench.options.workloads:
        payload["http_plan"] = dataclasses.asdict(bench.options.http_plan())
    return payload
