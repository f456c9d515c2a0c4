"""Size limits on input images, shared by ``medsegr ask`` and ``medsegr serve``.

Every reader checks them from the file header, before it allocates the voxels or
inflates compressed data past them, so a small file that declares (or inflates to)
a huge image is refused with a one-line reason instead of exhausting memory.

Standard library only: the server's wire codec imports this module.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

from medsegr.errors import InputError

MIB = 1024 * 1024

#: most voxels an image may have (512 x 512 x 1024)
DEFAULT_MAX_VOXELS = 512 * 512 * 1024
#: most bytes the decoded voxel data of an image may take (before it becomes float32)
DEFAULT_MAX_BYTES = 1024 * MIB
#: longest image side, in voxels
DEFAULT_MAX_SIDE = 16384


class ImageTooLarge(InputError):
    """An image is larger than the limits allow; ``limit`` names the one exceeded."""

    code = "too_large"

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class ImageLimits:
    """How large an input image may be."""

    #: most voxels (all axes multiplied)
    max_voxels: int = DEFAULT_MAX_VOXELS
    #: most bytes of decoded voxel data (voxels x components x bytes per component)
    max_bytes: int = DEFAULT_MAX_BYTES
    #: most voxels along any one axis
    max_side: int = DEFAULT_MAX_SIDE

    def __post_init__(self) -> None:
        for name in ("max_voxels", "max_bytes", "max_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"image limit {name} must be a positive whole number, got {value!r}")

    def check(self, sizes: Sequence[int], bytes_per_voxel: int, source: str) -> None:
        """Raise :class:`ImageTooLarge` when an image of ``sizes`` (any axis order) with
        ``bytes_per_voxel`` bytes of data per voxel exceeds a limit."""
        shown = " x ".join(str(s) for s in sizes)
        longest = max(sizes, default=0)
        if longest > self.max_side:
            raise ImageTooLarge(f"{source} is {shown} voxels: a side of {longest:,} exceeds the "
                                f"limit of {self.max_side:,} (max_side)", "max_side")
        voxels = math.prod(sizes)
        if voxels > self.max_voxels:
            raise ImageTooLarge(f"{source} has {voxels:,} voxels ({shown}): more than the limit "
                                f"of {self.max_voxels:,} (max_voxels)", "max_voxels")
        data = voxels * bytes_per_voxel
        if data > self.max_bytes:
            raise ImageTooLarge(f"{source} holds {data:,} bytes of voxel data ({shown} x "
                                f"{bytes_per_voxel} bytes): more than the limit of "
                                f"{self.max_bytes:,} (max_bytes)", "max_bytes")

    def as_dict(self) -> dict[str, int]:
        return {"max_voxels": self.max_voxels, "max_bytes": self.max_bytes,
                "max_side": self.max_side}


#: command-line option -> the limit it sets
LIMIT_OPTIONS = {"max_voxels": "--max-voxels", "max_bytes": "--max-bytes", "max_side": "--max-side"}


def add_limit_options(parser: argparse.ArgumentParser, what: str = "an input image") -> None:
    """The options that raise (or lower) the image limits, for ``ask`` and ``serve``."""
    from medsegr.option_types import byte_size, positive_int

    parser.add_argument("--max-voxels", type=positive_int, default=DEFAULT_MAX_VOXELS,
                        metavar="N", help=f"most voxels {what} may have "
                        f"(default {DEFAULT_MAX_VOXELS:,} = 512*512*1024)")
    parser.add_argument("--max-bytes", type=byte_size, default=DEFAULT_MAX_BYTES, metavar="SIZE",
                        help=f"most bytes the decoded voxel data of {what} may take, e.g. 2G "
                        "(default 1G)")
    parser.add_argument("--max-side", type=positive_int, default=DEFAULT_MAX_SIDE, metavar="N",
                        help=f"most voxels along any axis of {what} (default {DEFAULT_MAX_SIDE:,})")


def limits_from_args(args: argparse.Namespace) -> ImageLimits:
    return ImageLimits(max_voxels=args.max_voxels, max_bytes=args.max_bytes,
                       max_side=args.max_side)
