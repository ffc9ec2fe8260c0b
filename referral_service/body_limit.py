"""A chunked request body is held to MAX_CONTENT_LENGTH like any other: 413, never cut short.

Werkzeug enforces the limit on a body of unknown length by reading at most that many bytes and
stopping there without complaint, so a chunked body over the limit reached the handlers truncated
(a 400 for broken JSON at best, a 201 for a form at worst). This middleware reads a chunked body
up to one byte past the limit before the app sees the request and hands the app an ordinary body
with its Content-Length: the app's own 413 (an OperationOutcome under /fhir) answers one that is
too long, and the rest is left unread.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from flask import Flask

_CHUNK = 64 * 1024


class ChunkedBodyLimit:
    """WSGI middleware: turn a chunked body into a counted one, at most MAX_CONTENT_LENGTH + 1 bytes."""

    def __init__(self, app: Flask, wsgi_app: Any) -> None:
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        limit = self.app.config.get("MAX_CONTENT_LENGTH")
        if limit is not None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = _read_at_most(environ["wsgi.input"], limit + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))  # limit + 1 when too long: the app answers 413
            del environ["HTTP_TRANSFER_ENCODING"]  # (Werkzeug ignores Content-Length beside chunked)
        return self.wsgi_app(environ, start_response)


def _read_at_most(stream: Any, size: int) -> bytes:
    """Read from `stream` until it ends or `size` bytes have come."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        data = stream.read(min(_CHUNK, remaining))
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)
