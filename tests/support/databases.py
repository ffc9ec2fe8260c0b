"""Test databases: a fresh SQLite file and, when the server answers, a fresh PostgreSQL database."""

from __future__ import annotations

import os
import uuid

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

PG_ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_available() -> bool:
    """Whether the PostgreSQL test server answers."""
    try:
        with psycopg.connect(_libpq(PG_ADMIN_URL), connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def create_pg_database(prefix: str = "rs_test") -> str:
    """Create a uniquely named database; return its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    """Drop a database made by create_pg_database (closing its other sessions)."""
    name = make_url(url).database
    with psycopg.connect(_libpq(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_all_tables(engine: Engine, table_names: list[str]) -> None:
    """Remove every row (schema kept), fast on both engines."""
    # DELETE beats TRUNCATE for the handful of rows a test leaves (TRUNCATE rewrites files).
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA defer_foreign_keys=ON")
        for t in table_names:
            conn.execute(text(f'DELETE FROM "{t}"'))  # noqa: S608 - table names from our metadata
