"""Writing a whole folder so that readers never see it half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``.

    An existing ``path`` is moved aside first and deleted only once the new folder is in
    place. On any exception the temporary folder is deleted and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
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
