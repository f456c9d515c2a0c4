"""The dataset record format: parsing, the loader training uses, atomic writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsegr.data.records import (DatasetError, MaskRef, Record, SnomedCode, Turn, VolumeCache,
                                  check_answer_markers, iter_records, load_dataset, parse_record, write_split)
from medsegr.data.writer import DatasetWriter, pack_layers
from medsegr.errors import InputError
from medsegr.io.images import image_from_array, load_image

WINDOWS = ("soft_tissue", "bone", "wide")


def make_record(**changes) -> dict:
    record = {
        "id": "r1", "subject": "s1", "source": "test", "image": "images/a.nii.gz", "modality": "CT",
        "window": "bone", "axis": "axial", "slice": 1,
        "masks": [{"key": "bone", "file": "labels/a.nii.gz", "label": 1, "name": "bone",
                   "snomed": {"code": "272673000", "meaning": "Bone"}},
                  {"key": "body", "file": "labels/a.nii.gz", "label": 2, "name": "body"}],
        "conversation": [
            {"question": "Segment the bone.", "type": "explicit", "answer": "The <p>bone</p> [SEG].",
             "masks": ["bone"]},
            {"question": "And the body?", "type": "multi-turn",
             "answer": "The <p>body</p> [SEG] and the <p>bone</p>\n[SEG] again.", "masks": ["body", "bone"]},
            {"question": "Segment the liver.", "type": "absent", "answer": "No liver here.", "masks": []},
        ],
        "attributes": {"note": 1},
    }
    record.update(changes)
    return record


def test_round_trip_keeps_every_field():
    record, problems = parse_record(make_record(extra_field={"kept": True}), window_names=WINDOWS)
    assert problems == [] and record is not None
    assert record.masks[0].snomed == SnomedCode("272673000", "Bone")
    assert record.seg_keys == ["bone", "body", "bone"]
    again, problems = parse_record(json.loads(record.to_line()), window_names=WINDOWS)
    assert problems == [] and again == record
    assert json.loads(record.to_line())["extra_field"] == {"kept": True}


@pytest.mark.parametrize("change, expected", [
    ({"id": 5}, "'id' must be a string"),
    ({"slice": -1}, "'slice' must be >= 0"),
    ({"slice": True}, "'slice' must be an integer"),
    ({"modality": "PET"}, "unknown modality"),
    ({"window": "sunset"}, "unknown window"),
    ({"axis": "oblique"}, "unknown axis"),
    ({"image": "../outside.nii.gz"}, "escapes the dataset folder"),
    ({"image": "/etc/passwd"}, "is absolute"),
    ({"image": "C:/data/x.nii"}, "is absolute"),
    ({"masks": "bone"}, "'masks' must be a list"),
    ({"conversation": []}, "'conversation' is empty"),
    ({"attributes": [1]}, "'attributes' must be an object"),
])
def test_bad_fields_are_named(change, expected):
    record, problems = parse_record(make_record(**change), window_names=WINDOWS)
    assert record is None
    assert any(expected in p for p in problems), problems


def test_every_problem_of_a_record_is_listed():
    raw = make_record(modality="XR", slice="ten")
    raw["masks"][0]["label"] = 0
    raw["conversation"][0]["masks"] = ["liver"]
    raw["conversation"][1]["type"] = "chat"
    del raw["subject"]
    record, problems = parse_record(raw, window_names=WINDOWS)
    assert record is None
    text = "\n".join(problems)
    for expected in ("missing field 'subject'", "unknown modality", "'slice' must be an integer",
                     "'label' must be >= 1", "unknown mask key 'liver'", "unknown type 'chat'"):
        assert expected in text
    assert len(problems) >= 6


@pytest.mark.parametrize("answer, count, expected", [
    ("The <p>bone</p> [SEG].", 1, None),
    ("<p>a</p> [SEG] and <p>b</p>[SEG]", 2, None),
    ("The <p>bone</p> [SEG].", 2, "1 [SEG] marker(s) but 2 mask(s)"),
    ("The bone [SEG].", 1, "does not directly follow <p>name</p>"),
    ("<p>bone</p> is here [SEG]", 1, "does not directly follow"),
    ("<p></p> [SEG]", 1, "empty <p></p>"),
    ("No <p>liver</p> here.", 0, "is not followed by [SEG]"),
    ("<p>bone [SEG]", 1, "unbalanced"),
])
def test_seg_markers(answer, count, expected):
    problems = check_answer_markers(answer, count)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_turn_rules():
    raw = make_record()
    raw["conversation"][0]["type"] = "multi-turn"
    raw["conversation"][2]["masks"] = ["bone"]
    raw["conversation"][2]["answer"] = "The <p>bone</p> [SEG]."
    raw["conversation"][1]["question"] = "Now [SEG] it"
    _, problems = parse_record(raw, window_names=WINDOWS)
    text = "\n".join(problems)
    assert "first turn cannot be a 'multi-turn'" in text
    assert "an 'absent' answer binds only empty masks" in text
    assert "reserved marker [SEG]" in text


def test_an_absent_answer_binds_an_empty_mask_key_and_only_it_does():
    """An absent structure is named with a [SEG] bound to "absent:<name>" (no label
    map: empty by definition); the key is refused in any other kind of turn."""
    raw = make_record()
    raw["conversation"][2]["masks"] = ["absent:liver"]
    raw["conversation"][2]["answer"] = "Looking for the <p>liver</p> [SEG], not found on this slice."
    record, problems = parse_record(raw, window_names=WINDOWS)
    assert problems == [] and record is not None
    assert record.conversation[2].masks == ("absent:liver",)
    raw["conversation"][0]["masks"] = ["absent:liver"]
    raw["conversation"][0]["answer"] = "The <p>liver</p> [SEG]."
    _, problems = parse_record(raw, window_names=WINDOWS)
    assert any("'absent:liver' is only for 'absent' turns" in p for p in problems), problems


def test_window_only_for_ct():
    _, problems = parse_record(make_record(modality="MR"), window_names=WINDOWS)
    assert any("applies to CT only" in p for p in problems)


def test_iter_records_never_crashes_on_bad_lines(tmp_path):
    good = json.dumps(make_record())
    lines = [good.encode(), b"{not json", b"\xff\xfe bad utf8", b"[1, 2]", b'{"a": NaN}', b'{"a": 1, "a": 2}',
             b"", b"   ", b"[" * 100000, good.encode()]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines))
    seen = {line: (record, problems) for line, record, problems in iter_records(path, window_names=WINDOWS)}
    assert seen[1][0] is not None and seen[10][0] is not None
    assert "bad JSON" in seen[2][1][0]
    assert "not valid UTF-8" in seen[3][1][0]
    assert "must be a JSON object" in seen[4][1][0]
    assert "bad JSON" in seen[5][1][0] and "NaN" in seen[5][1][0]
    assert "duplicate key" in seen[6][1][0]
    assert 7 not in seen and 8 not in seen
    assert seen[9][0] is None and seen[9][1]


# --------------------------------------------------------------------------- a small real dataset


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """Two records on one real NIfTI volume and its label map, written by DatasetWriter."""
    out = tmp_path_factory.mktemp("ds") / "data"
    z, y, x = np.mgrid[0:4, 0:20, 0:24]
    body = ((y - 10) / 8.0) ** 2 + ((x - 12) / 10.0) ** 2 <= 1
    bone = body & ((y - 10) ** 2 + (x - 12) ** 2 <= 9)
    hu = np.where(body, 40.0, -1000.0) + np.where(bone, 700.0, 0.0)
    image = image_from_array(hu.astype(np.float32), spacing=(0.8, 0.9, 3.0), origin=(5.0, -3.0, 10.0),
                             modality="CT")
    with DatasetWriter(out) as writer:
        writer.write_image("images/a.nii.gz", image)
        where = writer.write_masks("labels/a", image, {"body": body, "bone": bone})
        assert where == {"body": ("labels/a-0.nii.gz", 1), "bone": ("labels/a-1.nii.gz", 1)}
        for number, axis in enumerate(("axial", "coronal")):
            raw = make_record(id=f"r{number}", axis=axis, slice=1 if axis == "axial" else 10)
            raw["masks"] = [{"key": k, "file": f, "label": v, "name": k} for k, (f, v) in where.items()]
            record, problems = parse_record(raw, window_names=WINDOWS)
            assert not problems
            writer.add("train", record)
        writer.commit({"builder": "test"})
    return out


def test_load_dataset_and_masks(small_dataset):
    records = load_dataset(small_dataset, "train")
    assert [r.id for r in records] == ["r0", "r1"]
    first, second = records
    assert first.image_path == small_dataset / "images" / "a.nii.gz"
    cache = VolumeCache()
    assert first.load_image(cache) is second.load_image(cache)  # one volume loaded once
    masks = first.mask_arrays(cache)
    assert masks["bone"].dtype == bool and masks["bone"].shape == (4, 20, 24)
    assert np.all(first.load_image(cache).array[masks["bone"]] > 500)
    pixels, shown = first.load_slice(cache)
    assert pixels.shape == (20, 24) and shown["body"].shape == (20, 24)
    pixels, shown = second.load_slice(cache)  # coronal: rows = superior -> inferior
    assert pixels.shape == (4, 24) and shown["bone"].any()
    info = json.loads((small_dataset / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["records"] == {"train": 2} and info["subjects"] == {"train": ["s1"]}


def test_load_dataset_errors(small_dataset, tmp_path):
    with pytest.raises(DatasetError, match="split file val.jsonl not found"):
        load_dataset(small_dataset, "val")
    with pytest.raises(DatasetError, match="bad split name"):
        load_dataset(small_dataset, "../train")
    broken = tmp_path / "broken"
    broken.mkdir()
    good = (small_dataset / "train.jsonl").read_text(encoding="utf-8").splitlines()[0]
    missing = json.loads(good)
    missing["id"] = "r9"
    missing["image"] = "images/none.nii.gz"
    (broken / "train.jsonl").write_text("\n".join([good, "{oops", good, json.dumps(missing)]) + "\n")
    with pytest.raises(DatasetError) as info:
        load_dataset(broken, "train")
    text = str(info.value)
    assert "train.jsonl:2: bad JSON" in text
    assert "train.jsonl:3: duplicate id 'r0'" in text
    assert "train.jsonl:4: file 'images/none.nii.gz' does not exist" in text
    assert isinstance(info.value, InputError) and info.value.code == "bad_dataset"


def test_write_split_is_atomic(tmp_path):
    record = Record(id="x", subject="s", source="", image="a.nrrd", modality="MR", window=None, axis=None,
                    slice=None, masks=[MaskRef("m", "l.nrrd", 1, "m")],
                    conversation=[Turn("Segment m.", "explicit", "<p>m</p> [SEG]", ("m",))])
    write_split(tmp_path, "train", [record])
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]
    assert json.loads((tmp_path / "train.jsonl").read_text(encoding="utf-8"))["id"] == "x"


def test_writer_refuses_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(InputError, match="exists and is not empty"):
        DatasetWriter(out)
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "new") as writer:
            writer.write_image("images/a.nrrd", image_from_array(np.zeros((3, 3), np.float32)))
            raise RuntimeError("builder failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder, no partial output
    record = Record(id="a", subject="same", source="", image="a.nrrd", modality="MR", window=None, axis=None,
                    slice=None, masks=[], conversation=[Turn("Segment the liver.", "absent", "None.", ())])
    other = Record(**{**record.__dict__, "id": "b"})
    with DatasetWriter(tmp_path / "split") as writer:
        writer.add("train", record)
        writer.add("test", other)
        with pytest.raises(DatasetError, match="subject 'same' is also in train.jsonl"):
            writer.commit({})
    assert not (tmp_path / "split").exists()
    with DatasetWriter(out, overwrite=True) as writer:
        writer.add("train", record)
        writer.commit({})
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json", "train.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_pack_layers_keeps_overlaps_apart():
    a = np.zeros((1, 4, 4), bool)
    a[0, :2] = True
    b = np.zeros_like(a)
    b[0, 2:] = True
    c = a | b
    layers = pack_layers({"a": a, "b": b, "c": c})
    assert [keys for _, keys in layers] == [{"a": 1, "b": 2}, {"c": 1}]
    for key, mask in {"a": a, "b": b, "c": c}.items():
        labels, keys = next((lab, k) for lab, k in layers if key in k)
        assert np.array_equal(labels == keys[key], mask)


def test_labels_written_on_the_image_grid(small_dataset):
    image = load_image(small_dataset / "images" / "a.nii.gz")
    labels = load_image(small_dataset / "labels" / "a-1.nii.gz")
    assert labels.shape == image.shape
    assert np.allclose(labels.spacing, image.spacing) and np.allclose(labels.origin, image.origin)
