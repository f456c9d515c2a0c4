"""Checks that run before any image is read or any model is loaded: the question's
reserved tokens, the engine's token, the output folder. Each failure is an :class:`InputError` with a one-line reason that
names the option and the fix (the command line turns it into exit status 2).

Light: the standard library only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from medsegr.errors import InputError

#: the largest token file read (a token is a line; anything this big is another file)
MAX_TOKEN_FILE_BYTES = 64 * 1024
#: the longest file name assumed where the file system does not say
DEFAULT_NAME_MAX = 255
#: the longest path assumed where the file system does not say
DEFAULT_PATH_MAX = 4096
#: bytes the results add below ``--out``: the staging folder and the longest file name
STAGING_PATH_BYTES = len("/.medsegr-xxxxxxxx/segmentation.seg.nrrd") + 16


def shown(path: str | os.PathLike[str], width: int = 160) -> str:
    """``path`` for a message: at most ``width`` characters, elided in the middle."""
    text = str(path)
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return f"{text[:half]}…{text[-half:]}"


# -- the question -----------------------------------------------------------------------

def check_reserved_tokens(question: str, reserved: tuple[str, ...]) -> str:
    """``question`` unless it holds one of the model's ``reserved`` marker tokens (such as
    ``[SEG]`` and ``<image>``), which only the model itself may write."""
    for token in reserved:
        if token in question:
            raise InputError(f"the question contains the reserved token {token!r}, the model's "
                             "own marker; rephrase the question without it")
    return question


# -- tokens ---------------------------------------------------------------------------

def check_token_text(token: str, where: str) -> str:
    """``token`` if it is visible ASCII (letters, digits, punctuation: what an HTTP
    ``Authorization`` header carries); ``where`` names its source in the message."""
    bad = sorted({c for c in token if not 0x21 <= ord(c) <= 0x7E})
    if bad:
        codes = ", ".join(f"U+{ord(c):04X}" for c in bad[:5])
        raise InputError(f"the token in {where} holds characters other than visible ASCII "
                         f"({codes}); use letters, digits and punctuation only, e.g. the output "
                         "of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return token


def read_token_file(path: Path) -> str:
    """The token on the first line of the file ``path``: it must be a readable file of
    UTF-8 text without NUL bytes, at most 64 KiB, whose first line is a token of visible
    ASCII. A pipe (``--token-file <(command)``) is read too."""
    where = f"the token file {shown(path)}"
    if path.is_dir():
        raise InputError(f"cannot read {where}: it is a folder; pass the file that holds the "
                         "token")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {where}: {exc.strerror or exc}; pass a file you can "
                         "read that holds the token") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise InputError(f"{where} is larger than {MAX_TOKEN_FILE_BYTES // 1024} KiB; it should "
                         "hold only the token, on its first line")
    if b"\0" in data:
        raise InputError(f"{where} holds NUL bytes (a binary file?); it should hold only the "
                         "token, as text on its first line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}: "
                         "a binary file?); it should hold only the token, as text on its first "
                         "line") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise InputError(f"{where} is empty; write the token on its first line")
    return check_token_text(token, shown(path))


# -- the output folder ----------------------------------------------------------------

def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists (``.`` for a relative path with none)."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
        except OSError:
            continue
    return Path(".")


def _path_limit(where: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(where, name))
    except (OSError, ValueError):
        return default


def check_path_lengths(out: Path, option: str = "--out") -> None:
    """Refuse an output path the file system cannot hold: a name longer than its
    NAME_MAX (255 bytes on most), or a whole path, with the result files below it,
    longer than its PATH_MAX."""
    base = _nearest_existing(out)
    name_max = _path_limit(base, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    path_max = _path_limit(base, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    try:
        for part in out.parts:
            size = len(os.fsencode(part))
            if size > name_max and part != out.anchor:
                raise InputError(f"{option} {shown(out)}: the name {shown(part, 40)!r} is {size} "
                                 f"bytes, longer than the {name_max} bytes a file name may have "
                                 f"here; choose a shorter {option}")
        total = len(os.fsencode(os.path.abspath(out))) + STAGING_PATH_BYTES
    except UnicodeEncodeError:
        raise InputError(f"{option} {shown(out)!r} cannot be encoded as a file name here; "
                         f"choose another {option}") from None
    if total > path_max:
        raise InputError(f"{option} {shown(out)}: the path is too long ({total} bytes with the "
                         f"result files, at most {path_max} here); choose a shorter {option}")


def check_output_folder(out: Path) -> None:
    """Refuse an output path that cannot become a folder of results, before any work:
    its names must fit the file system, and it (or its nearest existing parent) must be
    a folder where a file can be made."""
    check_path_lengths(out)
    try:
        _check_writable_folder(out)
    except OSError as exc:
        raise InputError(f"cannot write results to {shown(out)}: {exc.strerror or exc}; "
                         "choose another --out") from None


def _check_writable_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {shown(out)} exists and is not a folder; choose a folder")
    parent = _nearest_existing(out)
    if not parent.is_dir():
        raise InputError(f"cannot write results to {shown(out)}: {shown(parent)} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write results to {shown(out)}: {shown(parent)} is not writable "
                         "(permission denied); choose another --out")
    # a real probe: /proc, read-only mounts and full disks pass os.access
    with tempfile.NamedTemporaryFile(prefix=".medsegr-probe-", dir=parent) as probe:
        probe.write(b"x")
        probe.flush()
