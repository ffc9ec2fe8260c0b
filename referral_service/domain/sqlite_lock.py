"""SQLite writers of one database file queue on an exclusive `flock` instead of SQLite's busy handler.

SQLite's busy handler polls: a writer that finds the write lock taken sleeps 1, 2, 5, 10 ... 100 ms
and tries again, whenever the holder actually finished. A writer blocked in `flock` on a sidecar file
(`<database>-writer.lock`) is woken by the kernel the moment the holder lets go. Every write
transaction (BEGIN IMMEDIATE, see `db.py`) takes that lock first and drops it once the transaction has
ended: after COMMIT or ROLLBACK has run (so the next writer never meets SQLite's own lock), or when
the connection closes (invalidation, disposal, garbage collection: closing the file releases it).

Design: each acquisition opens the sidecar itself, so each holds its own open file description. flock
locks belong to the description, so two threads of one process exclude each other just like two
processes do, with no per-process threading.Lock; and a descriptor inherited across fork never
stands for a lock, since it is only open during a transaction. Opening costs a few microseconds per
write transaction.
"""

from __future__ import annotations

import fcntl
import io
import os
import sqlite3
import threading

from sqlalchemy.engine import URL


def writer_lock_path(url: URL) -> str | None:
    """The sidecar lock file of a SQLite database file; None for in-memory databases.

    Connections to an in-memory database never share it with another process (nor, in the pool
    SQLAlchemy uses for them, with another thread), so they need no lock.
    """
    name = url.database or ""
    if name.startswith("file:"):  # URI filename (uri=true)
        if url.query.get("mode") == "memory":
            return None
        name = name[len("file:"):].split("?", 1)[0]
    if name in ("", ":memory:"):
        return None
    return os.path.abspath(name) + "-writer.lock"


def _locked_file(path: str, timeout: float) -> io.FileIO:
    """The sidecar opened afresh and holding an exclusive flock; "database is locked" after `timeout`."""
    lock = io.FileIO(path, "a")  # a new open file description (O_CLOEXEC: never inherited by children)
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return lock
    except BlockingIOError:
        return _TimedWait(lock).wait(timeout)
    except BaseException:
        lock.close()
        raise


class _TimedWait:
    """A blocking flock with a timeout.

    A blocking flock cannot be interrupted from Python in a thread other than the main one, so a
    helper thread waits in the kernel; the caller waits on an Event with the timeout. A helper whose
    caller gave up closes the file as soon as it gets the lock (releasing it again).
    """

    def __init__(self, lock: io.FileIO) -> None:
        self._lock = lock
        self._handoff = threading.Lock()
        self._done = threading.Event()
        self._error: OSError | None = None
        self._abandoned = False

    def wait(self, timeout: float) -> io.FileIO:
        threading.Thread(target=self._block, name="sqlite-writer-lock", daemon=True).start()
        if not self._done.wait(timeout):
            with self._handoff:
                if not self._done.is_set():
                    self._abandoned = True
                    raise sqlite3.OperationalError("database is locked")
        if self._error is not None:
            self._lock.close()
            raise self._error
        return self._lock

    def _block(self) -> None:
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX)
        except OSError as exc:
            self._error = exc
        with self._handoff:
            if self._abandoned:
                self._lock.close()
            else:
                self._done.set()


class WriterLockedConnection(sqlite3.Connection):
    """A sqlite3 connection that holds its database's writer lock from BEGIN IMMEDIATE to the end.

    `db.py` calls `acquire_writer_lock` just before BEGIN IMMEDIATE (and `release_writer_lock` if the
    BEGIN fails); commit(), rollback() and close() release it once the transaction is over. SQLAlchemy
    ends every transaction through these (Session and Connection commit/rollback, the pool's reset on
    check-in, invalidation and disposal close). Savepoints are plain statements and never release it.
    (SQLAlchemy's "commit"/"rollback" events would be too early: they fire before COMMIT or ROLLBACK
    is sent, and a writer let in then would meet SQLite's lock and sleep in its busy handler.)
    """

    writer_lock_path: str | None = None
    writer_lock_timeout: float = 30.0
    _writer_lock: io.FileIO | None = None

    @property
    def holds_writer_lock(self) -> bool:
        """True while this connection holds the writer lock."""
        return self._writer_lock is not None

    def acquire_writer_lock(self) -> None:
        """Wait for the writer lock; sqlite3.OperationalError "database is locked" after the timeout."""
        if self._writer_lock is None and self.writer_lock_path is not None:
            self._writer_lock = _locked_file(self.writer_lock_path, self.writer_lock_timeout)

    def release_writer_lock(self) -> None:
        """Let the next writer in (closing the only descriptor of the lock's file description)."""
        lock, self._writer_lock = self._writer_lock, None
        if lock is not None:
            lock.close()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release_when_over()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release_when_over()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_writer_lock()

    def _release_when_over(self) -> None:
        if self._writer_lock is None:
            return
        try:
            over = not self.in_transaction  # a failed COMMIT leaves the transaction (and lock) open
        except sqlite3.ProgrammingError:  # closed
            over = True
        if over:
            self.release_writer_lock()
