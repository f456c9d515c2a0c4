"""Status lines for the slow steps of loading a model (reading a checkpoint, the
first-run GGUF conversion, packing or quantising the int8 language model).

Those steps have no natural count, so each one reports a line when it starts. The
lines are logged (``medsegr.modeling.load_status`` at INFO) and handed to the listeners that
:func:`listening` installs: the CLI prints them on stderr (through ``tqdm.write`` so
they never break a progress bar), ``medsegr serve`` prints them into its output, which
the 3D Slicer module shows as the engine's status while it starts.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

#: what every printed status line starts with (the Slicer module looks for it)
PREFIX = "medsegr: "

_listeners: list[Callable[[str], None]] = []
_lock = threading.Lock()


def report(message: str) -> None:
    """Announce the step that starts now."""
    log.info("%s", message)
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(message)
        except Exception:  # a broken listener never stops loading
            log.debug("a load-status listener failed", exc_info=True)


@contextlib.contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Hand every status line to ``listener`` while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def print_to_stderr(message: str) -> None:
    """A listener that prints ``medsegr: MESSAGE`` on stderr."""
    from tqdm import tqdm

    tqdm.write(PREFIX + message, file=sys.stderr)


def print_to_stdout(message: str) -> None:
    """A listener that prints ``medsegr: MESSAGE`` on stdout, flushed (``medsegr serve``)."""
    print(PREFIX + message, flush=True)
