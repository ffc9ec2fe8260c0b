"""Engine and session factory for one database (SQLite embedded or PostgreSQL)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from .sqlite_lock import WriterLockedConnection, writer_lock_path

# How long a SQLite writer waits for the write lock (our flock, then SQLite's own busy handler).
BUSY_TIMEOUT_SECONDS = 30.0


class Database:
    """One engine plus its session factory; created unbound, bound by `configure`."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._read_sessions: sessionmaker[Session] | None = None
        self._read_engine: Engine | None = None
        self._key: tuple[str, bool, int, float] | None = None

    def configure(self, url: str, *, echo: bool = False, pool_size: int = 10,
                  busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        """Create the engine for the URL, with the settings each dialect needs.

        `busy_timeout` (SQLite): seconds a writer waits for the write lock before "database is locked".
        """
        if self._engine is not None:
            if self._key == (url, echo, pool_size, busy_timeout):
                return  # same database: keep the pool (app factories in tests, CLI re-entry)
            self.dispose()
            self._read_engine = None
        self._key = (url, echo, pool_size, busy_timeout)
        parsed = make_url(url)
        options: dict[str, Any] = {"echo": echo, "future": True}
        lock_path = None
        if parsed.get_backend_name() == "sqlite":
            options["connect_args"] = {"timeout": busy_timeout, "check_same_thread": False}
            lock_path = writer_lock_path(parsed)
            if lock_path is not None:
                options["connect_args"]["factory"] = WriterLockedConnection
        else:
            options.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=10,
                connect_args={"connect_timeout": 3},
            )
        engine = create_engine(url, **options)
        if engine.dialect.name == "sqlite":

            def on_connect(dbapi_conn: sqlite3.Connection, record: ConnectionPoolEntry) -> None:
                _sqlite_on_connect(dbapi_conn, busy_timeout)
                if isinstance(dbapi_conn, WriterLockedConnection):
                    dbapi_conn.writer_lock_path = lock_path
                    dbapi_conn.writer_lock_timeout = busy_timeout

            event.listen(engine, "connect", on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            # Reads run each statement in its own implicit transaction: no write lock for a read (WAL
            # readers run side by side); the audit row written at the end takes the lock only for its
            # own INSERT.
            reads: Engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        else:
            _ping_idle_connections(engine)
            _keep_long_statements_converted()
            # Reads get a pool of their own whose connections commit asynchronously: each statement is
            # its own implicit transaction (no BEGIN and COMMIT round trips; READ COMMITTED gives every
            # statement its own snapshot anyway), and the only thing a read writes is its audit row,
            # which PostgreSQL then flushes to disk within `wal_writer_delay` instead of making the
            # reader wait for the flush. Writes of clinical data stay synchronous (the main pool).
            # AUTOCOMMIT is the engine's own level, set once per connection: as an execution option
            # it would be set at every checkout and undone at every checkin (half a read's cost of
            # taking and returning its session).
            read_options = dict(options, isolation_level="AUTOCOMMIT", connect_args={
                **options["connect_args"], "options": "-c synchronous_commit=off"})
            self._read_engine = create_engine(url, **read_options)
            _ping_idle_connections(self._read_engine)
            reads = self._read_engine
        self._engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(bind=reads, expire_on_commit=False)

    @property
    def engine(self) -> Engine:
        """The bound engine."""
        if self._engine is None:
            raise RuntimeError("database is not configured")
        return self._engine

    @property
    def engines(self) -> tuple[Engine, ...]:
        """Every engine statements run on: the main one, and on PostgreSQL the pool of reads."""
        return (self.engine,) if self._read_engine is None else (self.engine, self._read_engine)

    @property
    def is_sqlite(self) -> bool:
        """True when the embedded SQLite engine is in use."""
        return self.engine.dialect.name == "sqlite"

    @property
    def has_read_pool(self) -> bool:
        """Whether reads have a pool of their own (PostgreSQL), see `read_connection`."""
        return self._read_engine is not None

    def read_connection(self) -> Connection:
        """A connection of the reads' pool (PostgreSQL): each statement commits on its own, nothing
        waits for the WAL flush. For reads that need no session; use it as a context manager."""
        if self._read_engine is None:
            raise RuntimeError("reads have no pool of their own on this database")
        return self._read_engine.connect()

    def session(self) -> Session:
        """A new session (the caller owns it)."""
        if self._sessions is None:
            raise RuntimeError("database is not configured")
        return self._sessions()

    @contextmanager
    def unit_of_work(self, *, read_only: bool = False) -> Iterator[Session]:
        """One transaction: commit once at the end, roll back on any error.

        `read_only`: the work only reads (and records audit rows, written when it ends); its statements
        autocommit one by one, and when it leaves nothing to write (no ORM changes, nothing queued in
        `session.info`, such as audit rows) there is no commit to run.
        """
        reads = self._read_sessions if read_only else None
        session = reads() if reads is not None else self.session()
        try:
            yield session
            if not read_only or session.info or session.new or session.dirty or session.deleted:
                session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def analyze(self, tables: tuple[str, ...] = ()) -> None:
        """Refresh the planner's statistics (after a bulk load), of the tables or of everything.

        Without them SQLite's planner walks a whole index where one look-up would do, and PostgreSQL
        guesses until autovacuum gets round to the new rows. On PostgreSQL this is a VACUUM too: it
        marks the freshly loaded pages all-visible (index-only scans skip the table) and sets their
        hint bits, which the first reads would otherwise write back, page by page.
        """
        if self.is_sqlite:
            with self.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) " + ", ".join(tables) if tables else "VACUUM (ANALYZE)")

    def ping(self) -> None:
        """Raise if the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close every pooled connection."""
        if self._engine is not None:
            self._engine.dispose()
        if self._read_engine is not None:
            self._read_engine.dispose()


