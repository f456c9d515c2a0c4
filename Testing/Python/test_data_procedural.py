"""Procedural phantoms: valid datasets, deterministic, patient sides right whatever the
storage order, lesions inside their organs, reasoning conversations."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medsegr.cli.commands import main
from medsegr.data.phantoms import KINDS, draw_phantom
from medsegr.data.procedural import ProceduralOptions, build_procedural, split_plan
from medsegr.data.records import VolumeCache, absent_name, check_answer_markers, is_absent_key, load_dataset
from medsegr.data.validate import check_dataset
from medsegr.prompts import segment_names

COUNT = 16


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("proc") / "data"
    assert main(["data", "build", "procedural", "--out", str(out), "--count", str(COUNT), "--seed", "3",
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def records(built):
    return [r for split in ("train", "val", "test") if (built / f"{split}.jsonl").exists()
            for r in load_dataset(built, split)]


def test_dataset_is_valid_and_split_by_subject(built, records):
    report = check_dataset(built)
    assert report.ok, report.problems[:10]
    info = json.loads((built / "dataset_info.json").read_text(encoding="utf-8"))
    subjects = info["subjects"]
    assert sum(len(v) for v in subjects.values()) == COUNT
    owners = Counter(s for names in subjects.values() for s in names)
    assert max(owners.values()) == 1
    assert {r.attributes["kind"] for r in records} == set(KINDS)
    assert "test" in subjects and len(subjects["test"]) >= 1


def test_same_seed_same_dataset(built, tmp_path):
    """Another process (other hash seed), one worker instead of two: the same dataset."""
    import os
    import subprocess
    import sys

    again = tmp_path / "again"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-m", "medsegr.cli", "data", "build", "procedural", "--out", str(again),
                           "--count", str(COUNT), "--seed", "3", "--workers", "1", "--quiet"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for split in ("train", "val", "test"):
        first, second = built / f"{split}.jsonl", again / f"{split}.jsonl"
        assert first.exists() == second.exists()
        if first.exists():
            assert first.read_text(encoding="utf-8") == second.read_text(encoding="utf-8")
    cache = VolumeCache()
    one = load_dataset(built, "train")[0]
    two = load_dataset(again, "train")[0]
    assert np.array_equal(one.load_image(cache).array, two.load_image(cache).array)
    other = tmp_path / "other"
    build_procedural(other, ProceduralOptions(count=4, seed=4, workers=1))
    assert (other / "train.jsonl").read_text(encoding="utf-8") != (built / "train.jsonl").read_text(encoding="utf-8")


def _physical_x(record, mask: np.ndarray, cache: VolumeCache) -> float:
    """Mean LPS x (positive = patient left) of a mask's voxels."""
    geometry = record.load_image(cache).geometry
    k, j, i = np.nonzero(mask)
    points = geometry.ijk_to_lps() @ np.stack([i, j, k, np.ones_like(i)]).astype(float)
    return float(points[0].mean())


def test_patient_left_is_left_in_space_and_on_the_image_right(records):
    cache = VolumeCache()
    pairs = [("left_kidney", "right_kidney"), ("left_lung", "right_lung"),
             ("left_cerebral_hemisphere", "right_cerebral_hemisphere")]
    checked = 0
    storages = set()
    for record in records:
        keys = {m.key for m in record.masks}
        for left, right in pairs:
            if left in keys and right in keys:
                volume = record.mask_arrays(cache)
                assert _physical_x(record, volume[left], cache) > _physical_x(record, volume[right], cache)
                _, shown = record.load_slice(cache)
                assert np.nonzero(shown[left])[1].mean() > np.nonzero(shown[right])[1].mean()
                storages.add(json.dumps(record.attributes["storage"], sort_keys=True))
                checked += 1
    assert checked >= 5
    assert len(storages) >= 3  # several storage orders (permutations, flips, tilts) were exercised


def test_lesions_lie_inside_their_organs(records):
    cache = VolumeCache()
    seen = 0
    for record in records:
        masks = record.mask_arrays(cache)
        for key, mask in masks.items():
            if key.endswith("_lesions"):
                host = masks[key[: -len("_lesions")]]
                assert np.all(host[mask])
                seen += 1
    assert seen >= 2


def test_conversations(records):
    types = Counter(t.type for r in records for t in r.conversation)
    reasoning = Counter(t.reasoning for r in records for t in r.conversation)
    assert set(types) == {"explicit", "implicit", "multi-turn", "absent"}
    assert {"laterality", "function", "lesion"} <= set(reasoning)
    for record in records:
        assert record.conversation[0].type != "multi-turn"
        segmented: list[str] = []
        names = {m.key: m.name for m in record.masks}
        for turn in record.conversation:
            assert check_answer_markers(turn.answer, len(turn.masks)) == []
            # the pipeline names each segment from its <p>...</p>: it is the mask's name
            assert segment_names(turn.answer, "[SEG]") == [
                absent_name(k) if is_absent_key(k) else names[k] for k in turn.masks]
            assert len(turn.answer.split()) <= 32, turn.answer
            assert not set(turn.masks) & set(segmented), "a follow-up repeats a mask"
            segmented.extend(turn.masks)
        attributes = record.attributes
        assert attributes["generator"] == "procedural" and "storage" in attributes


def test_laterality_answers_match_the_masks(records):
    for record in records:
        for turn in record.conversation:
            if turn.reasoning != "laterality" or turn.type != "implicit":
                continue
            key = turn.masks[0]
            side = key.split("_")[0]
            if "patient's" in turn.question:
                assert f"patient's {side}" in turn.question
            else:
                image_side = "right" if side == "left" else "left"
                assert image_side in turn.question


def test_phantoms_vary_and_keep_contrasts():
    sizes, hus = set(), []
    for seed in range(6):
        phantom = draw_phantom("ct-abdomen", np.random.default_rng(seed), slices=1)
        sizes.add(phantom.array.shape)
        hus.append(float(phantom.array[0][phantom.masks["liver"][0]].mean()))
        assert phantom.array.shape[1] >= 192
        body = phantom.masks["body"][0]
        assert phantom.array[0][~body].mean() < -900  # air outside the body
        assert np.median(phantom.array[0][phantom.masks["bone"][0]]) > 200
    assert len(sizes) >= 2 and np.ptp(hus) > 5
    brain = draw_phantom("mr-brain", np.random.default_rng(1), slices=1)
    grey = brain.array[0][brain.masks["grey_matter"][0]].mean()
    white = brain.array[0][brain.masks["white_matter"][0]].mean()
    if brain.sequence == "T1":
        assert white > grey
    else:
        assert grey > white


def test_split_plan_is_stratified():
    plan = split_plan(40, 0, 0.1, 0.1)
    assert Counter(kind for kind, _ in plan) == {"ct-abdomen": 14, "ct-chest": 10, "mr-brain": 8, "mr-abdomen": 8}
    for kind in KINDS:
        assert any(k == kind and s == "test" for k, s in plan)


def test_bad_options(tmp_path, capsys):
    assert main(["data", "build", "procedural", "--out", str(tmp_path / "x"), "--count", "0"]) == 2
    assert "--count must be at least 1" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x", encoding="utf-8")
    assert main(["data", "build", "procedural", "--out", str(tmp_path / "full"), "--count", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
