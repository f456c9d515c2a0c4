"""What the panel says when something goes wrong: one clear sentence per failure."""

from __future__ import annotations

from medsegr.client import EngineBusy, EngineError, EngineUnavailable, RequestCancelled, VersionMismatch
from medsegr.errors import MedSegRError

from MedSegRLib.engine_process import EngineStartError
from MedSegRLib.slicer_install import InstallError


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] if text else text


def _ended(text: str) -> str:
    return text if text.endswith((".", "?", "!")) else text + "."


def error_message(exc: BaseException) -> str:
    """A user-facing description of ``exc`` (the scene is unchanged in every case)."""
    return _sentence(_describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RequestCancelled):
        return "Cancelled; nothing was added to the scene."
    if isinstance(exc, VersionMismatch):
        return f"{exc} (the Extension Manager updates the extension; the engine is updated where it runs)."
    if isinstance(exc, EngineBusy):
        wait = f" in {exc.retry_after:g} s" if exc.retry_after else " in a moment"
        return f"The engine is busy with other requests; try again{wait}."
    if isinstance(exc, EngineUnavailable):
        if exc.code == "timeout":
            return f"{exc}. The engine may be overloaded, or the volume is large: try the current slice."
        if exc.code == "no_engine":
            return f"{exc}."
        return f"{_ended(str(exc))} Check the Engine section: is the engine running, is the URL right?"
    if isinstance(exc, EngineError):
        if exc.code in ("out_of_memory", "session_memory"):
            return (f"The engine ran out of memory: {exc}. Ask about the current slice instead of the "
                    "whole volume, use a smaller volume, or run the engine on a larger GPU.")
        if exc.status in (401, 403):
            return f"The engine refused the token: {exc}. Check the token in the Engine section."
        if exc.code == "timeout":
            return f"The engine did not finish in time: {exc}."
        return f"The engine could not answer: {exc}."
    if isinstance(exc, InstallError):
        return str(exc)
    if isinstance(exc, EngineStartError):
        return f"The bundled engine did not start: {exc}"
    if isinstance(exc, MedSegRError):
        return str(exc) + ("" if str(exc).endswith(".") else ".")
    return f"Unexpected error ({type(exc).__name__}): {exc}"
