"""The SQL statements the app sends while a block runs (every engine: the main pool and the reads')."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from referral_service.extensions import database


@contextmanager
def statements_sent() -> Iterator[list[str]]:
    """Collects each statement's SQL text, as sent, in order."""
    seen: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(statement)

    for engine in database.engines:
        event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        for engine in database.engines:
            event.remove(engine, "before_cursor_execute", on_execute)
