"""Structured logs: one JSON object per line on stderr, honouring LOG_SILENT and LOG_LEVEL.

Callers log events with fields (`log.info("job_done", job_id=..., ms=...)`), never whole
payloads: workflows, prompts, keys and tokens stay out of logs by construction. Field values
whose names look secret are masked as a second line of defence.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_SECRET_MARKERS = ("key", "token", "secret", "password", "ciphertext", "credential")
_configured = False


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type and message only: tracebacks can quote local variables of a payload.
            entry["exc"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(entry, default=str, ensure_ascii=False)


def _mask(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: ("<redacted>" if any(m in k.lower() for m in _SECRET_MARKERS) and v else v)
            for k, v in fields.items()}


class Logger:
    """A thin wrapper so call sites pass fields as keywords."""

    def __init__(self, name: str):
        self._log = logging.getLogger(name)

    def _emit(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, event, exc_info=exc_info, extra={"fields": _mask(fields)})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, False, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._emit(logging.ERROR, event, exc_info, fields)


def get(name: str) -> Logger:
    return Logger(name)


def configure(level: str = "info", silent: bool = False, stream=None) -> None:
    """Install the JSON handler on the root logger once per process."""
    global _configured
    root = logging.getLogger()
    if _configured:
        root.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    # LOG_SILENT keeps errors: a silent crash is worse than a noisy one.
    root.setLevel(logging.ERROR if silent else getattr(logging, level.upper()))
    logging.Formatter.converter = time.gmtime
    _configured = True


def configure_from(settings) -> None:
    configure(settings.log_level, settings.log_silent)
