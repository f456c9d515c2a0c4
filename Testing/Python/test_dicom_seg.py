"""DICOM SEG output: `medsegr ask` on a DICOM CT series writes ``segmentation.dcm``
(highdicom) that references the source instances, holds the non-empty mask frames and
codes each segment; bad series and non-DICOM inputs give clear one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from helpers import force_seg, grounding_finds_everything
from medsegr import __version__, vocabulary
from medsegr.cli.commands import main
from medsegr.errors import InputError
from medsegr.io import dicom_seg
from medsegr.io.images import load_image

ROWS, COLUMNS, SLICES = 20, 24, 6
SPACING_MM, STEP_MM = (0.75, 0.8), 2.5


def write_ct_series(folder: Path, slices: int = SLICES, orientation=(1, 0, 0, 0, 1, 0),
                    series_uid: str | None = None, seed: int = 0) -> list[Path]:
    """A real CT series, one file per slice (CT Image Storage, explicit VR little endian).

    The file names run against the slice positions (the last file is the lowest slice)
    and instance numbers are shuffled, so only ImagePositionPatient gives the order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, frame = generate_uid(), generate_uid()
    series = series_uid or generate_uid()
    numbers = rng.permutation(slices) + 1
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, column)
    paths = []
    for k in range(slices):
        position = np.asarray([-12.0, 30.0, -40.0]) + k * STEP_MM * normal
        pixels = (rng.random((ROWS, COLUMNS)) * 1400 - 1000).astype(np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P001", "19700101", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20260101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series, 3
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.Manufacturer, ds.InstanceNumber = "Phantom", int(numbers[k])
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        ds.PixelSpacing = [f"{SPACING_MM[1]:g}", f"{SPACING_MM[0]:g}"]  # row spacing, column spacing
        ds.SliceThickness = f"{STEP_MM:g}"
        ds.Rows, ds.Columns, ds.SamplesPerPixel = ROWS, COLUMNS, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = pixels.tobytes()
        path = folder / f"img{slices - 1 - k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def series(tmp_path):
    folder = tmp_path / "ct"
    write_ct_series(folder)
    return folder


def _masks(shape):
    liver = np.zeros(shape, bool)
    liver[1:4, 4:12, 5:15] = True
    kidney = np.zeros(shape, bool)
    kidney[4, 10:14, 2:6] = True
    unknown = np.zeros(shape, bool)
    unknown[2, 0:3, 20:24] = True
    empty = np.zeros(shape, bool)
    return [("liver", liver), ("left kidney", kidney), ("odd blob", unknown), ("spleen", empty)]


def _slice_of(image: sitk.Image, dataset) -> int:
    """The slice index of a source instance in an image read by SimpleITK (by position)."""
    point = [float(v) for v in dataset.ImagePositionPatient]
    return image.TransformPhysicalPointToIndex(point)[2]


def _check_references(seg, folder: Path) -> dict[str, pydicom.Dataset]:
    sources = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in folder.iterdir())}
    first = next(iter(sources.values()))
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.PatientID == first.PatientID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == set(sources)
    return sources


def _frames_by_instance(seg) -> dict[tuple[str, int], np.ndarray]:
    """(source SOP instance UID, segment number) -> the frame's pixels."""
    frames = {}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    for index, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        identification = group.get("SegmentIdentificationSequence") or \
            seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence  # one segment: shared
        number = int(identification[0].ReferencedSegmentNumber)
        frames[(source, number)] = pixels[index]
    return frames


