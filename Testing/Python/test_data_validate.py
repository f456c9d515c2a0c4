"""``medsegr data check``: every broken record reported with file and line; exit 0 or 2."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

from medsegr.cli.commands import main
from medsegr.data.validate import check_dataset
from medsegr.io.images import image_from_array, write_image


def _record(**changes) -> dict:
    record = {
        "id": "vol-ax-2", "subject": "vol", "source": "test", "image": "images/vol.nii.gz", "modality": "MR",
        "window": None, "axis": "axial", "slice": 2,
        "masks": [{"key": "brain", "file": "labels/vol.nii.gz", "label": 1, "name": "brain",
                   "snomed": {"code": "12738006", "meaning": "Brain"}},
                  {"key": "skull", "file": "labels/vol.nii.gz", "label": 2, "name": "skull"}],
        "conversation": [
            {"question": "Which organ controls thought? Segment it.", "type": "implicit",
             "answer": "That is the <p>brain</p> [SEG], inside the skull.", "masks": ["brain"]},
            {"question": "Now the bone around it.", "type": "multi-turn", "answer": "The <p>skull</p> [SEG].",
             "masks": ["skull"]},
            {"question": "Segment the liver.", "type": "absent", "answer": "There is no liver in a head scan.",
             "masks": []}],
        "attributes": {},
    }
    record.update(changes)
    return record


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A clean dataset: a 3-D MR volume with a label map, and a 2-D CT picture with one."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    z, y, x = np.mgrid[0:6, 0:32, 0:28]
    head = ((y - 16) / 14.0) ** 2 + ((x - 14) / 12.0) ** 2 <= 1
    brain = ((y - 16) / 11.0) ** 2 + ((x - 14) / 9.0) ** 2 <= 1
    brain[0] = False  # no brain on the first slice
    image = image_from_array(np.where(brain, 600.0, np.where(head, 200.0, 0.0)).astype(np.float32),
                             spacing=(1.0, 1.0, 2.5), origin=(-14.0, -16.0, 0.0), modality="MR")
    labels = np.where(brain, 1, np.where(head, 2, 0)).astype(np.uint8)
    write_image(root / "images" / "vol.nii.gz", image)
    write_image(root / "labels" / "vol.nii.gz", image.to_sitk(labels))
    ct = image_from_array(np.where(head[0], 40.0, -1000.0).astype(np.float32), spacing=(0.7, 0.7), modality="CT")
    write_image(root / "images" / "ct.nrrd", ct)
    write_image(root / "labels" / "ct.nrrd", ct.to_sitk(head[:1].astype(np.uint8)))
    ct_record = _record(id="ct", subject="ct", image="images/ct.nrrd", modality="CT", window="soft_tissue",
                        axis=None, slice=None,
                        masks=[{"key": "body", "file": "labels/ct.nrrd", "label": 1, "name": "body"}],
                        conversation=[{"question": "Segment the body.", "type": "explicit",
                                       "answer": "The <p>body</p> [SEG].", "masks": ["body"]}])
    write_lines(root / "train.jsonl", [_record(), _record(id="vol-ax-3", slice=3)])
    write_lines(root / "test.jsonl", [ct_record])
    return root


def write_lines(path: Path, items: list) -> None:
    lines = [item if isinstance(item, (str, bytes)) else json.dumps(item) for item in items]
    data = b"\n".join(line.encode() if isinstance(line, str) else line for line in lines) + b"\n"
    path.write_bytes(data)


def problems_of(root: Path, **kwargs) -> list[str]:
    return [str(p) for p in check_dataset(root, **kwargs).problems]


def test_clean_dataset_passes(dataset, capsys):
    report = check_dataset(dataset)
    assert report.ok, report.problems
    assert report.records == {"train": 2, "test": 1}
    assert main(["data", "check", str(dataset)]) == 0
    assert "OK: 3 records" in capsys.readouterr().err


def _replace_train(root: Path, *records) -> None:
    write_lines(root / "train.jsonl", list(records))


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r.update(image="images/missing.nii.gz"), "file 'images/missing.nii.gz' does not exist"),
    (lambda r: r.update(slice=6), "slice 6 is out of range along axial (0..5)"),
    (lambda r: r.update(slice=None), "'slice' is null but the image is 3-D"),
    (lambda r: r["masks"][1].update(label=7), "label 7 does not occur in 'labels/vol.nii.gz' (labels there: 1, 2)"),
    (lambda r: r.update(slice=0), "mask 'brain' is bound to a [SEG] but is empty on the record's slice"),
    (lambda r: r["conversation"][0].update(masks=[]), "the answer has 1 [SEG] marker(s) but 0 mask(s)"),
    (lambda r: r["conversation"][1].update(masks=["scalp"]), "unknown mask key 'scalp'"),
    (lambda r: r.update(image="../outside.nii.gz"), "escapes the dataset folder"),
    (lambda r: r["masks"][0].update(file="/abs/labels.nii.gz"), "is absolute"),
    (lambda r: r.pop("conversation"), "missing field 'conversation'"),
    (lambda r: r.update(modality=3), "'modality' must be a string"),
])
def test_each_problem_is_reported_with_its_line(dataset, mutate, expected):
    broken = _record(id="broken")
    mutate(broken)
    _replace_train(dataset, _record(), broken)
    problems = problems_of(dataset)
    assert any(p.startswith("train.jsonl:2: ") and expected in p for p in problems), problems
    assert not any(p.startswith("train.jsonl:1:") for p in problems)


def test_grid_mismatch_and_unreadable_file(dataset):
    other = image_from_array(np.zeros((6, 32, 28), np.float32), spacing=(1.0, 1.0, 3.0), origin=(-14.0, -16.0, 0.0))
    write_image(dataset / "labels" / "shifted.nii.gz", other.to_sitk(np.ones((6, 32, 28), np.uint8)))
    smaller = image_from_array(np.zeros((6, 30, 28), np.float32))
    write_image(dataset / "labels" / "small.nii.gz", smaller.to_sitk(np.ones((6, 30, 28), np.uint8)))
    (dataset / "labels" / "garbage.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (dataset / "labels" / "prob.nii.gz").write_bytes(b"")
    write_image(dataset / "labels" / "prob.nii.gz",
                image_from_array(np.full((6, 32, 28), 0.5, np.float32), spacing=(1.0, 1.0, 2.5),
                                 origin=(-14.0, -16.0, 0.0)))
    records = []
    for number, name in enumerate(("shifted", "small", "garbage", "prob")):
        record = _record(id=f"r{number}")
        record["masks"][1]["file"] = f"labels/{name}.nii.gz"
        records.append(record)
    _replace_train(dataset, *records)
    problems = problems_of(dataset)
    assert any(p.startswith("train.jsonl:1:") and "not on the image's grid: spacing" in p for p in problems)
    assert any(p.startswith("train.jsonl:2:") and "not on the image's grid: size (28, 30, 6)" in p for p in problems)
    assert any(p.startswith("train.jsonl:3:") and "cannot read 'labels/garbage.nii.gz'" in p for p in problems)
    assert any(p.startswith("train.jsonl:4:") and "non-integer values" in p for p in problems)


def test_symlink_out_of_the_root(dataset, tmp_path):
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes((dataset / "images" / "vol.nii.gz").read_bytes())
    os.symlink(outside, dataset / "images" / "link.nii.gz")
    _replace_train(dataset, _record(image="images/link.nii.gz"))
    problems = problems_of(dataset)
    assert any("leads out of the dataset folder" in p for p in problems), problems


def test_subject_in_two_splits_and_duplicate_ids(dataset):
    text = (dataset / "train.jsonl").read_text(encoding="utf-8")
    (dataset / "val.jsonl").write_text(text.splitlines()[1] + "\n", encoding="utf-8")
    problems = problems_of(dataset)
    assert any(p.startswith("val.jsonl:1:") and "subject 'vol' is also in train.jsonl (line 1)" in p for p in problems)
    assert any(p.startswith("val.jsonl:1:") and "duplicate id 'vol-ax-3'" in p for p in problems)


def test_every_broken_record_is_reported_and_bad_json_never_crashes(dataset, capsys):
    broken = copy.deepcopy(_record(id="b2"))
    broken["conversation"][0]["answer"] = "The brain [SEG]."
    lines = [_record(), b"{\"id\": ", broken, b"\xff\xfe", "[1]", _record(id="b6", slice=99), "",
             _record(id="ok")]
    write_lines(dataset / "train.jsonl", lines)
    report = check_dataset(dataset)
    lines_with_problems = {p.line for p in report.problems if p.file == "train.jsonl"}
    assert lines_with_problems == {2, 3, 4, 5, 6}
    assert report.broken_records == 5
    assert main(["data", "check", str(dataset)]) == 2
    captured = capsys.readouterr()
    assert "train.jsonl:2: bad JSON" in captured.out
    assert "problem(s) in 5 broken record(s)" in captured.err


def test_split_option_and_missing_folder(dataset, tmp_path, capsys):
    assert main(["data", "check", str(dataset), "--split", "test"]) == 0
    assert main(["data", "check", str(dataset), "--split", "val"]) == 2
    assert "val.jsonl: split file not found" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "check", str(empty)]) == 2
    assert "no split files" in capsys.readouterr().out


def test_no_images_mode_checks_existence_only(dataset):
    broken = _record(id="x", slice=99)
    broken["masks"][0]["file"] = "labels/none.nii.gz"
    _replace_train(dataset, broken)
    problems = problems_of(dataset, images=False)
    assert len(problems) == 1 and "file 'labels/none.nii.gz' does not exist" in problems[0]
