"""Everything `medsegr ask` and `medsegr serve` are given is checked before the model
loads: the question's reserved tokens, the engine URL, the token file, the output
path, the checkpoint's files and the configuration's values. Each bad case runs the
command line in its own process and must exit with status 2 and one line on stderr
(no traceback) that names the thing and the fix. The process cannot load the model:
torch and the pipeline are made unimportable in it, so a check that came too late
would end in a traceback (status 1), and no load-status line may appear. Each case
has accepted neighbours, which pass the check under test and stop at the next one
(also without loading anything)."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bad_inputs
from helpers import HEAVY, heavy_modules_after

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "MedSegR" / "Resources" / "checkpoint"
TOKEN = "validation-token-0123456789"
#: the process runs the real command line with the model stack made unimportable
GUARDED_MAIN = ("import sys\n"
                "for name in ('torch', 'transformers', 'peft', 'medsegr.pipeline'):\n"
                "    sys.modules[name] = None\n"
                "from medsegr.cli.commands import main\n"
                "sys.exit(main(sys.argv[1:]))\n")
#: what stderr shows once the model starts loading (medsegr.modeling.load_status)
LOAD_LINES = ("loading the checkpoint", "loading the model", "the model is ready", "converting")


def medsegr(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", GUARDED_MAIN, *map(str, args)],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=120,
                          env={**os.environ, **(env or {})})


def assert_refused_early(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2, one line on stderr naming ``words``, no traceback, nothing loaded."""
    lines = proc.stderr.strip("\n").splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, lines
    assert "Traceback" not in proc.stderr and ": error: " in lines[0]
    assert not any(marker in lines[0] for marker in LOAD_LINES), lines
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    return bad_inputs.good_volume(tmp_path_factory.mktemp("image") / "vol.nrrd")


def ask(volume: Path, tmp_path: Path, *options: str | Path, question: str = "Where is the liver?",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return medsegr("ask", volume, question, "--out", tmp_path / "out", *options, env=env)


def ask_base(volume: Path, out: Path, *options: str | Path,
             question: str = "Where is the liver?") -> subprocess.CompletedProcess:
    """``ask`` with the base parts (no checkpoint files involved)."""
    return medsegr("ask", volume, question, "--base", "--out", out, *options)


def too_long_out(tmp_path: Path) -> Path:
    return tmp_path / ("x" * 300)


# -- the question's reserved tokens -------------------------------------------------------

@pytest.mark.parametrize("question, token", [
    ("Segment the [SEG] here", "[SEG]"),
    ("What is in <image>?", "<image>"),
    ("[SEG][SEG]", "[SEG]"),
])
def test_reserved_tokens_are_refused_before_the_model_loads(question, token, volume, tmp_path):
    line = assert_refused_early(ask_base(volume, tmp_path / "out", question=question),
                                "reserved token", token, "rephrase")
    assert not (tmp_path / "out").exists(), line
    assert_refused_early(ask(volume, tmp_path, "--server", "http://127.0.0.1:9", question=question),
                         "reserved token", token)


def test_reserved_tokens_of_a_checkpoint_are_its_own(volume, tmp_path):
    folder = checkpoint_folder(tmp_path / "ckpt", seg_token="<seg>", image_token="<img>")
    assert_refused_early(ask(volume, tmp_path, "--checkpoint", folder, question="Is <seg> here?"),
                         "reserved token", "<seg>")
    proc = medsegr("ask", volume, "Is [SEG] here?", "--checkpoint", folder, "--out",
                   too_long_out(tmp_path))
    assert_refused_early(proc, "--out", "300 bytes")  # the question passed


def test_reserved_tokens_of_a_configuration_are_its_own(volume, tmp_path):
    """With --config the configuration's markers are reserved, and the defaults are
    ordinary text; the question passes and the run stops at the next check (--out)."""
    config = tmp_path / "model.toml"
    config.write_text('[model]\nseg_token = "[MASK]"\nimage_token = "<img>"\n', encoding="utf-8")
    assert_refused_early(ask(volume, tmp_path, "--base", "--config", config,
                             question="Where is the [MASK]?"), "reserved token", "[MASK]")
    proc = medsegr("ask", volume, "Is [SEG] or <image> in the text?", "--base", "--config",
                   config, "--out", too_long_out(tmp_path))
    assert_refused_early(proc, "--out", "300 bytes")


def test_a_question_that_only_looks_like_a_token_is_accepted(volume, tmp_path):
    proc = ask_base(volume, too_long_out(tmp_path),
                    question="Is [SEG ] or <image > or [seg] in the text?")
    assert_refused_early(proc, "--out")  # the question passed


# -- the engine URL ----------------------------------------------------------------------

@pytest.mark.parametrize("url, words", [
    ("ftp://127.0.0.1/", ["scheme 'ftp'", "http://"]),
    ("file:///tmp/engine", ["scheme 'file'"]),
    ("ws://127.0.0.1:8765", ["scheme 'ws'"]),
    ("127.0.0.1:8765", ["http://"]),
    ("engine", ["not a URL"]),
    ("http://", ["no host"]),
    ("http://127.0.0.1:99999", ["port"]),
    ("http://127.0.0.1:port", ["port"]),
    ("http://[::1", ["not a URL"]),
    ("http://user:secret@127.0.0.1:8765", ["--token-file"]),
    ("http://127.0.0.1:8765/?token=x", ["query"]),
    ("http://127.0.0.1 :8765", ["not a URL"]),
    ("", ["not a URL"]),
])
def test_bad_engine_urls_are_refused_by_the_parser(url, words, volume, tmp_path):
    line = assert_refused_early(ask(volume, tmp_path, "--server", url), "--server", *words)
    assert line.startswith("medsegr ask: error: argument --server")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/", "https://127.0.0.1:9",
                                 "HTTP://127.0.0.1:9/v1", "http://[::1]:9"])
