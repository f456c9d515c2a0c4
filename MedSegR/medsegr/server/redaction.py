"""Keep secrets out of the server's logs: one :class:`logging.Filter` that every log
record of the engine passes through.

It rewrites, in the message, its arguments and any formatted traceback:

* **query strings** (``?a=1&b=2`` in a URL or request line): every value except
  those of the API's own harmless parameters (``modality``, ``window``) becomes
  ``[redacted]``, whatever its name or encoding;
* **credentials**: ``Authorization: …``, ``Bearer …``/``Basic …`` and token-like
  ``name=value`` / ``"name": "value"`` pairs (token, api_key, password, secret …);
* **the engine's own token**, wherever it appears (also percent-encoded).

:func:`install_redaction` puts the filter on uvicorn's loggers, the project's
``medsegr`` loggers, and on every handler of those and of the root logger (a
logger's filter sees only records logged to it, a handler's sees every record it
writes). Uvicorn's access log keeps its argument tuple (its formatter unpacks it),
so arguments are redacted one by one rather than merged into the message.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"

#: query parameters whose values are safe to log (the API's own)
SAFE_QUERY_PARAMS = frozenset({"modality", "window"})

#: names whose values are secrets wherever they appear as name=value
_SECRET_NAMES = (r"(?:access[_-]?|auth[_-]?|id[_-]?|refresh[_-]?|session[_-]?)?token"
                 r"|api[_-]?key|apikey|password|passwd|secret|client[_-]?secret")

_QUERY = re.compile(r"\?([^\s\"'<>#]*)")
_AUTH_HEADER = re.compile(r"(?i)(\b(?:proxy-)?authorization\b[\"']?\s*[:=,]\s*[\"']?)"
                          r"(?:(?:bearer|basic|token)\s+)?[^\s\"',;)}\]]+")
_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)(?!\[redacted\])[A-Za-z0-9._~+/=:-]+")
_PAIR = re.compile(r"(?i)(\b(?:" + _SECRET_NAMES + r")\b[\"']?\s*[:=]\s*[\"']?)"
                   r"(?!\[redacted\])[^\s\"',;&)}\]]+")

#: loggers the filter is attached to (their handlers too)
LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "medsegr",
           "medsegr.server", "fastapi", "starlette")


def _redact_query(match: re.Match[str]) -> str:
    parts = []
    for item in re.split(r"([&;])", match.group(1)):
        if item in ("&", ";") or not item:
            parts.append(item)
            continue
        name, sep, _value = item.partition("=")
        safe = urllib.parse.unquote_plus(name).strip().lower() in SAFE_QUERY_PARAMS
        parts.append(item if safe or not sep else f"{name}={REDACTED}")
    return "?" + "".join(parts)


class RedactingFilter(logging.Filter):
    """Rewrites records so that they hold no query-string values, credentials or
    known secrets; never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add_secret(secret)

    def add_secret(self, secret: str | None) -> None:
        """Also redact ``secret`` (and its percent-encoded forms) wherever it appears."""
        if secret:
            self._secrets |= {secret, urllib.parse.quote(secret, safe=""),
                              urllib.parse.quote_plus(secret, safe="")}

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        text = _QUERY.sub(_redact_query, text)
        text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
        text = _SCHEME.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
        return _PAIR.sub(lambda m: m.group(1) + REDACTED, text)

    def _value(self, value: Any) -> Any:
        if isinstance(value, (int, float)) or value is None:
            return value  # numbers keep %d / %f formatting
        text = value if isinstance(value, str) else str(value)
        cleaned = self.redact(text)
        if isinstance(value, str) or cleaned != text:
            return cleaned
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_medsegr_redacted", False):
            return True
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            # its formatter unpacks the arguments: redact them one by one
            record.msg = self._value(record.msg)
            record.args = tuple(self._value(v) for v in record.args)
        else:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string is logging's to report
                message = f"{record.msg} {record.args!r}"
            record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        record._medsegr_redacted = True
        return True


#: the one filter of this process (secrets accumulate across apps)
_FILTER = RedactingFilter()


def install_redaction(*secrets: str | None) -> RedactingFilter:
    """Attach the process's redaction filter to the server's loggers and to their and
    the root logger's handlers (again after logging is reconfigured: adding it twice
    is a no-op); ``secrets`` are redacted from then on."""
    for secret in secrets:
        _FILTER.add_secret(secret)
    loggers = [logging.getLogger(name) for name in LOGGERS] + [logging.getLogger()]
    loggers += [logger for name, logger in logging.root.manager.loggerDict.items()
                if isinstance(logger, logging.Logger) and name.startswith("medsegr.")]
    for logger in loggers:
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    return _FILTER


__all__ = ["REDACTED", "RedactingFilter", "install_redaction"]
