"""Statements built once and run as SQL text on the driver's cursor (psycopg, sqlite3).

SQLAlchemy's execution of a statement object derives and hashes its cache key, then describes the
result's columns and builds its result object, on every call: for the small fixed statements of hot
paths (a read, a search page, a reference check, an index row, an audit row) that costs more than
the statement itself. A kept statement is compiled once per dialect, with its values' conversions
(the column types' bind and result processors), and then sent as text with the request's values.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import Numeric
from sqlalchemy.engine import Connection, Dialect


def driver_rows(
    connection: Connection, sql: str, values: dict[str, Any] | list[dict[str, Any]], *, fetch: bool = True
) -> Sequence[Any]:
    """The rows of SQL text, from the driver's cursor on the connection (in its transaction); none when
    not `fetch` (a statement that answers no rows). A list of values runs the statement once per item
    (executemany).

    SQLAlchemy's execution would also describe the result's columns and build its result object: a
    tenth of a read's CPU, for rows that are only read by position. Errors still go through
    SQLAlchemy's handling (wrapped, and a connection found dead is discarded from the pool). While
    statement listeners are attached (tests, diagnostics), the statement runs through SQLAlchemy so
    that they see it.
    """
    if connection.dispatch.before_cursor_execute or connection.dispatch.after_cursor_execute:
        result = connection.exec_driver_sql(sql, values)
        return result.all() if result.returns_rows else []
    driver = connection.connection.dbapi_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        if isinstance(values, list):
            cursor.executemany(sql, values)
        else:
            cursor.execute(sql, values)
        return cursor.fetchall() if fetch else []
    except Exception as exc:
        connection._handle_dbapi_exception(exc, sql, values, cursor, None)
        raise  # (not reached: the handler raises SQLAlchemy's wrapped error)
    finally:
        cursor.close()


# The dialects whose statements may be compiled once and sent as text (`text_dialect`).
DRIVER_DIALECTS = frozenset({"postgresql", "sqlite"})


@cache
def _named_sqlite() -> Dialect:
    from sqlalchemy.dialects.sqlite import pysqlite

    return pysqlite.dialect(paramstyle="named")


def text_dialect(dialect: Dialect) -> Dialect:
    """The dialect to compile SQL text for the driver with: values by name on both drivers (psycopg's
    `%(name)s`; sqlite3's `:name`, where SQLAlchemy's own SQLite dialect writes positional `?`)."""
    return _named_sqlite() if dialect.name == "sqlite" else dialect


class Compiled(NamedTuple):
    """A Core statement compiled once: its SQL text and its values' conversions (bind processors)."""

    sql: str
    processors: dict[str, Callable[[Any], Any]]


def compiled(stmt: Any, dialect: Dialect) -> Compiled:
    """Compile a statement whose values are all named bind parameters."""
    done = stmt.compile(dialect=text_dialect(dialect))
    return Compiled(str(done), dict(done._bind_processors))


def bound(statement: Compiled, values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(SQL, values) with each value converted as its column type converts it."""
    for name, process in statement.processors.items():
        values[name] = process(values[name])
    return statement.sql, values


class _Plain(NamedTuple):
    """A statement compiled once for the driver: its SQL text, the values it carries itself, and the
    conversions some values need on the way in and out (the column types' bind and result
    processors, such as UTCDateTime's)."""

    sql: str
    carried: dict[str, Any]
    bind_processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    result_processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    row: type[tuple[Any, ...]]
    returns_rows: bool  # (a SELECT, or a write with RETURNING)


# Hot statements (a read, a search page, a count, SQLite's writes) are built once per shape and kept;
# they are also compiled once per dialect and sent as SQL text to the driver (psycopg, sqlite3).
# Executing the statement object would make SQLAlchemy derive and hash its cache key every time: a
# fifth of a search's CPU, for nothing (on SQLite, a fifth of an Encounter create's).
# Keyed by id() and dialect, with the statement itself kept alive beside it, so an id is never reused.
_PLAIN: dict[tuple[int, str], tuple[Any, _Plain | None]] = {}
_PLAIN_MAX = 512


def _plain(stmt: Any, dialect: Dialect) -> _Plain | None:
    """The statement compiled, unless it renders values into its text or answers a column whose
    conversion depends on the type the server reports (numeric, for one); then None: run as usual."""
    compiled = stmt.compile(dialect=text_dialect(dialect))
    if compiled.literal_execute_params or compiled.post_compile_params:
        return None
    columns = compiled._result_columns
    if any(isinstance(getattr(c.type, "impl_instance", c.type), Numeric) for c in columns):
        return None
    results = tuple(
        (i, process) for i, column in enumerate(columns)
        if (process := column.type._cached_result_processor(dialect, None)) is not None
    )
    row = namedtuple("Row", [column.keyname for column in columns], rename=True)  # type: ignore[misc]
    return _Plain(str(compiled), dict(compiled.params), tuple(compiled._bind_processors.items()),
                  results, row, bool(columns))


def _kept(connection: Connection, stmt: Any) -> _Plain | None:
    """The statement compiled for the connection's driver (kept), or None: run it through SQLAlchemy."""
    dialect = connection.dialect
    if dialect.name not in DRIVER_DIALECTS:
        return None
    key = (id(stmt), dialect.name)
    entry = _PLAIN.get(key)
    if entry is None or entry[0] is not stmt:
        if len(_PLAIN) >= _PLAIN_MAX:
            _PLAIN.clear()
        entry = _PLAIN[key] = (stmt, _plain(stmt, dialect))
    return entry[1]


def _bound(plain: _Plain, params: dict[str, Any]) -> dict[str, Any]:
    values = {**plain.carried, **params}
    for name, process in plain.bind_processors:
        values[name] = process(values[name])
    return values


def kept_many(connection: Connection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    """A kept write statement (see `_PLAIN`) run once per row of values (executemany)."""
    plain = _kept(connection, stmt)
    if plain is None:
        connection.execute(stmt, rows)
        return
    driver_rows(connection, plain.sql, [_bound(plain, row) for row in rows], fetch=False)


def kept_rows(connection: Connection, stmt: Any, params: dict[str, Any]) -> Sequence[Any]:
    """The rows of a kept statement (see `_PLAIN`) run with the request's values; columns by name."""
    plain = _kept(connection, stmt)
    if plain is None:
        return connection.execute(stmt, params).all()
    rows = driver_rows(connection, plain.sql, _bound(plain, params), fetch=plain.returns_rows)
    if not plain.result_processors:
        return [plain.row(*r) for r in rows]
    out = []
    for r in rows:
        fields = list(r)
        for i, process in plain.result_processors:
            fields[i] = process(fields[i])
        out.append(plain.row(*fields))
    return out