def test_writer_references_frames_and_codes(series, tmp_path):
    image = load_image(series)
    source = dicom_seg.read_series(series, image.geometry)
    itk = sitk.ReadImage([str(p) for p in source.files])
    # slice k of the image is the instance at k, whatever the file names say
    assert [_slice_of(itk, ds) for ds in source.datasets] == list(range(SLICES))
    for k, ds in enumerate(source.datasets):
        pixels = pydicom.dcmread(source.files[k]).pixel_array.astype(np.float32)
        np.testing.assert_array_equal(pixels, image.array[k])
    named = _masks(image.shape)
    target = tmp_path / "out.dcm"
    uncoded = dicom_seg.write_dicom_seg(target, source, [dicom_seg.SegmentInput(n, m) for n, m in named],
                                        checkpoint="/models/medsegr-ct-v2", fine_tuned=True)
    assert uncoded == ["odd blob"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    seg = hd.seg.segread(target)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    by_uid = _check_references(seg, series)
    # only non-empty frames: 3 liver slices + 1 kidney slice + 1 blob slice
    assert int(seg.NumberOfFrames) == 5
    frames = _frames_by_instance(seg)
    for (uid, number), pixels in frames.items():
        k = _slice_of(itk, by_uid[uid])
        np.testing.assert_array_equal(pixels.astype(bool), named[number - 1][1][k])
        assert pixels.any()
    for number, (_, mask) in enumerate(named, start=1):
        for k in range(SLICES):
            uid = source.instance_uids[k]
            assert ((uid, number) in frames) == bool(mask[k].any())
    # frame positions are the source slices' positions
    for group in seg.PerFrameFunctionalGroupsSequence:
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in by_uid[uid].ImagePositionPatient], atol=1e-3)
    # the same through highdicom's reader
    volume = seg.get_pixels_by_source_instance(source.instance_uids, assert_missing_frames_are_empty=True)
    for number, (_, mask) in enumerate(named, start=1):
        np.testing.assert_array_equal(volume[..., number - 1].astype(bool), mask)

    described = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert [described[i].SegmentLabel for i in (1, 2, 3, 4)] == ["liver", "left kidney", "odd blob", "spleen"]
    for number, (name, _) in enumerate(named, start=1):
        item = described[number]
        entry = vocabulary.lookup(name)
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        if entry is None:
            assert (category.CodeValue, kind.CodeValue) == ("91723000", "91723000")
            assert kind.CodingSchemeDesignator == "SCT"
        else:
            assert (category.CodingSchemeDesignator, category.CodeValue, category.CodeMeaning) == \
                (entry.category.scheme, entry.category.value, entry.category.meaning)
            assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == \
                (entry.type.scheme, entry.type.value, entry.type.meaning)
            modifier = kind.get("SegmentedPropertyTypeModifierCodeSequence")
            if entry.type_modifier is None:
                assert not modifier
            else:
                assert modifier[0].CodeValue == entry.type_modifier.value
            assert tuple(hd.color.CIELabColor.from_dicom_value(
                item.RecommendedDisplayCIELabValue).to_rgb()) == pytest.approx(entry.color, abs=2)
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "MedSegR"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "MedSegR" and algorithm.AlgorithmVersion == __version__
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # artificial intelligence
        assert "/models/medsegr-ct-v2" in algorithm.AlgorithmParameters
    assert vocabulary.lookup("left kidney").type_modifier is not None
    assert "medsegr-ct-v2" in seg.SeriesDescription and seg.SoftwareVersions == __version__


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def local_tiny(monkeypatch, tiny_pipeline):
    """``medsegr ask`` runs the session's tiny random model (the real classes), which
    emits ``[SEG]`` at decoding step 1."""
    from medsegr.pipeline import MedSegRPipeline

    monkeypatch.setattr(MedSegRPipeline, "load", classmethod(lambda cls, *a, **k: tiny_pipeline))
    with force_seg(tiny_pipeline.model, {1}):
        yield tiny_pipeline


