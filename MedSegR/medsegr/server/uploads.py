"""Uploaded images: their memory cost is known, and checked, before they are decoded.

A gzip NRRD of a few hundred KiB can declare a gigabyte-sized volume. The upload
route therefore reads the body as a stream and, as soon as the NRRD header is
complete, computes what the image will cost once decoded (:func:`declared_sizes`,
:func:`session_bytes`) and refuses it (413) before anything is decoded or even the
rest of the body is kept: the remaining bytes are read and dropped so that the
client gets the answer. :class:`DecodeBudget` bounds the memory of the uploads
being decoded at the same time.

Only the ``sizes`` field is read here; everything else about the file (type,
encoding, geometry, data size) is :func:`medsegr.io.nrrd_codec.decode_nrrd`'s to
check.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

from medsegr.server.errors import ApiError

#: a header is complete within this many bytes (longer ones are refused by the decoder)
MAX_HEADER_BYTES = 64 * 1024
#: what a session holds per voxel: the image as float32 and its normalised float32 copy
SESSION_BYTES_PER_VOXEL = 4 + 4

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_end(data: bytes | bytearray) -> int | None:
    """Where the NRRD header ends (the first empty line) in ``data``, or None."""
    match = _HEADER_END.search(data, 0, MAX_HEADER_BYTES + 4)
    return match.start() if match else None


def declared_sizes(head: bytes | bytearray) -> list[int] | None:
    """The ``sizes`` an NRRD header declares, or None when ``head`` does not start
    with a complete, readable header that has them (the decoder says what is wrong)."""
    end = header_end(head)
    if not bytes(head[:7]) == b"NRRD000" or end is None:
        return None
    try:
        text = bytes(head[:end]).decode("ascii")
    except UnicodeDecodeError:
        return None
    for line in text.split("\n")[1:]:
        line = line.rstrip("\r")
        if line.startswith("#") or ":=" in line:
            continue
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "sizes":
            try:
                sizes = [int(v) for v in value.split()]
            except ValueError:
                return None
            return sizes if sizes and all(s > 0 for s in sizes) else None
    return None


def session_bytes(sizes: list[int]) -> int:
    """The session memory an image of these sizes takes once decoded."""
    return math.prod(sizes) * SESSION_BYTES_PER_VOXEL


async def read_upload(chunks: AsyncIterator[bytes], check: Callable[[bytes], None]) -> bytes:
    """The body from ``chunks``; ``check(head)`` runs once the NRRD header is complete
    (or ``MAX_HEADER_BYTES`` arrived, or the body ended). When it raises, the rest of
    the body is read without keeping it, and the error is raised."""
    data = bytearray()
    checked = False
    async for chunk in chunks:
        data += chunk
        if checked or (header_end(data) is None and len(data) <= MAX_HEADER_BYTES):
            continue
        checked = True
        try:
            check(bytes(data[:MAX_HEADER_BYTES + 4]))
        except ApiError:
            data = bytearray()
            async for _ in chunks:  # drained, not kept: the client gets the answer
                pass
            raise
    if not checked:
        check(bytes(data))
    return bytes(data)


class DecodeBudget:
    """Memory reserved by uploads being decoded at the same time: a reservation that
    would take the total above ``max_bytes`` is refused (503, try again)."""

    def __init__(self, max_bytes: int, retry_after_s: int = 2) -> None:
        self.max_bytes = int(max_bytes)
        self.retry_after_s = int(retry_after_s)
        self.reserved = 0
        self._lock = threading.Lock()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        with self._lock:
            if self.reserved and self.reserved + nbytes > self.max_bytes:
                raise ApiError(503, "busy", f"other uploads are being decoded "
                               f"({self.reserved / 2**20:.0f} MiB); try again in "
                               f"{self.retry_after_s} s", {"Retry-After": str(self.retry_after_s)})
            self.reserved += nbytes
        try:
            yield
        finally:
            with self._lock:
                self.reserved -= nbytes


__all__ = ["DecodeBudget", "MAX_HEADER_BYTES", "SESSION_BYTES_PER_VOXEL", "declared_sizes",
           "header_end", "read_upload", "session_bytes"]
