"""SQLite writers queue on a flock of `<database>-writer.lock`, not in SQLite's busy handler.

Writers in these tests run with SQLite's busy_timeout at 0: a writer that ever met SQLite's own write
lock would fail at once with "database is locked" instead of sleeping in the busy handler. They all
succeed only because every writer waits in `flock` until the previous one has finished.
"""

from __future__ import annotations

import fcntl
import itertools
import multiprocessing
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from referral_service import errors
from referral_service.domain import sqlite_lock
from referral_service.domain.db import Database
from referral_service.domain.sqlite_lock import writer_lock_path

SPAWN = multiprocessing.get_context("spawn")  # children start clean: no pool or lock inherited


class Boom(Exception):
    """An error inside a unit of work."""


def _new_database_file(tmp_path: Path) -> tuple[str, str]:
    """A WAL database with the tables the writers use; (URL, path of its writer lock)."""
    path = tmp_path / "writers.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (1, 0)")
        conn.execute("CREATE TABLE row (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")
    conn.close()
    return f"sqlite:///{path}", f"{path}-writer.lock"


def _database(url: str, *, busy_timeout: float = 30.0, sqlite_busy_timeout_zero: bool = False) -> Database:
    """A Database on the URL; optionally SQLite's own busy handler off (the writer lock still waits)."""
    database = Database()
    database.configure(url, busy_timeout=busy_timeout)
    if sqlite_busy_timeout_zero:

        def no_busy_handler(dbapi_conn: sqlite3.Connection, record: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=0")

        event.listen(database.engine, "connect", no_busy_handler)
    return database


def _held(lock_path: str) -> bool:
    """True when some writer (in this process or another) holds the lock."""
    with open(lock_path, "a") as probe:  # its own open file description: excluded like any writer
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


@contextmanager
def _holding(lock_path: str) -> Iterator[None]:
    """Hold the writer lock the way another writer would."""
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


def _rows(database: Database) -> list[str]:
    with database.unit_of_work(read_only=True) as session:
        return list(session.execute(text("SELECT who FROM row ORDER BY id")).scalars())


# --- children (spawned processes) ---------------------------------------------------------------


def _write_many(url: str, start: Any, threads: int, txns: int, out: Any) -> None:
    """Threads of read-modify-write transactions; puts (errors, [(pid, asked, got, done) ns])."""
    database = _database(url, sqlite_busy_timeout_zero=True)
    spans: list[tuple[int, int, int, int]] = []
    failures: list[str] = []

    def run() -> None:
        start.wait(timeout=120)
        for _ in range(txns):
            asked = time.monotonic_ns()
            try:
                with database.unit_of_work() as session:
                    session.connection()  # BEGIN IMMEDIATE (after the writer lock)
                    got = time.monotonic_ns()
                    n = session.execute(text("SELECT n FROM counter WHERE id = 1")).scalar_one()
                    session.execute(text("UPDATE counter SET n = :n WHERE id = 1"), {"n": n + 1})
                    session.execute(text("INSERT INTO row (who) VALUES (:who)"), {"who": f"{os.getpid()}"})
                    spans.append((os.getpid(), asked, got, time.monotonic_ns()))
            except Exception as exc:
                failures.append(str(exc))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    database.dispose()
    out.put((failures, spans))


def _write_once(url: str, out: Any) -> None:
    """One write transaction; puts ("ok", ns when BEGIN returned) or ("error", message)."""
    database = _database(url, sqlite_busy_timeout_zero=True)
    try:
        with database.unit_of_work() as session:
            session.connection()
            began = time.monotonic_ns()
            session.execute(text("INSERT INTO row (who) VALUES ('child')"))
        out.put(("ok", began))
    except Exception as exc:
        out.put(("error", str(exc)))
    finally:
        database.dispose()


def _wait_until_blocked_in_flock(child: Any, out: Any) -> None:
    """Wait until the child process waits for a flock (/proc/locks lists it as a blocked waiter)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.is_alive() and out.empty():
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if fields[1:3] == ["->", "FLOCK"] and int(fields[5]) == child.pid:
                    return
        time.sleep(0.01)
    result = out.get(timeout=5) if not out.empty() else "no result"
    pytest.fail(f"the child never waited for the writer lock: {result}")


# --- tests --------------------------------------------------------------------------------------


def test_writers_in_two_processes_take_turns_on_the_lock_without_sqlite_busy_waits(tmp_path: Path) -> None:
    url, _ = _new_database_file(tmp_path)
    processes, threads, txns = 2, 3, 25
    start, out = SPAWN.Barrier(processes * threads + 1), SPAWN.Queue()  # every writer starts at once
    children = [SPAWN.Process(target=_write_many, args=(url, start, threads, txns, out))
                for _ in range(processes)]
    for child in children:
        child.start()
    start.wait(timeout=120)
    results = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join(30)

    failures = [f for failed, _ in results for f in failed]
    spans = sorted((s for _, spans in results for s in spans), key=lambda s: s[2])
    assert failures == []  # busy_timeout 0: meeting SQLite's lock even once fails at once
    assert len(spans) == processes * threads * txns
    database = _database(url)
    with database.unit_of_work(read_only=True) as session:
        assert session.execute(text("SELECT n FROM counter")).scalar_one() == len(spans)
    database.dispose()
    # One writer at a time ...
    assert all(before[3] <= after[2] for before, after in itertools.pairwise(spans))
    # ... and writers did wait for each other, across processes: some writer asked for the lock while
    # a writer of the other process held it.
    assert any(
        waiter[0] != holder[0] and waiter[1] < holder[3] and waiter[2] > holder[2]
        for holder in spans for waiter in spans
    )


@pytest.mark.parametrize("end", ["commit", "exception"])
def test_a_writer_of_another_process_waits_in_flock_and_proceeds_when_the_holder_ends(
    tmp_path: Path, end: str
) -> None:
    if not Path("/proc/locks").exists():
        pytest.skip("needs /proc/locks (Linux)")
    url, lock_path = _new_database_file(tmp_path)
    database = _database(url)
    out = SPAWN.Queue()
    child = SPAWN.Process(target=_write_once, args=(url, out))
    try:
        with pytest.raises(Boom) if end == "exception" else nullcontext(), \
                database.unit_of_work() as session:
            session.execute(text("INSERT INTO row (who) VALUES ('holder')"))
            child.start()
            _wait_until_blocked_in_flock(child, out)
            ending = time.monotonic_ns()
            if end == "exception":
                raise Boom
        status, began = out.get(timeout=60)
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()

    assert status == "ok", began  # with busy_timeout 0: it never met SQLite's lock
    assert began > ending  # it began only after the holder let go
    assert _rows(database) == (["holder", "child"] if end == "commit" else ["child"])
    assert not _held(lock_path)
    database.dispose()


def _wait_until_waiting_for_the_lock(thread: threading.Thread) -> None:
    """Wait until the thread is inside the writer lock's acquisition (which waits while it is held)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and thread.is_alive():
        frame = sys._current_frames().get(thread.ident or 0)
        while frame is not None:
            if frame.f_code is sqlite_lock._acquire.__code__:
                return
            frame = frame.f_back
        time.sleep(0.01)
    pytest.fail("the thread never waited for the writer lock")


def test_threads_of_one_process_take_turns_on_the_lock(tmp_path: Path) -> None:
    url, lock_path = _new_database_file(tmp_path)
    database = _database(url, sqlite_busy_timeout_zero=True)
    began: list[int] = []
    failures: list[Exception] = []

    def second_writer() -> None:
        try:
            with database.unit_of_work() as session:
                session.connection()
                began.append(time.monotonic_ns())
                session.execute(text("INSERT INTO row (who) VALUES ('second')"))
        except Exception as exc:
            failures.append(exc)

    with database.unit_of_work() as session:
        session.execute(text("INSERT INTO row (who) VALUES ('first')"))
        second = threading.Thread(target=second_writer)
        second.start()
        _wait_until_waiting_for_the_lock(second)
        ending = time.monotonic_ns()
    second.join(30)

    assert failures == []  # with busy_timeout 0: it never met SQLite's lock
    assert began[0] > ending  # it began only after the first writer let go
    assert _rows(database) == ["first", "second"]
    assert not _held(lock_path)
    database.dispose()


def _commit(database: Database, lock_path: str) -> bool:
    with database.unit_of_work() as session:
        session.execute(text("INSERT INTO row (who) VALUES ('a')"))
        return _held(lock_path)


def _exception(database: Database, lock_path: str) -> bool:
    held: list[bool] = []

    def fail() -> None:
        with database.unit_of_work() as session:
            session.execute(text("INSERT INTO row (who) VALUES ('a')"))
            held.append(_held(lock_path))
            raise Boom

    with pytest.raises(Boom):
        fail()
    return held == [True]


def _connection_rollback(database: Database, lock_path: str) -> bool:
    with database.engine.connect() as conn:
        conn.execute(text("INSERT INTO row (who) VALUES ('a')"))
        held = _held(lock_path)
        conn.rollback()
        assert not _held(lock_path)
        conn.execute(text("INSERT INTO row (who) VALUES ('b')"))  # the next transaction takes it again
        assert _held(lock_path)
        conn.commit()
    return held


def _connection_closed_mid_transaction(database: Database, lock_path: str) -> bool:
    conn = database.engine.connect()
    conn.execute(text("INSERT INTO row (who) VALUES ('a')"))
    held = _held(lock_path)
    conn.close()
    return held


def _connection_invalidated(database: Database, lock_path: str) -> bool:
    with database.engine.connect() as conn:
        conn.execute(text("INSERT INTO row (who) VALUES ('a')"))
        held = _held(lock_path)
        conn.invalidate()
        assert not _held(lock_path)  # the DBAPI connection is closed at once
        conn.rollback()
    return held


def _begin_fails(database: Database, lock_path: str) -> bool:
    seen: list[bool] = []

    def fail_begin(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement == "BEGIN IMMEDIATE":
            seen.append(_held(lock_path))
            raise sqlite3.OperationalError("disk I/O error")

    event.listen(database.engine, "before_cursor_execute", fail_begin)
    try:
        with pytest.raises(OperationalError, match="disk I/O error"), database.unit_of_work() as session:
            session.execute(text("INSERT INTO row (who) VALUES ('a')"))
    finally:
        event.remove(database.engine, "before_cursor_execute", fail_begin)
    return seen == [True]


@pytest.mark.parametrize("ending", [_commit, _exception, _connection_rollback,
                                    _connection_closed_mid_transaction, _connection_invalidated,
                                    _begin_fails])
def test_every_way_a_transaction_ends_releases_the_lock(
    tmp_path: Path, ending: Callable[[Database, str], bool]
) -> None:
    url, lock_path = _new_database_file(tmp_path)
    database = _database(url)
    assert ending(database, lock_path)  # held while the transaction ran
    assert not _held(lock_path)
    with database.unit_of_work() as session:  # and the next writer gets it
        session.execute(text("INSERT INTO row (who) VALUES ('next')"))
    assert _rows(database)[-1] == "next"
    database.dispose()


def test_savepoints_keep_the_outer_transactions_lock(tmp_path: Path) -> None:
    url, lock_path = _new_database_file(tmp_path)
    database = _database(url)
    with database.unit_of_work() as session:
        session.execute(text("INSERT INTO row (who) VALUES ('outer')"))

        def fail() -> None:
            with session.begin_nested():  # rolled back to the savepoint
                session.execute(text("INSERT INTO row (who) VALUES ('rolled back')"))
                raise Boom

        with pytest.raises(Boom):
            fail()
        assert _held(lock_path)
        with session.begin_nested():  # released savepoint
            session.execute(text("INSERT INTO row (who) VALUES ('released')"))
        assert _held(lock_path)
    assert not _held(lock_path)
    assert _rows(database) == ["outer", "released"]
    database.dispose()


def test_read_only_work_never_takes_the_lock(tmp_path: Path) -> None:
    url, lock_path = _new_database_file(tmp_path)
    database = _database(url, busy_timeout=0.2)
    with _holding(lock_path):  # another writer holds the lock
        with database.unit_of_work(read_only=True) as session:
            assert session.execute(text("SELECT count(*) FROM row")).scalar_one() == 0
        with pytest.raises(OperationalError, match="database is locked"), \
                database.unit_of_work() as session:
            session.execute(text("INSERT INTO row (who) VALUES ('a')"))
    database.dispose()


def test_a_writer_that_cannot_get_the_lock_in_time_fails_as_sqlite_itself_would(tmp_path: Path) -> None:
    url, lock_path = _new_database_file(tmp_path)
    database = _database(url, busy_timeout=0.2)

    def write() -> OperationalError:
        with pytest.raises(OperationalError) as failed, database.unit_of_work() as session:
            session.execute(text("INSERT INTO row (who) VALUES ('a')"))
        return failed.value

    # SQLite's own: a connection that does not use the writer lock holds SQLite's write lock.
    other = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    sqlite_own = write()
    other.rollback()
    other.close()
    assert not _held(lock_path)  # the failed BEGIN IMMEDIATE let the writer lock go
    # Ours: a writer of another process holds the writer lock (its own open file description) ...
    with _holding(lock_path):
        other_process = write()
    # ... or another thread of this process does.
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with database.unit_of_work() as session:
            session.connection()
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(30)
    other_thread = write()
    done.set()
    holder.join(30)

    for failed in (sqlite_own, other_process, other_thread):
        assert isinstance(failed.orig, sqlite3.OperationalError)
        assert str(failed.orig) == "database is locked"
        assert not failed.connection_invalidated
        assert errors._is_connection_error(failed) == errors._is_connection_error(sqlite_own)
    # The waiter that gave up on the other process left a helper blocked in flock: it gets the lock
    # when that holder lets go and drops it again at once, so allow it a moment.
    deadline = time.monotonic() + 5
    while _held(lock_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _held(lock_path)
    with database.unit_of_work() as session:  # nothing leaked: the next writer proceeds
        session.execute(text("INSERT INTO row (who) VALUES ('next')"))
    assert _rows(database) == ["next"]
    database.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true"])
def test_in_memory_databases_have_no_lock_file(url: str) -> None:
    assert writer_lock_path(make_url(url)) is None
    database = _database(url)
    with database.unit_of_work() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
        session.execute(text("INSERT INTO t VALUES (1)"))
    database.dispose()


def test_the_lock_file_sits_next_to_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    assert writer_lock_path(make_url(f"sqlite:///{path}")) == f"{path}-writer.lock"
    assert writer_lock_path(make_url(f"sqlite:///file:{path}?uri=true")) == f"{path}-writer.lock"
    assert writer_lock_path(make_url("sqlite:///file:mem?mode=memory&uri=true")) is None