def _ask(capsys, image, out, *extra):
    code = main(["ask", str(image), "Segment the liver.", "--base", "--device", "cpu", "--out", str(out),
                 "--max-new-tokens", "4", "--volume", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_dicom_seg_for_a_dicom_series(series, tmp_path, capsys, local_tiny):
    out = tmp_path / "out"
    # the random grounding module's masks may be empty: this one finds the structure
    # on every slice, as a trained module asked about a visible organ would
    with grounding_finds_everything(local_tiny.model):
        code, printed, err = _ask(capsys, series, out)
    assert code == 0, err
    assert "wrote the DICOM SEG segmentation.dcm" in printed
    assert sorted(p.name for p in out.iterdir()) == ["answer.json", "labels.nrrd", "overlay.png",
                                                     "segmentation.dcm", "segmentation.seg.nrrd"]
    record = json.loads((out / "answer.json").read_text(encoding="utf-8"))
    assert record["files"]["dicom_seg"] == "segmentation.dcm"
    assert record["dicom_seg"]["file"] == "segmentation.dcm"
    seg = hd.seg.segread(out / "segmentation.dcm")
    by_uid = _check_references(seg, series)
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    label_array = sitk.GetArrayFromImage(labels)
    frames = _frames_by_instance(seg)
    segments = record["segments"]
    assert segments and int(seg.NumberOfFrames) == sum(
        int((label_array[k] == s["label_value"]).any()) for s in segments for k in range(SLICES))
    for (uid, number), pixels in frames.items():
        k = _slice_of(labels, by_uid[uid])
        np.testing.assert_array_equal(pixels.astype(bool), label_array[k] == number)
    described = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    for s in segments:
        item = described[s["label_value"]]
        assert item.SegmentLabel == " ".join(s["name"].split())[:64]
        code = dicom_seg.segment_code(item.SegmentLabel)
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == code.type[1]
        if not code.coded:
            assert f"segment {item.SegmentLabel!r} is not in the anatomy vocabulary" in err
    assert record["dicom_seg"]["uncoded_segments"] == [
        n for n in (described[s["label_value"]].SegmentLabel for s in segments)
        if not dicom_seg.segment_code(n).coded]


def test_cli_with_server_writes_the_same_dicom_seg(series, tmp_path, capsys, tiny_pipeline):
    """``medsegr ask --server``: the engine answers over HTTP and the CLI writes the DICOM
    SEG from the series on this machine: references, frames and segments as answered."""
    from server_harness import TOKEN, live_server

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    out = tmp_path / "remote"
    # the grounding module finds the structure on every slice (see helpers.py): a DICOM
    # SEG needs a non-empty mask, which the random module may not make
    with live_server(tiny_pipeline, token=TOKEN) as server, force_seg(tiny_pipeline.model, {1}), \
            grounding_finds_everything(tiny_pipeline.model):
        code = main(["ask", str(series), "Segment the liver.", "--server", server.url,
                     "--token-file", str(token_file), "--out", str(out), "--max-new-tokens", "4",
                     "--volume"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote the DICOM SEG segmentation.dcm" in captured.out
    record = json.loads((out / "answer.json").read_text(encoding="utf-8"))
    assert record["model"]["server"] == server.url and record["dicom_seg"]["file"] == "segmentation.dcm"
    seg = hd.seg.segread(out / "segmentation.dcm")
    by_uid = _check_references(seg, series)
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "MedSegR"
    assert [item.SegmentLabel for item in seg.SegmentSequence] == [s["name"] for s in record["segments"]]
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    label_array = sitk.GetArrayFromImage(labels)
    frames = _frames_by_instance(seg)
    assert frames and len(frames) == sum(int((label_array[k] == s["label_value"]).any())
                                         for s in record["segments"] for k in range(SLICES))
    for (uid, number), pixels in frames.items():
        np.testing.assert_array_equal(pixels.astype(bool), label_array[_slice_of(labels, by_uid[uid])] == number)


def test_cli_without_dicom_input_says_why(tmp_path, capsys, local_tiny):
    image = tmp_path / "scan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(3).random((4, 20, 24)).astype(np.float32)),
                    str(image))
    out = tmp_path / "out"
    code, _, err = _ask(capsys, image, out)
    assert code == 0, err
    assert "segmentation.dcm" not in {p.name for p in out.iterdir()}
    record = json.loads((out / "answer.json").read_text(encoding="utf-8"))
    assert record["dicom_seg"] == {"file": None,
                                   "reason": f"DICOM SEG needs a DICOM series input; {image} is NRRD"}
    # one short note, not a warning: a non-DICOM input gets no DICOM SEG, as expected
    assert "medsegr: note: a DICOM SEG (segmentation.dcm) is written for DICOM inputs only" in err
    assert "warning" not in err
    # --no-dicom-seg on a DICOM series: none, and no warning
    code, _, err = _ask(capsys, _series_folder(tmp_path / "ct2"), tmp_path / "out2", "--no-dicom-seg")
    assert code == 0 and "warning" not in err
    assert "segmentation.dcm" not in {p.name for p in (tmp_path / "out2").iterdir()}


def _series_folder(folder: Path) -> Path:
    write_ct_series(folder)
    return folder


# --------------------------------------------------------------------------- bad input


def _refused(capsys, image, out, words):
    code = main(["ask", str(image), "Segment the liver.", "--base", "--out", str(out), "--dicom-seg"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medsegr: error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists()  # refused before any work: nothing written
    return lines[0]


def test_dicom_seg_on_nrrd_is_refused(tmp_path, capsys):
    image = tmp_path / "scan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.float32)), str(image))
    _refused(capsys, image, tmp_path / "out", ["DICOM SEG needs a DICOM series input", "is NRRD"])


def test_mixed_series_is_refused(tmp_path, capsys):
    folder = tmp_path / "ct"
    write_ct_series(folder)
    other = write_ct_series(tmp_path / "other", slices=2, seed=5)
    for path in other:
        path.rename(folder / f"other_{path.name}")
    _refused(capsys, folder, tmp_path / "out", ["mixed DICOM series", ": 2 series", "one series"])


def test_missing_instance_is_refused(tmp_path, capsys):
    folder = tmp_path / "ct"
    paths = write_ct_series(folder)
    paths[2].unlink()  # a slice in the middle
    _refused(capsys, folder, tmp_path / "out", ["missing", "gap"])


def test_other_orientation_and_duplicates_are_refused(series, tmp_path):
    image = load_image(series)
    tilted = pydicom.dcmread(next(series.iterdir()))
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0.9961947, 0.0871557]
    tilted.save_as(next(series.iterdir()))
    with pytest.raises(InputError, match="another orientation"):
        dicom_seg.read_series(series, image.geometry)

    folder = tmp_path / "dup"
    paths = write_ct_series(folder)
    copy = pydicom.dcmread(paths[1])
    copy.SOPInstanceUID = generate_uid()
    copy.ImagePositionPatient = pydicom.dcmread(paths[2]).ImagePositionPatient
    copy.save_as(paths[1])
    with pytest.raises(InputError, match="share a slice position"):
        dicom_seg.read_series(folder, load_image(_series_folder(tmp_path / "clean")).geometry)


def test_writer_refuses_answers_without_pixels(series):
    image = load_image(series)
    source = dicom_seg.read_series(series, image.geometry)
    with pytest.raises(InputError, match="no segment"):
        dicom_seg.write_dicom_seg(series.parent / "x.dcm", source, [])
    with pytest.raises(InputError, match="every segment of the answer is empty"):
        dicom_seg.write_dicom_seg(series.parent / "x.dcm", source,
                                  [dicom_seg.SegmentInput("liver", np.zeros(image.shape, bool))])
    with pytest.raises(InputError, match="has shape"):
        dicom_seg.write_dicom_seg(series.parent / "x.dcm", source,
                                  [dicom_seg.SegmentInput("liver", np.ones((2, 2, 2), bool))])
    assert not (series.parent / "x.dcm").exists()
