"""``medsegr bench``: the CI smoke runs on the tiny model (the comparison: ``--quick``,
every workload, the real engine server on loopback; the engine suite: ``--engine
--quick``, each workload in its own process) and the bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medsegr.cli.commands import main
from medsegr.modeling.load_timings import phase, recording

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_smoke_on_the_tiny_model(tmp_path: Path):
    out_json, plots = tmp_path / "bench.json", tmp_path / "plots"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "medsegr.cli", "bench", "--model", "tiny", "--quick",
         "--repeats", "1", "--device", "cpu", "--json", str(out_json), "--plots", str(plots)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = proc.stdout
    for heading in ("### Results", "### Equality of the two paths", "### Targets",
                    "Tiny random model"):
        assert heading in report
    assert "GPU numbers are missing" in report

    data = json.loads(out_json.read_text(encoding="utf-8"))
    assert data["equality_passed"] is True
    assert data["settings"]["llm_precision"] == "float32"
    by_name = {w["name"]: w for w in data["workloads"]}
    assert set(by_name) == {"slice", "conversation", "volume", "server"}
    for name, w in by_name.items():
        assert w["skipped"] is None, name
        assert w["equality"]["verdict"] == "identical", (name, w["equality"])
        assert w["equality"]["compared"] >= 1
        for path in ("medsegr", "reference"):
            runs = w[path]
            assert len(runs) == 1, (name, path)
            assert runs[0]["latency_s"] > 0
            assert runs[0]["memory"]["peak_rss_mib"] > 100
            assert runs[0]["answer_tokens"] > 0
        assert w["summary"]["ratio"] > 0
    assert by_name["slice"]["medsegr"][0]["answer_tokens"] == 30
    assert by_name["conversation"]["medsegr"][0]["answer_tokens"] == 3 * 30
    assert len(by_name["conversation"]["medsegr"][0]["steps_s"]) == 3
    volume = by_name["volume"]
    assert volume["reference"][0]["llm_tokens"] == 8 * 30  # the whole model once per slice
    assert volume["medsegr"][0]["llm_tokens"] == 30  # the LLM once
    assert len(volume["reference"][0]["steps_s"]) == 8
    assert [p[0] for p in volume["curves"]["medsegr"]] == [2, 4, 8]
    assert by_name["server"]["medsegr"][0]["answer_tokens"] == 4 * 30
    assert len(by_name["server"]["medsegr"][0]["requests_s"]) == 4
    for name in ("latency_vs_turns.png", "latency_vs_slices.png"):
        assert (plots / name).read_bytes()[:8] == PNG_MAGIC


#: the engine suite's JSON record, as ``benchmarks/engine_bench.py`` wrote it
ENGINE_JSON_KEYS = {"mode", "plan", "device", "machine", "bench_wall_s", "summary", "targets",
                    "targets_limits", "raw"}


def test_engine_suite_on_the_tiny_model(tmp_path: Path):
    out_json = tmp_path / "engine.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "medsegr.cli", "bench", "--engine", "--model", "tiny", "--quick",
         "--workloads", "slice,cold-cached,followup,volume", "--wait-idle", "0",
         "--retries", "0", "--json", str(out_json)],
        capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for heading in ("## MedSegR engine benchmark — QUICK mode", "### Results", "### Targets",
                    "tiny random model", "2. Cold start, cached", "5. Volume, 16 axial slices"):
        assert heading in proc.stdout
    assert "Missing" not in proc.stdout and "failed" not in proc.stdout

    data = json.loads(out_json.read_text(encoding="utf-8"))
    assert set(data) == ENGINE_JSON_KEYS
    assert data["plan"] == {"mode": "quick", "slice_reps": 2, "followup_reps": 1,
                            "cached_runs": 1, "volume_slices": 16}
    summary = data["summary"]
    assert set(summary) == {"cold_cached", "slice", "followup", "volume"}
    assert [run["worker"] for run in
            (r["result"] for runs in data["raw"].values() for r in runs)] == \
        ["slice", "cold-cached", "followup", "volume"]
    for runs in data["raw"].values():
        assert all(r["error"] is None and r["result"]["peak_rss_mib"] > 100 for r in runs)

    # the load phases are the pipeline's own load_timings
    cold = summary["cold_cached"]
    phases = sum(cold[k]["median"] for k in ("vision_s", "llm_s", "optimise_s"))
    assert all(cold[k]["median"] > 0 for k in ("vision_s", "llm_s", "optimise_s"))
    assert phases <= cold["load_s"]["median"] <= cold["total_s"]["median"]
    assert cold["import_s"]["median"] > 0
    raw_cold = data["raw"]["cold-cached"][0]["result"]
    assert raw_cold["converted"] is False and isinstance(raw_cold["hash_calls"], int)

    sl = summary["slice"]
    assert sl["runs"] == 2 and sl["generated_tokens"] == [30, 30]
    assert sl["encoded_slices"] == [1, 1]  # a new session each time: the encoder runs
    assert sl["timings"]["total"]["median"] >= sl["timings"]["decode"]["median"] > 0
    # streamed: the first text comes after encoding, before the answer is complete
    first = [r["first_text_s"] for r in data["raw"]["slice"][0]["result"]["runs"]]
    assert all(0 < f < t for f, t in zip(first, (r["timings"]["total"] for r in
               data["raw"]["slice"][0]["result"]["runs"])))
    assert sl["first_text_s"]["median"] > 0
    assert any(t["target"].startswith("first streamed text") for t in data["targets"])
    fu = summary["followup"]
    assert fu["encoded_slices"] == [0] and fu["reused_tokens"][0] > 0
    assert fu["ratio"]["median"] < 1
    vol = summary["volume"]
    # [SEG] forced through adjust_logits: one structure named, decoded on every slice; the
    # random grounding module may not find it (then it has no segment and is not found)
    assert vol["forced_seg"] is True and vol["segments"] + vol["not_found"] == 1
    assert vol["slices"] == vol["encoded_slices"] == 16 and vol["masks_s"] > 0
    assert vol["rss_milestones_mib"]["after_encode"] <= vol["rss_milestones_mib"]["end"]
    assert {t["target"].split(" (")[0] for t in data["targets"]} >= {"cached cold start"}


def test_load_timings_are_recorded_only_inside_recording():
    with phase("vision"):  # not recording: nothing to record into
        pass
    with recording() as timings:
        with phase("llm"):
            with phase("hashing"):
                pass
            with phase("hashing"):
                pass
    with phase("optimise"):
        pass
    assert set(timings.seconds) == {"llm", "hashing"}
    assert timings.calls == {"llm": 1, "hashing": 2}
    assert timings.seconds["llm"] >= timings.seconds["hashing"] >= 0


@pytest.mark.parametrize("args, message", [
    (["--engine", "--workloads", "slice,nonsense"], "unknown engine workload"),
    (["--engine", "--plots", "out"], "--plots: not for --engine"),
    (["--engine", "--base"], "--base: not for --engine"),
    (["--engine", "--retries", "-1"], "--retries"),
    (["--workloads", "slice,nonsense"], "unknown workload"),
    (["--workloads", "server", "--no-server"], "leaves no workload"),
    (["--repeats", "0"], "--repeats"),
    (["--model", "tiny", "--config", "x.toml"], "--config applies to --model bundled"),
    (["--base", "--config", "missing.toml"], "config file not found"),
    (["--config", "other.toml"], "--config applies to --base"),
    (["--checkpoint", "."], "not a MedSegR checkpoint"),
])
def test_bench_bad_input(args, message, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_refuses_unusable_outputs(tmp_path: Path, capsys):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["bench", "--json", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
    plain = tmp_path / "plain-file"
    plain.write_text("x", encoding="utf-8")
    assert main(["bench", "--plots", str(plain)]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("workloads, engine_tables", [(("http",), False), (("slice",), True)])
def test_the_engine_report_shows_the_engine_tables_only_when_they_ran(workloads, engine_tables):
    """Asking for the HTTP workload alone gives its own section, not empty engine tables
    and n/a targets; an engine workload that failed is reported as missing."""
    from medsegr.bench.engine_report import machine_facts, render, summarise
    from medsegr.bench.engine_runner import EngineBench, EngineOptions
    from medsegr.bench.machine import host_facts

    options = EngineOptions(quick=True, model="tiny", workloads=workloads)
    bench = EngineBench(options=options, plan=options.plan())  # no run finished
    text = render(bench, summarise(bench), machine_facts(host_facts(), bench))
    assert ("### Results" in text) is engine_tables and ("### Targets" in text) is engine_tables
    assert ("**Plan**" in text) is engine_tables
    assert ("Missing (worker failed): 3. slice question" in text) is engine_tables
