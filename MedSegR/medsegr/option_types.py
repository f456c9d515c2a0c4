"""Value parsers for command-line options: each turns one option's text into a checked
value or raises :class:`argparse.ArgumentTypeError` with a one-line reason, so a bad
value is refused by the argument parser (exit status 2) before any work starts.

Light: the standard library only.
"""

from __future__ import annotations

import argparse
import math
import re
import urllib.parse

#: plane names and numpy axis names ``medsegr ask --axis`` accepts
AXIS_CHOICES = ("axial", "coronal", "sagittal", "k", "j", "i", "z", "y", "x", "0", "1", "2")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")
_SIZE_RE = re.compile(r"([0-9][0-9_]*)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _plain_int(text: str, what: str) -> int:
    """``text`` as an int: ASCII digits only (no signs, exponents or other scripts' digits)."""
    stripped = text.strip().replace("_", "")
    if not stripped.isascii() or not stripped.isdigit():
        raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {text!r}")
    return int(stripped)


def positive_int(text: str) -> int:
    value = _plain_int(text, "the value")
    if value < 1:
        raise argparse.ArgumentTypeError(f"the value must be at least 1, got {text!r}")
    return value


def positive_number(text: str) -> float:
    """A finite number above 0 (seconds, MiB): no NaN, no infinity."""
    try:
        value = float(text) if text.strip().isascii() else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > 1e12:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r}")
    return value


def slice_index(text: str) -> int:
    """A whole number; a negative one is kept, to be reported as out of range."""
    stripped = text.strip()
    negative = stripped.startswith("-")
    value = _plain_int(stripped[1:] if negative else stripped, "the slice index")
    return -value if negative else value


def new_tokens(text: str) -> int:
    value = _plain_int(text, "the token count")
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1024, got {text!r}")
    return value


def byte_size(text: str) -> int:
    """A size in bytes: ``1073741824``, ``1024M``, ``1GiB`` (binary units)."""
    match = _SIZE_RE.fullmatch(text.strip()) if text.isascii() else None
    if match is None:
        raise argparse.ArgumentTypeError(f"must be a size in bytes such as 1073741824, 1024M "
                                         f"or 1G, got {text!r}")
    value = int(match.group(1).replace("_", "")) * _SIZE_UNITS[(match.group(2) or "")[:1].lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def axis_name(text: str) -> str:
    name = text.strip().lower()
    if name not in AXIS_CHOICES:
        raise argparse.ArgumentTypeError(f"unknown axis {text!r} (use axial, coronal, sagittal, "
                                         "k, j, i or 0, 1, 2)")
    return name


def device_name(text: str) -> str:
    name = text.strip().lower()
    if not _DEVICE_RE.fullmatch(name):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (use auto, cpu, cuda or cuda:N)")
    return name


def _finite_numbers(text: str, counts: tuple[int, ...], what: str) -> tuple[float, ...]:
    parts = text.split(",")
    shown = " or ".join(str(c) for c in counts)
    if len(parts) not in counts:
        raise argparse.ArgumentTypeError(f"{what} must be {shown} comma-separated numbers, "
                                         f"got {text!r}")
    values = []
    for part in parts:
        try:
            if not part.strip().isascii():
                raise ValueError(part)
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be {shown} comma-separated numbers, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or abs(value) > 1e9:
            raise argparse.ArgumentTypeError(f"{what} numbers must be finite voxel indices, "
                                             f"got {text!r}")
        values.append(value)
    return tuple(values)


def box_hint(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1``: four finite numbers (in-plane voxel indices)."""
    x0, y0, x1, y1 = _finite_numbers(text, (4,), "a box")
    return (x0, y0, x1, y1)


def point_hint(text: str) -> tuple[float, float, int]:
    """``X,Y[,LABEL]``: two finite numbers and a label 1 (inside, the default) or 0 (outside)."""
    parts = text.split(",")
    if len(parts) == 3:
        label = parts[2].strip()
        if label not in ("0", "1"):
            raise argparse.ArgumentTypeError(f"a point's label must be 1 (inside) or 0 (outside), "
                                             f"got {text!r}")
        text = ",".join(parts[:2])
        x, y = _finite_numbers(text, (2,), "a point")
        return (x, y, int(label))
    x, y = _finite_numbers(text, (2,), "a point (X,Y[,LABEL])")
    return (x, y, 1)


def server_url(text: str) -> str:
    """An engine's base URL: ``http://`` or ``https://``, a host, an optional port
    (1..65535) and path; no user name or password (the token goes in --token-file), no
    query or fragment, no spaces or control characters."""
    url = text.strip()
    example = "use http://HOST:PORT, e.g. http://127.0.0.1:8765"
    if not url or not url.isprintable() or any(c.isspace() for c in url):
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL ({example})")
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: {exc} ({example})") from None
    if parsed.scheme not in ("http", "https"):
        shown = f"a URL of scheme {parsed.scheme!r}" if parsed.scheme else "not a URL"
        raise argparse.ArgumentTypeError(f"{text!r} is {shown}; the engine speaks HTTP "
                                         f"({example}, or https://)")
    if not parsed.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} names no host ({example})")
    try:
        port = parsed.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parsed.netloc.endswith(":")):
        raise argparse.ArgumentTypeError(f"{text!r} has no valid port (1..65535; {example})")
    if parsed.username is not None or parsed.password is not None:
        raise argparse.ArgumentTypeError(f"{text!r} holds a user name or password; pass the "
                                         "engine's token with --token-file instead")
    if parsed.query or parsed.fragment:
        raise argparse.ArgumentTypeError(f"{text!r} has a query or fragment; give the engine's "
                                         f"base URL ({example})")
    return url
