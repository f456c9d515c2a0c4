"""Pinned source archives: size and hash checks, missing and damaged archives, the
.deb reader, downloads that never leave a half-written file (small fake archives)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from medsegr.cli.commands import main
from medsegr.data import archives
from medsegr.data.archives import Archive
from medsegr.errors import InputError


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _deb(members: dict[str, bytes]) -> bytes:
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in (("debian-binary", b"2.0\n"), ("control.tar.xz", b"x" * 7),
                       ("data.tar.xz", payload.getvalue())):
        header = (f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}".encode() + b"`\n")
        assert len(header) == 60
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _pinned(data: bytes, file: str, kind: str, members: dict[str, str], url: str = "") -> Archive:
    return Archive(name=file.split(".")[0], file=file, url=url or f"file:///nowhere/{file}",
                   sha256=hashlib.sha256(data).hexdigest(), size=len(data), kind=kind, members=members)


@pytest.fixture()
def fake_tar(tmp_path) -> tuple[Archive, bytes, Path]:
    data = _tar_gz({"pkg-1.0/data/a.txt": b"alpha", "pkg-1.0/data/b.txt": b"beta", "pkg-1.0/other": b"x"})
    return _pinned(data, "pkg-1.0.tar.gz", "tar", {"a.txt": "pkg-1.0/data/a.txt"}), data, tmp_path / "cache"


def test_member_extracted_once_and_only_what_is_needed(fake_tar):
    archive, data, cache = fake_tar
    cache.mkdir()
    (cache / archive.file).write_bytes(data)
    path = archives.member_path(archive, "a.txt", cache)
    assert path.read_bytes() == b"alpha"
    assert sorted(p.name for p in path.parent.iterdir()) == [".extracted.json", "a.txt"]
    (cache / archive.file).unlink()  # extracted members are used without the archive
    assert archives.member_path(archive, "a.txt", cache).read_bytes() == b"alpha"


def test_missing_archive_names_the_file_and_the_command(fake_tar):
    archive, _, cache = fake_tar
    with pytest.raises(InputError, match=r"pkg-1\.0\.tar\.gz is missing: run `medsegr data fetch`"):
        archives.member_path(archive, "a.txt", cache)


def test_wrong_size_and_wrong_hash_are_another_version(fake_tar):
    archive, data, cache = fake_tar
    cache.mkdir()
    target = cache / archive.file
    target.write_bytes(data + b"!")
    with pytest.raises(InputError, match=r"pkg-1\.0\.tar\.gz has \d+ bytes, not the .* another version"):
        archives.verify(archive, cache=cache)
    target.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(InputError, match=r"pkg-1\.0\.tar\.gz has SHA-256 [0-9a-f]{64}, not the pinned"):
        archives.member_path(archive, "a.txt", cache)
    assert not (cache / archive.name).exists()


def test_corrupted_archive_with_matching_pin_leaves_nothing(tmp_path):
    good = _tar_gz({"p/a.txt": b"alpha" * 1000})
    broken = good[: len(good) // 2]
    archive = _pinned(broken, "broken.tar.gz", "tar", {"a.txt": "p/a.txt"})
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / archive.file).write_bytes(broken)
    with pytest.raises(InputError, match=r"cannot read .*broken\.tar\.gz.*damaged archive"):
        archives.member_path(archive, "a.txt", cache)
    assert sorted(p.name for p in cache.iterdir()) == ["broken.tar.gz"]


def test_archive_of_another_version_lacks_the_member(tmp_path):
    data = _tar_gz({"p/other.txt": b"x"})
    archive = _pinned(data, "p.tar.gz", "tar", {"a.txt": "p/a.txt"})
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / archive.file).write_bytes(data)
    with pytest.raises(InputError, match=r"lacks p/a\.txt: another version of p\.tar\.gz"):
        archives.member_path(archive, "a.txt", cache)


def test_deb_is_read_without_dpkg(tmp_path):
    data = _deb({"usr/share/x/t.nii.gz": b"image", "usr/share/x/u.txt": b"u"})
    archive = _pinned(data, "x_1.0_all.deb", "deb", {"t.nii.gz": "usr/share/x/t.nii.gz"})
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / archive.file).write_bytes(data)
    assert archives.member_path(archive, "t.nii.gz", cache).read_bytes() == b"image"


def test_not_a_deb(tmp_path):
    data = b"PK\x03\x04 not an ar archive"
    archive = _pinned(data, "y_1.0_all.deb", "deb", {"t": "t"})
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / archive.file).write_bytes(data)
    with pytest.raises(InputError, match=r"y_1\.0_all\.deb is not a Debian package"):
        archives.member_path(archive, "t", cache)


def test_fetch_checks_the_download_and_writes_atomically(tmp_path, monkeypatch):
    data = _tar_gz({"p/a.txt": b"alpha"})
    served = tmp_path / "served" / "p-1.tar.gz"
    served.parent.mkdir()
    served.write_bytes(data)
    archive = _pinned(data, "p-1.tar.gz", "tar", {"a.txt": "p/a.txt"}, url=served.as_uri())
    monkeypatch.setitem(archives.ARCHIVES, "p-1", archive)
    cache = tmp_path / "cache"
    assert main(["data", "fetch", "--into", str(cache), "--archives", "p-1", "--quiet"]) == 0
    assert (cache / "p-1.tar.gz").read_bytes() == data
    assert (cache / archive.name / "a.txt").read_bytes() == b"alpha"
    # a server sending another version: an error, and nothing half-written in the cache
    served.write_bytes(_tar_gz({"p/a.txt": b"ALPHA"}))
    other = tmp_path / "other"
    with pytest.raises(InputError, match=r"not the pinned|another version"):
        archives.fetch(("p-1",), other)
    assert list(other.iterdir()) == []
    # an unreachable server
    monkeypatch.setitem(archives.ARCHIVES, "p-1", _pinned(data, "p-1.tar.gz", "tar", {},
                                                          url=(tmp_path / "gone.tar.gz").as_uri()))
    with pytest.raises(InputError, match=r"cannot download p-1\.tar\.gz"):
        archives.fetch(("p-1",), other)
    assert list(other.iterdir()) == []


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEGR_SOURCES", str(tmp_path / "s"))
    assert archives.cache_dir() == tmp_path / "s"
    monkeypatch.delenv("MEDSEGR_SOURCES")
    assert archives.cache_dir() == Path.home() / ".cache" / "medsegr" / "sources"


def test_pins_are_registry_files():
    for archive in archives.ARCHIVES.values():
        assert archive.url.startswith(("https://files.pythonhosted.org/", "http://deb.debian.org/debian/pool/"))
        assert archive.url.endswith(archive.file) and len(archive.sha256) == 64 and archive.size > 0
