"""Locks that make a job (or the scheduler) run in one process at a time.

PostgreSQL: a session-level advisory lock (pg_try_advisory_lock) on a connection held for as long
as the lock is. SQLite (one machine by nature): an flock on a file beside the database.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)


class Lock(Protocol):
    """A non-blocking exclusive lock."""

    def acquire(self) -> bool:
        """Take the lock if free; False when another holder has it."""

    def release(self) -> None:
        """Give the lock back (safe to call when not held)."""

    def alive(self) -> bool:
        """Whether a held lock is still held (its database connection is still up)."""


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock from a lock name."""
    digest = hashlib.sha256(f"referral_service:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLock:
    """PostgreSQL session advisory lock, held on its own pooled connection."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine, self.name, self.key = engine, name, advisory_key(name)
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        """Take the lock if free; False when another holder has it."""
        if self._conn is not None:
            return True
        conn = self.engine.connect()
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
            conn.commit()  # the lock belongs to the session, not to this transaction
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        """Unlock, so the pooled connection goes back clean (or is discarded if it cannot be)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            conn.commit()
        except DBAPIError:
            log.warning("could not unlock %s; discarding its connection", self.name)
            conn.invalidate()
        finally:
            conn.close()

    def alive(self) -> bool:
        """Whether the lock's connection still answers (the lock dies with the connection)."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except DBAPIError:
            return False


class FileLock:
    """An exclusive flock on a file; conflicts between processes and between threads alike."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if free; False when another holder has it."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock back."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def alive(self) -> bool:
        """A file lock lasts as long as the process holds it."""
        return self._fd is not None


def lock_for(engine: Engine, name: str) -> Lock:
    """The lock named `name` for the engine's database."""
    if engine.dialect.name == "postgresql":
        # Advisory locks are cluster-wide: the database name keeps two databases on one server apart.
        return AdvisoryLock(engine, f"{engine.url.database}:{name}")
    database = engine.url.database
    if database and database != ":memory:":
        folder, stem = Path(database).resolve().parent, Path(database).name
    else:
        folder, stem = Path(tempfile.gettempdir()), "referral_service"
    return FileLock(folder / f"{stem}.{name.replace(':', '-')}.lock")
