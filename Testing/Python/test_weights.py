"""Weight files: pinned hashes are checked, and a file's hash is computed once."""

from __future__ import annotations

import os

import pytest

import medsegr.modeling.weights as weights
from medsegr.errors import WeightError


def test_hashes_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEGR_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights" * 1000)
    (folder / "notes.txt").write_text("not a weight file", encoding="utf-8")
    calls = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: calls.append(p) or real(p))
    first = weights.folder_hashes(folder)
    assert list(first) == ["sha256:model.safetensors"] and len(calls) == 1
    assert weights.folder_hashes(folder) == first and len(calls) == 1  # remembered
    (folder / "model.safetensors").write_bytes(b"changed" * 1000)
    os.utime(folder / "model.safetensors", ns=(1, 1))
    assert weights.folder_hashes(folder) != first and len(calls) == 2  # hashed again


def test_verify_file_checks_size_and_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEGR_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    good = weights.sha256_file(path)
    assert weights.verify_file(path, 3, good, "w") == path
    with pytest.raises(WeightError, match="3 bytes, expected 4"):
        weights.verify_file(path, 4, good, "w")
    with pytest.raises(WeightError, match="SHA-256 mismatch"):
        weights.verify_file(path, 3, "0" * 64, "w")
    with pytest.raises(WeightError, match="missing"):
        weights.verify_file(tmp_path / "nope.bin", 3, good, "w")
    with pytest.raises(WeightError, match="not installed"):
        weights.package_dir("no_such_weight_package_xyz", "no-such==1.0")
