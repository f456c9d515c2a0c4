"""Uploaded images: their memory cost is known, and checked, before they are decoded.

A gzip NRRD of a few hundred KiB can declare a gigabyte-sized volume. The upload
route therefore reads the body as a stream and, as soon as the NRRD header is
complete, reads and checks that header (:func:`upload_header`, with the codec's own
:func:`medsegr.io.nrrd_codec.nrrd_info`), computes what the image will cost once
decoded (:func:`session_bytes`) and refuses it (413) before anything is decoded or
even the rest of the body is kept: the remaining bytes are read and dropped so that
the client gets the answer. :class:`DecodeBudget` bounds the memory of the uploads
being decoded at the same time.

A header that cannot be read, and what only the data can tell (its size, a gzip
stream that inflates past the declared size), are
:func:`medsegr.io.nrrd_codec.decode_nrrd`'s to report (400 ``bad_nrrd``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import numpy as np

from medsegr.io.images import kept_type
from medsegr.io.limits import ImageLimits
from medsegr.io.nrrd_codec import MAX_HEADER_BYTES, NrrdError, NrrdInfo, NrrdTooLarge, nrrd_info
from medsegr.server.errors import ApiError

#: what a session holds per voxel at most: the image as float32 and its normalised
#: float32 copy (an 8- or 16-bit image is kept in its own type: 1 or 2 bytes, not 4)
SESSION_BYTES_PER_VOXEL = 4 + 4

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_end(data: bytes | bytearray) -> int | None:
    """Where the NRRD header ends (the first empty line) in ``data``, or None."""
    match = _HEADER_END.search(data, 0, MAX_HEADER_BYTES + 4)
    return match.start() if match else None


def upload_header(head: bytes | bytearray, limits: ImageLimits) -> NrrdInfo | None:
    """The header of an uploaded NRRD (``head``: its first bytes), read and checked as
    the decoder will read it (:func:`medsegr.io.nrrd_codec.nrrd_info`), against
    ``limits`` too: its sides and voxels, and the decoded bytes its type declares.
    None when the header cannot be read: the decoder reports that (400 ``bad_nrrd``,
    the same message) once the body is read, which the body size limit bounds.

    Raises:
        ApiError: 413 ``too_many_voxels`` for an image beyond ``limits``.
    """
    try:
        return nrrd_info(head, max_voxels=limits.max_voxels, limits=limits)
    except NrrdTooLarge as exc:
        raise ApiError(413, "too_many_voxels", str(exc)) from None
    except NrrdError:
        return None


def session_bytes(info: NrrdInfo | None) -> int:
    """The session memory an image with this header takes once decoded (0 when the
    header cannot be read: such an image is never decoded): the image in its own type
    when that is one of :data:`medsegr.io.images.STORED_TYPES` (else float32), and its
    normalised float32 copy."""
    return 0 if info is None else image_session_bytes(info.dtype, info.voxels)


def image_session_bytes(dtype: np.dtype, voxels: int) -> int:
    """The session memory of ``voxels`` voxels of ``dtype`` as the server keeps them:
    the image in :func:`medsegr.io.images.kept_type` and its normalised float32 copy."""
    return voxels * (kept_type(dtype).itemsize + 4)


async def read_upload(chunks: AsyncIterator[bytes], check: Callable[[bytes], object]) -> bytes:
    """The body from ``chunks``; ``check(head)`` runs once the NRRD header is complete
    (or ``MAX_HEADER_BYTES`` arrived, or the body ended). When it raises
    :class:`ApiError`, the rest of the body is read without keeping it, and the error
    is raised."""
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


__all__ = ["DecodeBudget", "MAX_HEADER_BYTES", "SESSION_BYTES_PER_VOXEL", "header_end",
           "image_session_bytes",
           "read_upload", "session_bytes", "upload_header"]
