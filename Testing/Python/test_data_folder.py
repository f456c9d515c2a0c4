"""Building a dataset from a user's folder: MSD, nnU-Net v2, TotalSegmentator and
label-table layouts written as real NIfTI/NRRD files; clear errors for broken input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsegr.cli.commands import main
from medsegr.data.folder import FolderOptions, build_folder, discover
from medsegr.data.labeltables import read_label_table
from medsegr.data.phantoms import draw_phantom
from medsegr.data.records import DatasetError, VolumeCache, is_absent_key, load_dataset
from medsegr.data.validate import check_dataset
from medsegr.errors import InputError
from medsegr.io.images import image_from_array, write_image

ORGANS = ("liver", "spleen", "left_kidney", "right_kidney")


def _cases(count: int, seed: int):
    """Small CT-like volumes with a label map: liver 1, spleen 2, left kidney 3, right kidney 4,
    liver lesions 5."""
    for index in range(count):
        phantom = draw_phantom("ct-abdomen", np.random.default_rng(seed + index), slices=3, size=192)
        image = image_from_array(phantom.array, spacing=phantom.spacing, origin=(10.0, -20.0, 5.0), modality="CT")
        labels = np.zeros(phantom.array.shape, np.uint8)
        for value, key in enumerate(ORGANS, start=1):
            labels[phantom.masks[key]] = value
        if "liver_lesions" in phantom.masks:
            labels[phantom.masks["liver_lesions"]] = 5
        yield f"case_{index:03d}", image, labels


def _msd(root: Path, count: int = 3) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for name, image, labels in _cases(count, 0):
        write_image(root / "imagesTr" / f"{name}.nii.gz", image)
        write_image(root / "labelsTr" / f"{name}.nii.gz", image.to_sitk(labels))
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Abdomen", "modality": {"0": "CT"}, "training": training, "test": [],
        "labels": {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_left", "4": "Kidney (R)",
                   "5": "liver tumour"}}))
    return root


def test_msd_layout(tmp_path):
    source = _msd(tmp_path / "msd")
    out = tmp_path / "out"
    assert main(["data", "build", "folder", str(source), "--out", str(out), "--slices", "2", "--quiet"]) == 0
    report = check_dataset(out)
    assert report.ok, report.problems[:5]
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["layout"] == "msd" and info["modality"] == "CT"
    assert sorted(len(v) for v in info["subjects"].values()) == [1, 1, 1]
    records = [r for s in ("train", "val", "test") for r in load_dataset(out, s)]
    keys = {m.key: m for r in records for m in r.masks}
    assert {"liver", "spleen", "left_kidney", "right_kidney"} <= set(keys)
    assert keys["left_kidney"].snomed.modifier.meaning == "Left"
    assert {r.modality for r in records} == {"CT"}
    assert {r.axis for r in records} == {"axial", "coronal", "sagittal"}
    # the written masks are the source labels, voxel for voxel
    cache = VolumeCache()
    record = next(r for r in records if r.subject == "case_000")
    masks = record.mask_arrays(cache)
    source_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "labelsTr" / "case_000.nii.gz")))
    assert np.array_equal(masks["liver"], source_labels == 1)
    lesion_keys = [k for k in masks if k.startswith("liver_tumo")]
    if (source_labels == 5).any():
        assert lesion_keys and np.array_equal(masks[lesion_keys[0]], source_labels == 5)


def test_nnunet_v2_layout_with_channels_and_regions(tmp_path):
    root = tmp_path / "nnunet"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name, image, labels in _cases(3, 10):
        write_image(root / "imagesTr" / f"{name}_0000.nii.gz", image)
        write_image(root / "imagesTr" / f"{name}_0001.nii.gz", image)
        write_image(root / "labelsTr" / f"{name}.nii.gz", image.to_sitk(labels))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "CT"}, "file_ending": ".nii.gz", "numTraining": 3,
        "labels": {"background": 0, "liver": [1, 5], "spleen": 2, "kidneys": [3, 4]}}))
    layout = discover(root, FolderOptions())
    assert layout.name == "nnunet-v2" and layout.cases[0].image.name.endswith("_0000.nii.gz")
    out = build_folder(root, tmp_path / "out", FolderOptions(slices=1, axes=("axial",)))
    assert check_dataset(out).ok
    records = load_dataset(out, "train")
    cache = VolumeCache()
    masks = records[0].mask_arrays(cache)
    assert set(masks) >= {"liver", "kidneys"}
    assert masks["kidneys"].sum() > 0


def test_msd_four_d_image_uses_the_chosen_channel(tmp_path):
    root = tmp_path / "brats"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    z, y, x = np.mgrid[0:4, 0:40, 0:36]
    brain = ((y - 20) / 16) ** 2 + ((x - 18) / 14) ** 2 <= 1
    tumour = brain & ((y - 16) ** 2 + (x - 14) ** 2 <= 16)
    channels = [sitk.GetImageFromArray((brain * 500.0 + tumour * 300.0 * (c + 1)).astype(np.float32))
                for c in range(2)]
    four_d = sitk.JoinSeries(channels)
    sitk.WriteImage(four_d, str(root / "imagesTr" / "b1.nii.gz"))
    labels = sitk.GetImageFromArray(tumour.astype(np.uint8))
    labels.CopyInformation(channels[0])
    sitk.WriteImage(labels, str(root / "labelsTr" / "b1.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "enhancing tumour"},
        "training": [{"image": "./imagesTr/b1.nii.gz", "label": "./labelsTr/b1.nii.gz"}]}))
    out = build_folder(root, tmp_path / "out", FolderOptions(channel=1, slices=1, val_fraction=0,
                                                             test_fraction=0))
    assert check_dataset(out).ok
    record = load_dataset(out, "train")[0]
    assert record.modality == "MR"
    image = record.load_image(VolumeCache())
    assert image.shape == (4, 40, 36) and image.array.max() == pytest.approx(500 + 600)
    assert record.masks[0].name == "enhancing tumour"


def test_totalsegmentator_layout(tmp_path):
    root = tmp_path / "ts"
    for name, image, labels in _cases(3, 20):
        folder = root / name / "segmentations"
        folder.mkdir(parents=True)
        write_image(root / name / "ct.nii.gz", image)
        for value, structure in enumerate(("liver", "spleen", "kidney_left", "kidney_right", "gallbladder"),
                                          start=1):
            write_image(folder / f"{structure}.nii.gz", image.to_sitk((labels == value).astype(np.uint8)))
    # enough conversations that absent questions come up among the other kinds
    out = build_folder(root, tmp_path / "out", FolderOptions(slices=1, axes=("axial",),
                                                             conversations_per_slice=8))
    assert check_dataset(out).ok
    records = [r for s in ("train", "val", "test") for r in load_dataset(out, s)]
    assert all(r.source == "folder-totalsegmentator" for r in records)
    answers = [t for r in records for t in r.conversation if t.type == "absent"]
    assert answers  # the gallbladder (never labelled here) and structures off the slice
    # each is named with a [SEG] bound to an empty mask ("absent:<name>"), or has none
    assert all(all(is_absent_key(k) for k in t.masks) for t in answers)


def test_label_table_layout_csv_and_colour_table(tmp_path):
    root = tmp_path / "plain"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name, image, labels in _cases(2, 30):
        write_image(root / "images" / f"{name}.nrrd", image)
        write_image(root / "labels" / f"{name}.nrrd", image.to_sitk(labels))
    (root / "labels.csv").write_text("label,name,snomed\n0,background,\n1,Liver,10200004\n2,spleen,\n"
                                     "3,left kidney,\n4,right kidney,\n")
    out = build_folder(root, tmp_path / "out", FolderOptions(slices=1, axes=("axial", "coronal")))
    assert check_dataset(out).ok
    table = tmp_path / "colours.ctbl"
    table.write_text("# Slicer colour table\n0 Background 0 0 0 0\n1 liver 255 0 0 255\n2 spleen 0 255 0 255\n", encoding="utf-8")
    entries = read_label_table(table)
    assert [(e.name, e.values) for e in entries] == [("liver", (1,)), ("spleen", (2,))]


def test_broken_input_is_refused_with_every_problem(tmp_path):
    source = _msd(tmp_path / "msd")
    shifted = sitk.ReadImage(str(source / "labelsTr" / "case_001.nii.gz"))
    shifted.SetSpacing((2.0, 2.0, 9.0))
    sitk.WriteImage(shifted, str(source / "labelsTr" / "case_001.nii.gz"))
    (source / "imagesTr" / "case_002.nii.gz").write_bytes(b"\x1f\x8b\x08 broken")
    with pytest.raises(DatasetError) as info:
        build_folder(source, tmp_path / "out", FolderOptions(slices=1))
    text = str(info.value)
    assert "case_001" in text and "not on the image's grid" in text
    assert "case_002" in text and "could not read image" in text
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["msd"]


@pytest.mark.parametrize("setup, message", [
    (lambda r: None, "no known layout"),
    (lambda r: (r / "dataset.json").write_text("{"), "cannot read"),
    (lambda r: (r / "dataset.json").write_text(json.dumps({"name": "x"})), "has no 'labels'"),
    (lambda r: (r / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}})),
     "names no structure"),
    (lambda r: (r / "labels.csv").write_text("label,name\n1,liver\n"), "images go in images/"),
    (lambda r: (r / "labels.csv").write_text("value;thing\n"), "needs a 'label' and a 'name' column"),
    (lambda r: (r / "labels.csv").write_text("1,liver\n2,Liver\n"), "used twice"),
])
def test_bad_layouts(tmp_path, setup, message):
    root = tmp_path / "src"
    root.mkdir()
    setup(root)
    with pytest.raises(InputError, match=message):
        discover(root, FolderOptions())


def test_cli_errors(tmp_path, capsys):
    assert main(["data", "build", "folder", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "source folder does not exist" in capsys.readouterr().err
    assert main(["data", "build", "folder", str(tmp_path), "--out", str(tmp_path / "o"), "--axes", "oblique"]) == 2
    assert "unknown plane" in capsys.readouterr().err