def test_http_and_https_urls_are_accepted(url, volume, tmp_path):
    """The URL passes; nothing listens there, so the run ends at the connection, with
    one line and status 2, and nothing written."""
    proc = ask(volume, tmp_path, "--server", url)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "argument --server" not in proc.stderr
    assert any("engine" in line and ": error: " in line for line in lines), lines
    assert not (tmp_path / "out").exists()


# -- the token -----------------------------------------------------------------------------

def _token_files(folder: Path) -> dict[str, tuple[Path, list[str]]]:
    files = {
        "binary": (bytes(range(128, 256)) * 4, ["not UTF-8", "binary"]),
        "png": (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", ["NUL bytes", "binary"]),
        "latin-1": ("café-token-0123456789".encode("latin-1"), ["not UTF-8"]),
        "nul bytes": (TOKEN.encode() + b"\0\0", ["NUL bytes"]),
        "only a nul": (b"\0", ["NUL bytes"]),
        "empty": (b"", ["is empty"]),
        "blank lines": (b"\n \n\t\n", ["is empty"]),
        "non-ascii token": ("tökén-0123456789abcdef".encode(), ["visible ASCII", "U+00F6"]),
        "control character": (b"tok\x1ben-0123456789abcdef", ["visible ASCII", "U+001B"]),
        "too large": (b"a" * (64 * 1024 + 1), ["larger than 64 KiB"]),
    }
    out = {}
    for name, (data, words) in files.items():
        path = folder / f"{name.replace(' ', '-')}.token"
        path.write_bytes(data)
        out[name] = (path, words)
    return out


TOKEN_CASES = ["binary", "png", "latin-1", "nul bytes", "only a nul", "empty", "blank lines",
               "non-ascii token", "control character", "too large"]


@pytest.mark.parametrize("case", TOKEN_CASES)
def test_bad_token_files_are_refused_by_ask(case, volume, tmp_path):
    path, words = _token_files(tmp_path)[case]
    assert_refused_early(ask(volume, tmp_path, "--server", "http://127.0.0.1:9",
                             "--token-file", path), "token", *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", TOKEN_CASES)
def test_bad_token_files_are_refused_by_serve(case, tmp_path):
    path, words = _token_files(tmp_path)[case]
    assert_refused_early(medsegr("serve", "--port", "0", "--token-file", path), "token", *words)


def test_missing_unreadable_and_folder_token_files(volume, tmp_path):
    missing = tmp_path / "missing.token"
    assert_refused_early(ask(volume, tmp_path, "--server", "http://127.0.0.1:9", "--token-file",
                             missing), "cannot read the token file", "No such file")
    assert_refused_early(medsegr("serve", "--token-file", tmp_path), "it is a folder")
    if os.geteuid() != 0:  # root reads any file
        locked = tmp_path / "locked.token"
        locked.write_text(TOKEN, encoding="utf-8")
        locked.chmod(0)
        assert_refused_early(medsegr("serve", "--token-file", locked), "Permission denied")


def test_bad_tokens_from_the_option_and_the_environment(volume, tmp_path):
    assert_refused_early(ask(volume, tmp_path, "--server", "http://127.0.0.1:9", "--token",
                             "tökén-0123456789abcdef"), "--token", "visible ASCII")
    assert_refused_early(medsegr("serve", "--port", "0", env={"MEDSEGR_TOKEN": "tok\x01en-0123456789"}),
                         "$MEDSEGR_TOKEN", "visible ASCII")


def test_a_token_without_a_server_is_refused(volume, tmp_path):
    path = tmp_path / "good.token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    assert_refused_early(ask(volume, tmp_path, "--token-file", path), "apply to --server")


@pytest.mark.parametrize("content", [TOKEN, TOKEN + "\n", f"  {TOKEN}  \nsecond line\n",
                                     TOKEN + "\r\n"])
def test_good_token_files_are_accepted(content, volume, tmp_path):
    """The token passes; the run ends at the connection (nothing listens)."""
    path = tmp_path / "good.token"
    path.write_text(content, encoding="utf-8")
    path.chmod(0o600)  # else a warning says that others can read it
    proc = ask(volume, tmp_path, "--server", "http://127.0.0.1:9", "--token-file", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "token" not in proc.stderr and "cannot connect" in proc.stderr, proc.stderr


def test_the_token_is_read_from_its_first_line():
    from medsegr.cli.preflight import read_token_file

    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".token", delete=False) as handle:
        handle.write(f"\n  {TOKEN}\nother\n")
    try:
        assert read_token_file(Path(handle.name)) == TOKEN
    finally:
        os.unlink(handle.name)


# -- the output path ---------------------------------------------------------------------

@pytest.mark.parametrize("make, words", [
    (lambda tmp: tmp / ("x" * 256), ["256 bytes", "255", "shorter --out"]),
    (lambda tmp: tmp / ("x" * 300) / "results", ["300 bytes", "shorter --out"]),
    (lambda tmp: tmp / ("é" * 128), ["256 bytes"]),  # 128 characters, 256 bytes of UTF-8
    (lambda tmp: tmp.joinpath(*["d" * 200] * 25), ["path is too long", "shorter --out"]),
])
def test_output_paths_the_file_system_cannot_hold(make, words, volume, tmp_path):
    out = make(tmp_path)
    proc = ask_base(volume, out)
    line = assert_refused_early(proc, "--out", *words)
    assert len(line) < 400  # the path is shortened in the message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_output_names_of_255_bytes_pass_the_length_check(volume, tmp_path):
    """A 255-byte name fits; the run stops at the next check (an unreachable engine)."""
    proc = medsegr("ask", volume, "Where is the liver?", "--out", tmp_path / ("x" * 255),
                   "--server", "http://127.0.0.1:9")  # no local model, no checkpoint check
    assert proc.returncode == 2 and "--out" not in proc.stderr and "cannot connect" in proc.stderr


def test_an_output_folder_that_is_not_writable(volume, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may write into any folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_refused_early(ask_base(volume, locked / "out"), "not writable", "another --out")
    finally:
        locked.chmod(0o700)


# -- checkpoint files --------------------------------------------------------------------

def safetensors_bytes(tensors: dict[str, dict], data: bytes, header: bytes | None = None) -> bytes:
    raw = header if header is not None else json.dumps(tensors).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def good_safetensors(path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16),
               "c": np.zeros((0, 3), np.float32)}, str(path), metadata={"format": "pt"})
    return path


def checkpoint_folder(folder: Path, **model: str) -> Path:
    """A checkpoint folder as far as its files go: whole safetensors files for the heads
    and the adapter, and a configuration of this engine's defaults (``model`` changes
    its [model] section)."""
    from medsegr.config import MedSegRConfig

    (folder / "adapter").mkdir(parents=True)
    config = MedSegRConfig().to_dict()
    config["model"].update(model)
    meta = {"format": 1, "config": config, "special_tokens": {}}
    (folder / "medsegr_config.json").write_text(json.dumps(meta), encoding="utf-8")
    (folder / "adapter" / "adapter_config.json").write_text('{"r": 8}', encoding="utf-8")
    good_safetensors(folder / "heads.safetensors")
    good_safetensors(folder / "adapter" / "adapter_model.safetensors")
    return folder


@pytest.fixture
def checkpoint_copy(tmp_path) -> Path:
    """The bundled checkpoint's weight files, with a configuration of this engine's
    defaults (the file checks are under test here, not the bundled configuration)."""
    folder = checkpoint_folder(tmp_path / "ckpt")
    shutil.copy(CHECKPOINT / "heads.safetensors", folder / "heads.safetensors")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(CHECKPOINT / "adapter" / name, folder / "adapter" / name)
    return folder


def _cut(path: Path, size: int) -> None:
    os.truncate(path, size)


CHECKPOINT_DAMAGE = {
    "heads cut to a third": (lambda f: _cut(f / "heads.safetensors",
                                            (f / "heads.safetensors").stat().st_size // 3),
                             ["heads.safetensors", "cut short"]),
    "heads one byte short": (lambda f: _cut(f / "heads.safetensors",
                                            (f / "heads.safetensors").stat().st_size - 1),
                             ["heads.safetensors", "cut short"]),
    "heads with a byte appended": (lambda f: (f / "heads.safetensors").open("ab").write(b"\0"),
                                   ["heads.safetensors", "extra bytes"]),
    "heads cut inside the header": (lambda f: _cut(f / "heads.safetensors", 100),
                                    ["heads.safetensors", "header", "cut short"]),
    "heads empty": (lambda f: _cut(f / "heads.safetensors", 0),
                    ["heads.safetensors", "too short"]),
    "heads missing": (lambda f: (f / "heads.safetensors").unlink(),
                      ["heads.safetensors is missing"]),
    "adapter cut short": (lambda f: _cut(f / "adapter" / "adapter_model.safetensors",
                                         (f / "adapter" / "adapter_model.safetensors").stat().st_size // 2),
                          ["adapter/adapter_model.safetensors", "cut short"]),
    "adapter weights missing": (lambda f: (f / "adapter" / "adapter_model.safetensors").unlink(),
                                ["adapter/adapter_model.safetensors is missing"]),
    "adapter config not JSON": (lambda f: (f / "adapter" / "adapter_config.json").write_bytes(b"{"),
                                ["adapter/adapter_config.json", "not valid JSON"]),
    "config missing": (lambda f: (f / "medsegr_config.json").unlink(),
                       ["medsegr_config.json is missing"]),
    "config not JSON": (lambda f: (f / "medsegr_config.json").write_bytes(b"\xff\xfe{"),
                        ["medsegr_config.json", "not valid JSON"]),
    "config a list": (lambda f: (f / "medsegr_config.json").write_text("[]"),
                      ["not a JSON object"]),
    "config of another format": (lambda f: _edit_config(f, lambda m: m.update(format=99)),
                                 ["format 99", "not supported"]),
    "config with a NaN": (lambda f: _edit_config(
        f, lambda m: m["config"]["model"].update(mask_threshold=math.nan)),
        ["medsegr_config.json", "mask_threshold", "finite"]),
}


def _edit_config(folder: Path, change) -> None:
    path = folder / "medsegr_config.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    change(meta)
    path.write_text(json.dumps(meta), encoding="utf-8")  # writes NaN as JSON's NaN


@pytest.mark.parametrize("case", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoints_are_refused_by_ask(case, checkpoint_copy, volume, tmp_path):
    damage, words = CHECKPOINT_DAMAGE[case]
    damage(checkpoint_copy)
    line = assert_refused_early(ask(volume, tmp_path, "--checkpoint", checkpoint_copy),
                                str(checkpoint_copy), *words)
    assert "--checkpoint" in line  # the fix
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["heads cut to a third", "config with a NaN"])
def test_damaged_checkpoints_are_refused_by_serve(case, checkpoint_copy, tmp_path):
    damage, words = CHECKPOINT_DAMAGE[case]
    damage(checkpoint_copy)
    assert_refused_early(medsegr("serve", "--port", "0", "--checkpoint", checkpoint_copy), *words)


def test_a_damaged_default_checkpoint_is_refused(checkpoint_copy, volume, tmp_path):
    CHECKPOINT_DAMAGE["heads cut to a third"][0](checkpoint_copy)
    assert_refused_early(ask(volume, tmp_path, env={"MEDSEGR_CHECKPOINT": str(checkpoint_copy)}),
                         "heads.safetensors", "cut short")


def test_an_intact_checkpoint_copy_passes(checkpoint_copy, volume, tmp_path):
    """The copy passes the checkpoint check; the run stops at the next one (--out)."""
    proc = medsegr("ask", volume, "Where is the liver?", "--checkpoint", checkpoint_copy,
                   "--out", too_long_out(tmp_path))
    assert_refused_early(proc, "--out", "300 bytes")


def test_the_default_checkpoint_folder_is_the_one_the_pipeline_loads(tmp_path, monkeypatch):
    from medsegr.cli.model_options import default_checkpoint_folder
    from medsegr.pipeline import default_checkpoint

    monkeypatch.delenv("MEDSEGR_CHECKPOINT", raising=False)
    assert default_checkpoint_folder() == default_checkpoint() == CHECKPOINT
    monkeypatch.setenv("MEDSEGR_CHECKPOINT", str(tmp_path))
    assert default_checkpoint_folder() == default_checkpoint() == tmp_path


def test_the_light_check_uses_the_checkpoint_file_names():
    from medsegr.modeling import checkpoint, weights

    assert weights.CHECKPOINT_CONFIG == checkpoint.CONFIG_NAME
    assert weights.CHECKPOINT_HEADS == checkpoint.HEADS_NAME
    assert weights.CHECKPOINT_ADAPTER.startswith(checkpoint.ADAPTER_DIR + "/")
    assert weights.CHECKPOINT_FORMAT == checkpoint.FORMAT_VERSION


def test_the_checks_before_loading_import_nothing_heavy(tmp_path):
    folder = checkpoint_folder(tmp_path / "ckpt")
    code = ("from pathlib import Path\n"
            "from medsegr.cli.preflight import check_output_folder, read_token_file\n"
            "from medsegr.modeling.weights import check_checkpoint_files\n"
            f"check_checkpoint_files(Path({str(folder)!r}))\n")
    assert heavy_modules_after(code, HEAVY) == []


# -- the safetensors header check ----------------------------------------------------------

def test_whole_safetensors_files_pass(tmp_path):
    from medsegr.modeling.weights import safetensors_problem

    assert safetensors_problem(good_safetensors(tmp_path / "a.safetensors")) is None
    assert safetensors_problem(CHECKPOINT / "heads.safetensors") is None
    assert safetensors_problem(CHECKPOINT / "adapter" / "adapter_model.safetensors") is None
    only_metadata = tmp_path / "meta.safetensors"
    only_metadata.write_bytes(safetensors_bytes({"__metadata__": {"format": "pt"}}, b""))
    assert safetensors_problem(only_metadata) is None


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("data, words", [
    (b"", "too short"),
    (b"\x10\0\0", "too short"),
    (struct.pack("<Q", 1 << 40) + b"{}", "header but the file is"),
    (struct.pack("<Q", 0), "header of 0 bytes"),
    (safetensors_bytes({}, b"", header=b"{not json}"), "not valid JSON"),
    (safetensors_bytes({}, b"", header=b"\xff\xfe\xfd\xfc"), "not valid JSON"),
    (safetensors_bytes({}, b"", header=b"[1, 2]"), "not a JSON object"),
    (safetensors_bytes({"a": F32}, b"\0" * 4), "cut short"),
    (safetensors_bytes({"a": F32}, b"\0" * 12), "extra bytes"),
    (safetensors_bytes({"a": {**F32, "data_offsets": [0, 12]}}, b"\0" * 12), "need 8"),
    (safetensors_bytes({"a": {**F32, "data_offsets": [4, 12]}}, b"\0" * 12), "gap or overlap"),
    (safetensors_bytes({"a": F32, "b": F32}, b"\0" * 8), "gap or overlap"),
    (safetensors_bytes({"a": {**F32, "data_offsets": [8, 0]}}, b""), "data_offsets"),
    (safetensors_bytes({"a": {**F32, "data_offsets": [0, -8]}}, b""), "data_offsets"),
    (safetensors_bytes({"a": {**F32, "data_offsets": "0-8"}}, b"\0" * 8), "data_offsets"),
    (safetensors_bytes({"a": {**F32, "shape": [-2]}}, b"\0" * 8), "shape"),
    (safetensors_bytes({"a": [0, 8]}, b"\0" * 8), "malformed"),
])
def test_broken_safetensors_files_are_named(data, words, tmp_path):
    from medsegr.modeling.weights import safetensors_problem

    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    problem = safetensors_problem(path)
    assert problem is not None and words in problem, problem


def test_the_header_check_agrees_with_the_safetensors_library(tmp_path):
    """Every cut of a real file that the check refuses, the library refuses too, and the
    whole file both accept (the check is no stricter than the format)."""
    from safetensors import SafetensorError, safe_open

    from medsegr.modeling.weights import safetensors_problem

    whole = good_safetensors(tmp_path / "whole.safetensors").read_bytes()
    for size in (len(whole) - 1, len(whole) - 8, len(whole) // 2, 12):
        cut = tmp_path / f"cut{size}.safetensors"
        cut.write_bytes(whole[:size])
        assert safetensors_problem(cut) is not None
        with pytest.raises(SafetensorError):
            with safe_open(str(cut), "np") as handle:
                [handle.get_tensor(k) for k in handle.keys()]
    with safe_open(str(tmp_path / "whole.safetensors"), "np") as handle:
        assert sorted(handle.keys()) == ["a", "b", "c"]


# -- configuration values ----------------------------------------------------------------

CONFIG_CASES = {
    "nan (TOML)": ("model.toml", "[model]\nmask_threshold = nan\n", ["mask_threshold", "finite"]),
    "inf (TOML)": ("model.toml", "[generation]\ntemperature = inf\n", ["temperature", "finite"]),
    "-inf (TOML)": ("model.toml", "[lora]\ndropout = -inf\n", ["dropout", "finite"]),
    "NaN (JSON)": ("model.json", '{"model": {"mask_threshold": NaN}}', ["mask_threshold", "finite"]),
    "Infinity (JSON)": ("model.json", '{"generation": {"temperature": Infinity}}',
                        ["temperature", "finite"]),
    "negative grid": ("model.toml", "[model]\nvisual_grid = -1\n", ["visual_grid", "between 1 and 64"]),
    "zero grid": ("model.toml", "[model]\nvisual_grid = 0\n", ["visual_grid", "between 1 and 64"]),
    "huge grid": ("model.toml", "[model]\nvisual_grid = 100000000000000000000\n",
                  ["visual_grid", "between"]),
    "threshold 1": ("model.toml", "[model]\nmask_threshold = 1.0\n", ["mask_threshold", "below 1"]),
    "threshold 0": ("model.toml", "[model]\nmask_threshold = 0\n", ["mask_threshold", "above 0"]),
    "negative temperature": ("model.toml", "[generation]\ntemperature = -0.5\n", ["temperature"]),
    "no new tokens": ("model.toml", "[generation]\nmax_new_tokens = 0\n", ["max_new_tokens"]),
    "min above max": ("model.toml", "[generation]\nmax_new_tokens = 8\nmin_new_tokens = 9\n",
                      ["min_new_tokens", "must not exceed"]),
    "dropout 1": ("model.toml", "[lora]\ndropout = 1.0\n", ["dropout", "below 1"]),
    "rank 0": ("model.toml", "[lora]\nr = 0\n", ["[lora] r", "between 1"]),
    "negative seed": ("model.toml", "[model]\nseed = -3\n", ["seed"]),
    "tiny image size": ("model.toml", "[vision]\nimage_size = 8\n", ["image_size", "between 16"]),
    "zero decoder batch": ("model.toml", "[generation]\ndecoder_batch = 0\n", ["decoder_batch"]),
    "unknown cache dtype": ("model.toml", '[generation]\nembedding_cache_dtype = "int4"\n',
                            ["embedding_cache_dtype", "float16, bfloat16, float32"]),
    "empty source": ("model.toml", '[llm]\nsource = "  "\n', ["[llm] source", "empty"]),
    "same markers": ("model.toml", '[model]\nseg_token = "<x>"\nimage_token = "<x>"\n',
                     ["must differ"]),
    "empty marker": ("model.toml", '[model]\nseg_token = ""\n', ["seg_token", "empty"]),
    "list of numbers": ("model.toml", "[lora]\ntarget_modules = [1, 2]\n", ["target_modules"]),
    "gguf number": ("model.toml", "[llm]\ngguf_file = 3\n", ["gguf_file"]),
    "not UTF-8": ("model.toml", b"[llm]\nsource = \"\xff\xfe\"\n", ["not UTF-8"]),
}


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_configuration_values_are_refused_by_ask(case, volume, tmp_path):
    name, content, words = CONFIG_CASES[case]
    config = _write(tmp_path / name, content)
    line = assert_refused_early(ask(volume, tmp_path, "--base", "--config", config), *words)
    assert str(config) in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["nan (TOML)", "Infinity (JSON)", "negative grid"])
def test_bad_configuration_values_are_refused_by_serve(case, tmp_path):
    name, content, words = CONFIG_CASES[case]
    config = _write(tmp_path / name, content)
    assert_refused_early(medsegr("serve", "--port", "0", "--base", "--config", config), *words)


@pytest.mark.parametrize("content", [
    "", "[model]\nvisual_grid = 64\nmask_threshold = 0.999\n",
    "[generation]\ntemperature = 0\nmax_new_tokens = 1\n[lora]\ndropout = 0.0\n",
    '[model]\nvisual_grid = 1\n[generation]\nembedding_cache_dtype = "bfloat16"\n',
    '[llm]\ngguf_file = "model.Q8_0.gguf"\n',
])
def test_sound_configuration_values_pass(content, volume, tmp_path):
    """The configuration passes; the run stops at the next check (--out)."""
    config = _write(tmp_path / "model.toml", content)
    proc = medsegr("ask", volume, "Where is the liver?", "--base", "--config", config,
                   "--out", too_long_out(tmp_path))
    assert_refused_early(proc, "--out", "300 bytes")


def test_shipped_configurations_pass():
    from medsegr.config import MedSegRConfig

    MedSegRConfig.from_file(ROOT / "configs" / "model-default.toml")
    MedSegRConfig.from_dict(MedSegRConfig.tiny().to_dict())
    MedSegRConfig.from_dict(MedSegRConfig().to_dict())


@pytest.mark.parametrize("option, value", [
    ("--request-timeout", "nan"), ("--session-idle", "inf"), ("--max-session-memory", "-1"),
    ("--max-upload", "0"), ("--max-queue", "0"), ("--max-sessions", "many"),
    ("--device", "tpu"),
])
def test_bad_serve_option_values_are_refused_by_the_parser(option, value):
    assert_refused_early(medsegr("serve", "--port", "0", option, value), option)


# -- the real console script ---------------------------------------------------------------

def test_the_installed_command_refuses_the_same_way(volume, tmp_path):
    script = Path(sys.executable).with_name("medsegr")
    if not script.is_file():
        pytest.skip("no medsegr console script beside this Python")
    proc = subprocess.run([str(script), "ask", str(volume), "Where?", "--server",
                           "ftp://127.0.0.1/", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert_refused_early(proc, "--server", "scheme 'ftp'")


# -- what `make demo` prints -----------------------------------------------------------------

def test_loading_a_checkpoint_emits_no_deprecation_warning(tmp_path):
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` while it wraps the
    LLM in the checkpoint's adapter; loading a checkpoint (what ``make demo`` does) must
    not show that warning to the user. The property itself still warns, so this test
    would see it."""
    import warnings

    from medsegr.config import MedSegRConfig
    from medsegr.modeling.builder import build_model
    from medsegr.modeling.checkpoint import from_pretrained, save_pretrained

    model = build_model(MedSegRConfig.tiny(), device="cpu", with_lora=True)
    path = save_pretrained(model, tmp_path / "ckpt")
    with pytest.warns(FutureWarning, match="is_gradient_checkpointing"):
        model.llm.get_base_model().is_gradient_checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert from_pretrained(path, device="cpu").fine_tuned


def test_a_non_dicom_input_gets_one_quiet_note(capsys):
    from medsegr.cli.outputs import DICOM_SEG_NOTE, print_dicom_seg_messages
    from medsegr.io.dicom_seg import DicomSegPlan

    print_dicom_seg_messages(DicomSegPlan(None, "DICOM SEG needs a DICOM series input"), False)
    assert capsys.readouterr().err.splitlines() == [DICOM_SEG_NOTE]
    print_dicom_seg_messages(DicomSegPlan(None, "not requested", declined=True), False)
    assert capsys.readouterr().err == ""
    print_dicom_seg_messages(DicomSegPlan(None, "the series has gaps"), True)
    assert capsys.readouterr().err.splitlines() == ["medsegr: warning: no DICOM SEG: the series has gaps"]


def test_every_checked_key_is_a_configuration_key():
    """The value tables name keys that exist (a renamed key would go unchecked)."""
    import dataclasses

    from medsegr import config

    keys = {(section.name, fld.name) for section in dataclasses.fields(config.MedSegRConfig)
            for fld in dataclasses.fields(section.default_factory())}
    tables = [*config.NUMBER_RANGES, *config.OPEN_RANGES, *config.CHOICES, *config.NON_EMPTY]
    assert not set(tables) - keys, sorted(set(tables) - keys)
