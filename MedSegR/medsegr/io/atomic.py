"""Writing files and folders so that readers never see them half-written.

Everything here writes beside the destination under a hidden temporary name and
renames into place (``os.replace``, atomic within one file system); on any error
the temporary file or folder is deleted and the destination is left as it was.

* :func:`atomic_write_bytes` / :func:`atomic_write_text`: a whole file from memory;
* :func:`atomic_path`: a temporary path for writers that need one (SimpleITK,
  safetensors ``save_file``, matplotlib);
* :func:`atomic_folder`: a whole folder; :func:`replace_folder` moves a finished one
  into place;
* :func:`atomic_files`: several files into one folder together.

Files are not fsync'ed: after a power cut the newest version may be missing, but a
reader never sees a torn file under the destination's name. New files get the
permissions a plain ``open()`` would give them (umask applies).

Standard library only: the 3D Slicer module and the client import this without numpy
or torch.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_files", "atomic_folder", "atomic_path", "atomic_write_bytes",
           "atomic_write_text", "replace_folder"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is moved onto ``path``.

    The temporary name starts with a dot and ends in ``suffix`` (by default the last
    extension of ``path``, so writers that choose the format by extension work); the
    caller creates the file there. The folder of ``path`` must exist. On any exception
    the temporary file is deleted and ``path`` is untouched.
    """
    target = Path(path)
    ending = target.suffix if suffix is None else suffix
    temporary = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp{ending}"
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); returns the path."""
    target = Path(path)
    with atomic_path(target) as temporary, temporary.open("xb") as handle:
        handle.write(data)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`), newlines translated as
    :meth:`pathlib.Path.write_text` does; returns the path."""
    target = Path(path)
    with atomic_path(target) as temporary, temporary.open("x", encoding=encoding) as handle:
        handle.write(text)
    return target


def replace_folder(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move the folder ``source`` onto ``target`` (same file system).

    An existing ``target`` is moved aside first, put back if the move fails, and
    deleted only once ``source`` is in place.
    """
    new, destination = Path(source), Path(target)
    old: Path | None = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{secrets.token_hex(4)}")
        os.replace(destination, old)
    try:
        os.replace(new, destination)
    except BaseException:
        if old is not None:
            os.replace(old, destination)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``
    (:func:`replace_folder`).

    On any exception the temporary folder is deleted and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike[str], prefix: str = ".staging-") -> Iterator[Path]:
    """Yield an empty hidden staging folder inside ``folder``; on success every file
    written into it is moved into ``folder`` (replacing files of the same name).

    Unlike :func:`atomic_folder` the other entries of ``folder`` are kept. On any
    exception, while writing or while moving, ``folder`` is left exactly as it was:
    files already moved are put back, the staging folder is deleted, and folders this
    call created (``folder`` and missing parents) are removed again.
    """
    target = Path(folder)
    created = _missing_ancestors(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=prefix, dir=target))
    except BaseException:
        _remove_created(created)
        raise
    backup = stage / ".replaced"
    moved: list[str] = []
    try:
        yield stage
        names = sorted(p.name for p in stage.iterdir() if p.name != backup.name)
        backup.mkdir()
        for name in names:
            if (target / name).is_dir() and not (target / name).is_symlink():
                raise IsADirectoryError(21, "a folder is in the way of a result file",
                                        str(target / name))
            moved.append(name)
            if (target / name).exists() or (target / name).is_symlink():
                os.replace(target / name, backup / name)
            os.replace(stage / name, target / name)
    except BaseException:
        for name in reversed(moved):  # undo: the new file out, the earlier one back
            with contextlib.suppress(OSError):
                if (backup / name).exists() or (backup / name).is_symlink():
                    os.replace(backup / name, target / name)
                elif not (stage / name).exists():
                    (target / name).unlink()
        shutil.rmtree(stage, ignore_errors=True)
        _remove_created(created)
        raise
    shutil.rmtree(stage, ignore_errors=True)


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, outermost first."""
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            break
        missing.append(candidate)
    return list(reversed(missing))


def _remove_created(created: list[Path]) -> None:
    if created:
        shutil.rmtree(created[0], ignore_errors=True)