# psycopg turns each statement's %(name)s placeholders into PostgreSQL's $n by parsing its text, and
# keeps the result for the next time only for statements of at most 4096 bytes and 50 parameters: an
# ORM's one-off statements would crowd its cache (128 entries). Ours are fixed texts, and the one that
# writes a settlement (three resources and their ledger rows) is about 10 kB with 150 parameters:
# parsed anew on every call, it cost 8 % of a settlement's time. The limits are raised so that it is
# kept; statements with more parameters than this (bulk inserts) are still parsed each time.
KEPT_STATEMENT_BYTES = 32_768
KEPT_STATEMENT_PARAMS = 400


def _keep_long_statements_converted() -> None:
    try:
        from psycopg import _queries
    except ImportError:  # (another driver)
        return
    for name, least in (("MAX_CACHED_STATEMENT_LENGTH", KEPT_STATEMENT_BYTES),
                        ("MAX_CACHED_STATEMENT_PARAMS", KEPT_STATEMENT_PARAMS)):
        if isinstance(getattr(_queries, name, None), int):
            setattr(_queries, name, max(getattr(_queries, name), least))


# A connection that sat in the pool longer than this is pinged before use (a database restart or a
# dropped socket shows up as a fresh connection instead of a failed request). Busy connections are
# not pinged: under load that round trip would be paid on every request.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_idle_connections(engine: Engine) -> None:
    dialect = engine.dialect

    def ping_if_idle(dbapi_conn: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        _ping_if_idle(dialect, dbapi_conn, record)

    event.listen(engine, "checkout", ping_if_idle)
    event.listen(engine, "checkin", _note_checkin)


def _note_checkin(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dialect: Dialect, dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
        return
    try:
        alive = dialect.do_ping(dbapi_conn)
    except Exception:
        alive = False
    if not alive:
        # The pool discards this connection and checks out (or opens) another.
        raise DisconnectionError("the pooled connection no longer answers")


def _sqlite_on_connect(dbapi_conn: sqlite3.Connection, busy_timeout: float) -> None:
    # Let SQLAlchemy emit BEGIN itself so that BEGIN IMMEDIATE serialises writers.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    # Every transaction takes the write lock up front: read-then-write races (caps, conditional
    # creates) cannot interleave, and SQLite never fails a transaction half-way with SQLITE_BUSY.
    # Read-only work (AUTOCOMMIT) runs statement by statement instead, without either lock.
    # Writers of a database file first queue on its flock writer lock (`sqlite_lock.py`): woken as
    # soon as the previous writer is done, instead of sleeping in SQLite's busy handler. The
    # connection releases it when the transaction ends (commit, rollback, close).
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return
    dbapi_conn = conn.connection.dbapi_connection
    if not isinstance(dbapi_conn, WriterLockedConnection):  # in-memory database
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        return
    try:
        dbapi_conn.acquire_writer_lock()
    except sqlite3.OperationalError as exc:  # timed out: what SQLite's BEGIN IMMEDIATE would raise
        raise OperationalError("BEGIN IMMEDIATE", (), exc) from exc
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        dbapi_conn.release_writer_lock()
        raise
