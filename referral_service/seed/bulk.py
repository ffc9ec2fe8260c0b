"""Fast bulk inserts of row tuples: COPY on PostgreSQL (psycopg 3), executemany elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from sqlalchemy import Connection, Table, insert


class RowWriter:
    """Writes NamedTuple rows whose field names are column names, inside the caller's transaction."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        raw: Any = connection.connection.dbapi_connection
        # COPY bypasses SQLAlchemy's type processing: rows must hold plain str, int, Decimal,
        # date, bool or None, which psycopg adapts itself.
        self._copy_to: psycopg.Connection[Any] | None = (
            raw if connection.dialect.name == "postgresql" and isinstance(raw, psycopg.Connection)
            else None
        )

    @property
    def uses_copy(self) -> bool:
        """True when rows go through PostgreSQL COPY."""
        return self._copy_to is not None

    def write(self, table: Table, rows: Sequence[NamedTuple]) -> None:
        """Insert the rows into the table (all rows share one NamedTuple type)."""
        if not rows:
            return
        if self._copy_to is None:
            self._connection.execute(insert(table), [row._asdict() for row in rows])
            return
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, rows[0]._fields))
        )
        with self._copy_to.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
