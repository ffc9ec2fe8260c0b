"""Fixed SQL text run on the driver's cursor of a SQLAlchemy connection (PostgreSQL and SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection, Dialect


def driver_rows(
    connection: Connection, sql: str, values: dict[str, Any] | list[dict[str, Any]]
) -> Sequence[Any]:
    """The rows of SQL text, from the driver's cursor on the connection (in its transaction); none for
    a statement that answers no rows. A list of values runs the statement once per item (executemany).

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
        return cursor.fetchall() if cursor.description is not None else []
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
