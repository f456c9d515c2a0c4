"""The bad-input corpus (bad_inputs.py) through `medsegr ask`: every case exits with
status 2 and exactly one line of reason on stderr, before the model is loaded, and
leaves ``--out`` exactly as it was (no hidden staging folder either). Failures while
writing results (a file-size limit, a folder in the way, a vanished folder) are run
with the tiny random model and leave earlier results untouched."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

import bad_inputs
from bad_inputs import IMAGE_CASES, OPTION_CASES, OUTPUT_CASES, QUESTION, QUESTION_CASES
from medsegr.cli.commands import main

TINY_CONFIG = """
[llm]
source = "tiny-random"
[vision]
source = "tiny-random"
[model]
visual_grid = 4
[generation]
max_new_tokens = 4
"""
EARLIER = {"segmentation.seg.nrrd": b"earlier segmentation", "labels.nrrd": b"earlier labels",
           "answer.json": b'{"question": "earlier"}\n', "overlay.png": b"earlier overlay",
           "notes.txt": b"a file of the user's own"}


def tree_digest(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too) with a hash of its content."""
    if not folder.exists():
        return {}
    digest = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        digest[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return digest


def earlier_results(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in EARLIER.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model would be loaded (bad input must be refused first)."""
    from medsegr.pipeline import MedSegRPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded for a bad input")

    monkeypatch.setattr(MedSegRPipeline, "load", classmethod(refuse))


def run_cli(capsys, argv: list[str]) -> tuple[int, list[str]]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip("\n").splitlines()


def assert_refused(code: int, err: list[str], words: str) -> None:
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("medsegr"), err
    assert ": error: " in err[0] and "Traceback" not in err[0]
    assert words.lower() in err[0].lower(), err


def assert_no_staging(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith((".medsegr", ".staging"))]
    assert not leftovers, leftovers


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c.id)
def test_bad_images(case, tmp_path, capsys, no_model):
    image = case.make(tmp_path)
    out = earlier_results(tmp_path / "out")
    before = tree_digest(out)
    code, err = run_cli(capsys, ["ask", str(image), QUESTION, "--out", str(out)])
    assert_refused(code, err, case.words)
    if case.words.startswith("max_"):
        assert "--" + case.words.replace("_", "-") in err[0]  # names the option to raise
    assert tree_digest(out) == before
    assert_no_staging(tmp_path)


@pytest.mark.parametrize("case", QUESTION_CASES, ids=lambda c: c.id)
def test_bad_questions(case, tmp_path, capsys, no_model):
    image = bad_inputs.good_volume(tmp_path / "vol.nrrd")
    code, err = run_cli(capsys, ["ask", str(image), case.question, "--out", str(tmp_path / "out")])
    assert_refused(code, err, case.words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", OPTION_CASES, ids=lambda c: c.id)
def test_bad_options(case, tmp_path, capsys, no_model):
    image = (bad_inputs.good_picture(tmp_path / "picture.png") if case.picture
             else bad_inputs.good_volume(tmp_path / "vol.nrrd"))
    out = earlier_results(tmp_path / "out")
    before = tree_digest(out)
    code, err = run_cli(capsys, ["ask", str(image), QUESTION, "--out", str(out), *case.args])
    assert_refused(code, err, case.words)
    assert tree_digest(out) == before
    assert_no_staging(out)


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=lambda c: c.id)
def test_bad_output_folders(case, tmp_path, capsys, no_model):
    image = bad_inputs.good_volume(tmp_path / "vol.nrrd")
    out = case.make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run_cli(capsys, ["ask", str(image), QUESTION, "--out", str(out)])
    assert_refused(code, err, case.words)
    assert str(out) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_corpus_is_large_and_its_ids_unique():
    ids = bad_inputs.all_ids()
    assert len(ids) == len(set(ids))
    assert len(ids) >= 100


def test_bombs_are_small_on_disk(tmp_path):
    for case in IMAGE_CASES:
        if case.id.startswith("bomb_"):
            folder = tmp_path / case.id
            folder.mkdir()
            case.make(folder)
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            assert size < 4 * 1024 * 1024, (case.id, size)


def test_raised_limits_let_a_large_header_through_to_the_reader(tmp_path, capsys, no_model):
    """The limits are the only thing refusing a bomb: raised, the same file is refused by
    the reader (its data is missing) instead, still with exit 2 and one line."""
    image = bad_inputs.write(tmp_path / "side.nrrd",
                             bad_inputs.nrrd_header((20000, 2, 1), "uint8") + b"\0" * 10)
    code, err = run_cli(capsys, ["ask", str(image), QUESTION, "--out", str(tmp_path / "out")])
    assert_refused(code, err, "--max-side")
    code, err = run_cli(capsys, ["ask", str(image), QUESTION, "--out", str(tmp_path / "out"),
                                 "--max-side", "20000"])
    assert_refused(code, err, "could not read")


# --------------------------------------------------------------------------- while writing


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_CONFIG, encoding="utf-8")
    return path


def _ask_args(image: Path, out: Path, config: Path) -> list[str]:
    return ["ask", str(image), QUESTION, "--base", "--config", str(config), "--device", "cpu",
            "--out", str(out)]


def test_a_file_size_limit_while_writing_keeps_earlier_results(tmp_path, tiny_config):
    """RLIMIT_FSIZE (``ulimit -f``) makes a result write fail part way (EFBIG)."""
    image = bad_inputs.good_volume(tmp_path / "vol.nrrd", (4, 64, 64))
    out = earlier_results(tmp_path / "out")
    before = tree_digest(out)
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
              "from medsegr.cli.commands import main\n"
              f"sys.exit(main({_ask_args(image, out, tiny_config)!r}))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600)
    lines = [line for line in result.stderr.splitlines() if line.startswith("medsegr: error")]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and str(out) in lines[0] and "too large" in lines[0].lower(), lines
    assert tree_digest(out) == before
    assert_no_staging(out)


def test_a_folder_in_the_way_keeps_earlier_results(tmp_path, tiny_config, capsys):
    image = bad_inputs.good_volume(tmp_path / "vol.nrrd")
    out = earlier_results(tmp_path / "out")
    (out / "answer.json").unlink()
    (out / "answer.json").mkdir()  # a folder where a result file goes
    before = tree_digest(out)
    code = main(_ask_args(image, out, tiny_config))
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert code == 2 and len(err) == 1 and str(out) in err[0]
    assert tree_digest(out) == before
    assert_no_staging(out)


def test_a_folder_that_vanishes_while_writing(tmp_path, tiny_config, capsys, monkeypatch):
    import shutil

    import medsegr.cli.outputs as outputs

    image = bad_inputs.good_volume(tmp_path / "vol.nrrd")
    out = earlier_results(tmp_path / "out")
    real_render = outputs.render_overlay

    def render_then_vanish(path, *args, **kwargs):
        real_render(path, *args, **kwargs)
        shutil.rmtree(out)  # e.g. removed by another program, or a network share dropped

    monkeypatch.setattr(outputs, "render_overlay", render_then_vanish)
    code = main(_ask_args(image, out, tiny_config))
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert code == 2 and len(err) == 1 and str(out) in err[0], err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml", "vol.nrrd"]


def test_a_good_run_replaces_the_results_and_keeps_other_files(tmp_path, tiny_config, capsys):
    image = bad_inputs.good_volume(tmp_path / "vol.nrrd")
    out = earlier_results(tmp_path / "out")
    assert main(_ask_args(image, out, tiny_config)) == 0, capsys.readouterr().err
    assert (out / "notes.txt").read_bytes() == EARLIER["notes.txt"]
    assert (out / "answer.json").read_bytes() != EARLIER["answer.json"]
    assert_no_staging(out)
