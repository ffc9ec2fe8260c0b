"""SQLite writers of one database file queue on an exclusive `flock` instead of SQLite's busy handler.

SQLite's busy handler polls: a writer that finds the write lock taken sleeps 1, 2, 5, 10 ... 100 ms
and tries again, whenever the holder actually finished. A writer blocked in `flock` on a sidecar file
(`<database>-writer.lock`) is woken by the kernel the moment the holder lets go. Every write
transaction (BEGIN IMMEDIATE, see `db.py`) takes that lock first and drops it once the transaction has
ended: after COMMIT or ROLLBACK has run (so the next writer never meets SQLite's own lock), or when
the connection closes (invalidation, disposal, garbage collection: closing the file releases it).

Design: the threads of one process first queue on a per-process threading.Lock of the database; its
holder then takes the flock on the sidecar, opened afresh for that transaction. A flock per open()
alone would be correct (flock locks belong to the open file description, so separate open() calls
exclude each other within a process too), but a blocking flock cannot be interrupted from Python
outside the main thread, so waiting with a timeout takes a helper thread, and its hand-over costs a
thread switch per wait (in a benchmark of 2 processes x 4 threads, a third of the throughput). With
the process lock, threads wait for their own process's writers directly, with the timeout, and at most
one thread per process waits through a helper for another process. A fresh descriptor per transaction
means no pooled connection keeps the sidecar open, so no descriptor stands for a lock outside a
transaction (nor after a fork).
"""

from __future__ import annotations

import _thread
import fcntl
import io
import os
import sqlite3
import threading
import time

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


# Per process and database file: the lock this process's writers queue on before taking the flock.
_process_queues: dict[str, threading.Lock] = {}
_process_queues_guard = threading.Lock()
# A child process starts with no writer (a thread of the parent may have held a queue at the fork).
os.register_at_fork(after_in_child=_process_queues.clear)


def _process_queue(path: str) -> threading.Lock:
    queue = _process_queues.get(path)
    if queue is None:
        with _process_queues_guard:
            queue = _process_queues.setdefault(path, threading.Lock())
    return queue


class _Held:
    """The writer lock while held: this process's queue and the flocked file."""

    __slots__ = ("_file", "_queue")

    def __init__(self, queue: threading.Lock, file: io.FileIO) -> None:
        self._queue = queue
        self._file: io.FileIO | None = file

    def release(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()  # the only descriptor of its open file description: the flock goes with it
            finally:
                self._queue.release()

    __del__ = release  # a connection dropped without close() (garbage) never keeps the lock


def _acquire(path: str, timeout: float) -> _Held:
    """The writer lock of `path`, or sqlite3.OperationalError "database is locked" after `timeout`."""
    deadline = time.monotonic() + timeout
    queue = _process_queue(path)
    if not queue.acquire(timeout=timeout):
        raise sqlite3.OperationalError("database is locked")
    try:
        return _Held(queue, _locked_file(path, max(0.0, deadline - time.monotonic())))
    except BaseException:
        queue.release()
        raise


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
    helper thread waits in the kernel while the caller waits, with the timeout, on a lock the helper
    releases once it has the flock. A helper whose caller gave up closes the file as soon as it gets
    the flock (releasing it again). `_thread.start_new_thread`: `threading.Thread.start` would add a
    handshake (a thread switch) to every wait.
    """

    def __init__(self, lock: io.FileIO) -> None:
        self._lock = lock
        self._granted = threading.Lock()
        self._granted.acquire()
        self._handoff = threading.Lock()
        self._error: OSError | None = None
        self._abandoned = False

    def wait(self, timeout: float) -> io.FileIO:
        _thread.start_new_thread(self._block, ())
        if not self._granted.acquire(timeout=timeout):
            with self._handoff:
                if not self._granted.acquire(blocking=False):  # not granted in the meantime
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
                self._granted.release()


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
    _writer_lock: _Held | None = None

    @property
    def holds_writer_lock(self) -> bool:
        """True while this connection holds the writer lock."""
        return self._writer_lock is not None

    def acquire_writer_lock(self) -> None:
        """Wait for the writer lock; sqlite3.OperationalError "database is locked" after the timeout."""
        if self._writer_lock is None and self.writer_lock_path is not None:
            self._writer_lock = _acquire(self.writer_lock_path, self.writer_lock_timeout)

    def release_writer_lock(self) -> None:
        """Let the next writer in."""
        lock, self._writer_lock = self._writer_lock, None
        if lock is not None:
            lock.release()

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
