"""``medsegr bench``: the CI smoke run (tiny model, ``--quick``, every workload, the real
engine server on loopback) and its bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medsegr.cli.commands import main

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


@pytest.mark.parametrize("args, message", [
    (["--workloads", "slice,nonsense"], "unknown workload"),
    (["--workloads", "server", "--no-server"], "leaves no workload"),
    (["--repeats", "0"], "--repeats"),
    (["--model", "tiny", "--config", "x.toml"], "--config applies to --model bundled"),
    (["--base", "--config", "missing.toml"], "config file not found"),
    (["--config", "other.toml"], "--config applies to --base"),
    (["--checkpoint", "."], "not a MedSegR checkpoint folder"),
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
