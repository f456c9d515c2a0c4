"""Choosing [model] presence_threshold from generated validation answers
(medsegr.evaluation.presence_threshold): which [SEG]s count, the sweep, the choice, and
the command's errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from medsegr.evaluation.presence_threshold import choose, presence_rows, sweep


def report() -> dict:
    turns = [
        # absent questions: one hallucinated [SEG] (0.3), one without [SEG], one sure (0.9)
        {"absent_ok": False, "expected": [], "seg_names": ["liver"], "presence": [0.3]},
        {"absent_ok": True, "expected": [], "seg_names": [], "presence": []},
        {"absent_ok": False, "expected": [], "seg_names": ["kidneys"], "presence": [0.9]},
        # present: the rightly named [SEG]s count (0.8, 0.6); a wrong name does not (0.1)
        {"absent_ok": None, "expected": ["left kidney"], "seg_names": ["left kidney"], "presence": [0.8]},
        {"absent_ok": None, "expected": ["brain", "head"], "seg_names": ["brain", "skull"],
         "presence": [0.6, 0.1]},
    ]
    return {"split": "val", "dataset": "d", "turns": turns}


def test_the_rows_count_absent_answers_and_rightly_named_present_segs():
    absent, present = presence_rows(report())
    assert absent == [[0.3], [], [0.9]]
    assert sorted(present) == [0.6, 0.8]


def test_the_sweep_and_the_choice():
    absent, present = presence_rows(report())
    rows = {r["threshold"]: r for r in sweep(absent, present)}
    assert rows[0.25]["absent_declined"] == round(1 / 3, 4) and rows[0.25]["present_kept"] == 1.0
    assert rows[0.5]["absent_declined"] == round(2 / 3, 4) and rows[0.5]["present_kept"] == 1.0
    assert rows[0.7]["present_kept"] == 0.5
    # 0.35 .. 0.6 all score 2/3 + 1: the middle of the tie (of six, the fourth)
    assert choose(list(rows.values())) == 0.5


def test_the_command_prints_the_table_and_refuses_a_report_without_presence(tmp_path: Path):
    good = tmp_path / "eval.json"
    good.write_text(json.dumps(report()))
    out = tmp_path / "choice.json"
    done = subprocess.run([sys.executable, "-m", "medsegr.evaluation.presence_threshold", str(good),
                           "--json", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "<- chosen" in done.stdout and json.loads(out.read_text())["chosen"] == 0.5
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"turns": [{"absent_ok": True, "expected": []}]}))
    done = subprocess.run([sys.executable, "-m", "medsegr.evaluation.presence_threshold", str(old)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "both are needed" in done.stderr


def test_the_chosen_threshold_is_written_into_a_checkpoint_config(tmp_path: Path):
    from medsegr.evaluation.presence_threshold import main

    good = tmp_path / "eval.json"
    good.write_text(json.dumps(report()))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "medsegr_config.json").write_text(json.dumps(
        {"format": 1, "config": {"model": {"presence_threshold": 0.5}}, "training": {"steps": 3}}))
    assert main([str(good), "--write", str(ckpt)]) == 0
    data = json.loads((ckpt / "medsegr_config.json").read_text())
    assert data["config"]["model"]["presence_threshold"] == 0.5  # the middle of the tie
    evidence = data["training"]["presence_threshold"]
    assert evidence["threshold"] == 0.5 and evidence["split"] == "val" and data["training"]["steps"] == 3
    assert main([str(good), "--write", str(tmp_path / "missing")]) == 2
