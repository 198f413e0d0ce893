"""Logging set-up: one line per event, as text or JSON (``RUNNER_LOG_FORMAT``).

Log calls pass a stable event name as the message and details as ``extra``; the JSON
formatter emits those details as fields. Secrets never reach a log call: settings hold
them as ``SecretStr`` and no code logs settings. As defence in depth, every formatted
line also goes through a redactor (:class:`runner.redaction.Redactor`) that replaces
the configured secret values and any URL's password: a library's debug line or an
API error quoted in a log call cannot carry them out either.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}


def _details(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_details(record),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        details = _details(record)
        if details:
            line += " " + " ".join(f"{key}={value}" for key, value in details.items())
        if record.exc_info and not record.exc_text:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RedactingFormatter(logging.Formatter):
    """Formats with ``inner``, then passes the whole line through ``redact``. On the
    finished line rather than in a ``logging.Filter``: only there are the message, the
    details and a traceback all text, wherever a secret may have come in."""

    def __init__(self, inner: logging.Formatter, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))


def configure(
    log_format: str, level: str, *, redact: Callable[[str], str] | None = None
) -> None:
    """One handler on stderr for every logger; ``redact`` (the CLI passes
    ``Redactor.from_settings``) is applied to every line it writes."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(formatter if redact is None else RedactingFormatter(formatter, redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # procrastinate logs every job start/end at INFO, APScheduler every job it adds:
    # the executor and the scheduler log what matters, with task ids. httpx logs every
    # request's URL at INFO, and a webhook URL may carry a credential.
    for noisy in ("procrastinate", "apscheduler", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
