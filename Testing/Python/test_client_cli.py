"""``medsegr ask --server URL``: the CLI asks a running engine through the client and
writes the same result files as a local run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import force_seg, heavy_modules_after
from medsegr.cli.commands import main
from medsegr.io.images import image_from_array, load_image, write_image
from server_harness import TOKEN, free_port, live_server, oblique_volume


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    with live_server(tiny_pipeline, token=TOKEN) as srv:
        yield srv


@pytest.fixture
def image_file(tmp_path):
    arr, spacing, origin, direction = oblique_volume((5, 30, 36), seed=4)
    path = tmp_path / "scan.nrrd"
    write_image(path, image_from_array(arr, spacing=spacing, origin=origin, direction=direction,
                                       modality="MR"))
    return path


def test_ask_server_writes_the_same_files_as_a_local_run(server, tiny_pipeline, image_file,
                                                         tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    out = tmp_path / "out"
    question = "Segment the organ."
    with force_seg(tiny_pipeline.model, {1}):
        status = main(["ask", str(image_file), question, "--slice", "2", "--server", server.url,
                       "--token-file", str(token_file), "--out", str(out), "--max-new-tokens", "4",
                       "--modality", "MR"])
    assert status == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "segment 1" in printed and f"on the engine at {server.url}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["answer.json", "labels.nrrd", "overlay.png",
                                                     "segmentation.seg.nrrd"]
    record = json.loads((out / "answer.json").read_text(encoding="utf-8"))
    assert record["model"]["server"] == server.url and record["model"]["api_version"] == "1"
    assert record["slice_index"] == 2 and record["question"] == question
    assert len(server.engine.store) == 0  # the CLI deleted its session

    source = load_image(image_file)
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    assert labels.GetSize() == sitk.ReadImage(str(image_file)).GetSize()
    assert np.allclose(labels.GetSpacing(), source.spacing)
    assert np.allclose(labels.GetOrigin(), source.origin)
    assert np.allclose(labels.GetDirection(), source.direction)
    local = tiny_pipeline.new_session(source)
    with force_seg(tiny_pipeline.model, {1}):
        expected = local.ask(question, slice_index=2, max_new_tokens=4)
    assert np.array_equal(sitk.GetArrayFromImage(labels) == 1, expected.segments[0].mask)


def test_ask_server_loads_no_model_code(server, image_file, tmp_path):
    """``medsegr ask --server`` only talks HTTP: in a fresh interpreter it answers and
    writes its files without importing torch or the model libraries (SimpleITK reads the
    image; that one is allowed)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    out = tmp_path / "out"
    argv = ["ask", str(image_file), "Segment the organ.", "--slice", "2", "--server", server.url,
            "--token-file", str(token_file), "--out", str(out), "--max-new-tokens", "4",
            "--modality", "MR"]
    code = ("from medsegr.cli.commands import main\n"
            f"assert main({argv!r}) == 0\n")
    assert heavy_modules_after(code, ("torch", "transformers", "peft", "timm")) == []
    assert (out / "answer.json").is_file() and (out / "labels.nrrd").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--token", "wrong-token-0123456789"], "the token is not valid"),
    ([], "needs a token"),
    (["--base"], "with --server the engine's own model answers"),
])
def test_ask_server_errors_are_one_line(server, image_file, tmp_path, capsys, extra, message,
                                        monkeypatch):
    monkeypatch.delenv("MEDSEGR_TOKEN", raising=False)
    out = tmp_path / "out"
    assert main(["ask", str(image_file), "Where?", "--server", server.url, "--out", str(out),
                 *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_ask_server_that_is_not_running(image_file, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["ask", str(image_file), "Where?", "--server", url, "--out",
                 str(tmp_path / "out")]) == 2
    assert "cannot connect to the MedSegR engine" in capsys.readouterr().err
