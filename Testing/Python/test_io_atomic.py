"""The atomic writers of :mod:`medsegr.io.atomic`: a failure at any point leaves the
destination exactly as it was and no temporary file or folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsegr.io.atomic import (atomic_folder, atomic_path, atomic_write_bytes, atomic_write_text,
                               replace_folder)


def test_write_bytes_and_text_replace_the_file_and_leave_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old", encoding="utf-8")
    assert atomic_write_bytes(target, b"\x00new\xff") == target
    assert target.read_bytes() == b"\x00new\xff"
    assert atomic_write_text(target, "gr\u00fc\u00dfe\n") == target
    assert target.read_text(encoding="utf-8") == "gr\u00fc\u00dfe\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_failure_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "transcript.md"
    target.write_text("old text", encoding="utf-8")
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as temporary:
            temporary.write_text("half of the new te", encoding="utf-8")
            seen.append(temporary)
            assert temporary.is_file()  # the cleanup below has something to remove
            raise RuntimeError("disk full")
    assert target.read_text(encoding="utf-8") == "old text"
    assert not seen[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transcript.md"]


def test_a_text_that_cannot_be_encoded_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "caf\u00e9", encoding="ascii")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_failing_rename_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep").write_text("kept", encoding="utf-8")  # a non-empty folder is in the way
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"data")
    assert (target / "keep").read_text(encoding="utf-8") == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_the_temporary_is_hidden_beside_the_target_and_keeps_the_extension(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "embedding.safetensors") as temporary:
        assert temporary.parent == tmp_path
        assert temporary.name.startswith(".embedding.safetensors.")
        assert temporary.suffix == ".safetensors"
        temporary.write_bytes(b"x")
    with atomic_path(tmp_path / "labels.nii.gz", suffix=".nii.gz") as temporary:
        assert temporary.name.endswith(".tmp.nii.gz")
        temporary.write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedding.safetensors", "labels.nii.gz"]


def test_new_files_get_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("a", encoding="utf-8")
    atomic_write_text(tmp_path / "atomic.txt", "a")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode


def test_a_missing_folder_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "file.txt", "a")
    assert list(tmp_path.iterdir()) == []


def test_replace_folder_puts_the_old_folder_back_when_the_move_fails(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "train.jsonl").write_text("old", encoding="utf-8")
    with pytest.raises(FileNotFoundError):
        replace_folder(tmp_path / "vanished-staging", target)
    assert (target / "train.jsonl").read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_replace_folder_replaces_and_deletes_the_old_one(tmp_path: Path) -> None:
    target, staging = tmp_path / "dataset", tmp_path / ".staging"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    staging.mkdir()
    (staging / "new.txt").write_text("new", encoding="utf-8")
    replace_folder(staging, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_atomic_folder_keeps_the_old_folder_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"ne")
            raise KeyboardInterrupt
    assert (target / "model.safetensors").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
    with atomic_folder(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new")
    assert (target / "model.safetensors").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_the_checks_above_can_fail(tmp_path: Path) -> None:
    """A direct (non-atomic) write breaks the old file, which the failure tests above
    would see."""
    target = tmp_path / "transcript.md"
    target.write_text("old text", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with target.open("w", encoding="utf-8") as handle:
            handle.write("half of the new te")
            raise RuntimeError("disk full")
    assert target.read_text(encoding="utf-8") != "old text"
