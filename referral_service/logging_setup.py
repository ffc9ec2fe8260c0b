"""Structured JSON logs with the request id on every line; identity numbers are masked."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import g, has_request_context

_RESIDENT_ID = re.compile(r"\b(\d{6})\d{8}(\d{3}[0-9Xx])\b")
_SECRETISH = re.compile(r"(client_secret|password|secret)=([^&\s]+)", re.IGNORECASE)


def mask_sensitive(text: str) -> str:
    """Mask resident identity numbers (keep first 6, last 4) and secret-looking parameters."""
    text = _RESIDENT_ID.sub(lambda m: f"{m.group(1)}********{m.group(2)}", text)
    return _SECRETISH.sub(lambda m: f"{m.group(1)}=***", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_sensitive(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is None and has_request_context():
            request_id = g.get("request_id")
        if request_id:
            payload["request_id"] = request_id
        for key in ("method", "path", "status", "duration_ms", "client", "user"):
            value = getattr(record, key, None)
            if value is not None:
                payload[key] = value
        if record.exc_info:
            payload["exception"] = mask_sensitive(self.formatException(record.exc_info))
        return orjson.dumps(payload, default=str).decode()


class PlainFormatter(logging.Formatter):
    """Readable lines for a developer's terminal, still masked and with the request id."""

    def format(self, record: logging.LogRecord) -> str:
        rid = g.get("request_id") if has_request_context() else None
        base = super().format(record)
        return mask_sensitive(f"[{rid}] {base}" if rid else base)


def configure_logging(level: str, as_json: bool) -> None:
    """Install one stream handler on the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if as_json else PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_referral_service", False):
            root.removeHandler(existing)
    if as_json:
        # The JSON lines carry none of the caller's file, line, function or thread: leave them
        # uncollected (logging's documented optimisations), a tenth of each line's cost. The process
        # id stays: gunicorn's own log lines print it (`[%(process)d]`).
        logging._srcfile = None
        logging.logThreads = False
        logging.logMultiprocessing = False
    handler._referral_service = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("werkzeug", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
