"""`medsegr ask` on every supported input format, with a tiny random model (fast), and
`medsegr info` / `medsegr samples`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsegr.cli.commands import main
from medsegr.io.segmentation_files import read_seg_nrrd
from medsegr.cli.samples import sample_path

TINY_CONFIG = """
[llm]
source = "tiny-random"
[vision]
source = "tiny-random"
[model]
visual_grid = 4
[generation]
max_new_tokens = 8
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_CONFIG, encoding="utf-8")
    return path


def _ask(capsys, image, out, config, *extra):
    code = main(["ask", str(image), "What is shown here?", "--base", "--config", str(config),
                 "--device", "cpu", "--out", str(out), "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out), captured.err


def _dicom_series(folder: Path) -> Path:
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    arr = (np.random.default_rng(0).random((4, 24, 20)) * 400 - 100).astype(np.int16)
    series = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[k])
        sl.SetSpacing((0.7, 0.7))
        for tag, value in [("0008|0060", "CT"), ("0020|000e", series), ("0020|0013", str(k + 1)),
                           ("0020|0032", f"0\\0\\{2.5 * k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0018|0050", "2.5"), ("0008|0018", f"{series}.{k + 1}")]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


@pytest.mark.parametrize("kind", ["nrrd", "nifti", "png", "dicom_file", "dicom_series"])
def test_formats(kind, tmp_path, capsys, tiny_config):
    rng = np.random.default_rng(1)
    if kind == "nrrd":
        image = tmp_path / "v.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(rng.random((5, 20, 24)).astype(np.float32)), str(image))
    elif kind == "nifti":
        image = tmp_path / "v.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(rng.random((5, 20, 24)).astype(np.float32)), str(image))
    elif kind == "png":
        image = tmp_path / "p.png"
        rgb = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(image))
    elif kind == "dicom_file":
        image = sample_path("ct-slice")
    else:
        image = _dicom_series(tmp_path / "series")
    record, err = _ask(capsys, image, tmp_path / "out", tiny_config)
    assert "not grounded" in err
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["answer.json", "labels.nrrd", "overlay.png", "segmentation.seg.nrrd"]
    saved = json.loads((tmp_path / "out" / "answer.json").read_text(encoding="utf-8"))
    assert saved["answer"] == record["answer"] and saved["mode"] == "slice"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp_path / "out" / "labels.nrrd"))
    reader.ReadImageInformation()
    if kind == "dicom_series":
        assert saved["image_geometry"]["modality"] == "CT"
        assert reader.GetSize() == (20, 24, 4)
        np.testing.assert_allclose(reader.GetSpacing(), (0.7, 0.7, 2.5), atol=1e-4)
    _, geometry = read_seg_nrrd(tmp_path / "out" / "segmentation.seg.nrrd")
    assert tuple(geometry.shape) == tuple(saved["image_geometry"]["shape_zyx"])


def test_volume_mode_and_hints(tmp_path, capsys, tiny_config):
    image = tmp_path / "v.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(2).random((6, 20, 24))
                                           .astype(np.float32)), str(image))
    record, _ = _ask(capsys, image, tmp_path / "out", tiny_config, "--volume")
    assert record["mode"] == "volume" and record["encoded_slices"] == 6
    record, _ = _ask(capsys, image, tmp_path / "out2", tiny_config, "--axis", "sagittal",
                     "--slice", "3", "--box", "2,1,15,4", "--point", "8,2", "--point", "3,3,0")
    assert record["axis"] == 2 and record["slice_index"] == 3


def test_hints_under_cpu_bfloat16_autocast_with_a_float16_embedding_cache(tiny_pipeline,
                                                                          monkeypatch):
    """Where the CPU computes bfloat16 natively, `medsegr ask` runs the grounding module
    under CPU autocast (whatever this CPU is, it is forced here); the slice embeddings
    are cached in float16, which CPU autocast cannot stack."""
    import torch

    from helpers import force_text
    from medsegr.answers import Hints
    from medsegr.io.images import image_from_array
    from medsegr.pipeline import ChatSession

    monkeypatch.setattr(tiny_pipeline.model.config.generation, "embedding_cache_dtype", "float16")
    monkeypatch.setattr(ChatSession, "_grounding_precision",
                        lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    image = image_from_array(np.random.default_rng(3).random((3, 20, 24)).astype(np.float32),
                             modality="MR")
    session = tiny_pipeline.new_session(image)
    with force_text(tiny_pipeline.model, "Here it is."):  # no [SEG]: the hints alone
        answer = session.ask("Outline it.", slice_index=1, hints=Hints(box=(2, 1, 15, 12)))
    assert [s.name for s in answer.segments] + answer.not_found == ["hinted structure"]


def test_existing_output_folder_keeps_other_files(tmp_path, capsys, tiny_config):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    image = sample_path("mr-slice")
    _ask(capsys, image, out, tiny_config)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_samples_and_info(capsys):
    assert main(["samples"]) == 0
    assert "sample:brain-mri" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
