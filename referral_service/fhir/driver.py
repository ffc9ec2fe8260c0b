"""PostgreSQL: fixed SQL text run on the driver's cursor of a SQLAlchemy connection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection, Dialect


def driver_rows(connection: Connection, sql: str, values: dict[str, Any]) -> Sequence[Any]:
    """The rows of SQL text, from the driver's cursor on the connection (in its transaction).

    SQLAlchemy's execution would also describe the result's columns and build its result object: a
    tenth of a read's CPU, for rows that are only read by position. Errors still go through
    SQLAlchemy's handling (wrapped, and a connection found dead is discarded from the pool). While
    statement listeners are attached (tests, diagnostics), the statement runs through SQLAlchemy so
    that they see it.
    """
    if connection.dispatch.before_cursor_execute or connection.dispatch.after_cursor_execute:
        return connection.exec_driver_sql(sql, values).all()
    driver = connection.connection.dbapi_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        cursor.execute(sql, values)
        return cursor.fetchall()
    except Exception as exc:
        connection._handle_dbapi_exception(exc, sql, values, cursor, None)
        raise  # (not reached: the handler raises SQLAlchemy's wrapped error)
    finally:
        cursor.close()


class Compiled(NamedTuple):
    """A Core statement compiled once: its SQL text and its values' conversions (bind processors)."""

    sql: str
    processors: dict[str, Callable[[Any], Any]]


def compiled(stmt: Any, dialect: Dialect) -> Compiled:
    """Compile a statement whose values are all named bind parameters."""
    done = stmt.compile(dialect=dialect)
    return Compiled(str(done), dict(done._bind_processors))


def bound(statement: Compiled, values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(SQL, values) with each value converted as its column type converts it."""
    for name, process in statement.processors.items():
        values[name] = process(values[name])
    return statement.sql, values
