"""Flask sub-commands: db, seed-demo, users, clients, rules, policy, jobs, export."""

from __future__ import annotations

import click
from flask import Flask

from . import migrate
from .extensions import database
from .seed.cli import register as register_seed


def register_cli(app: Flask) -> None:
    """Attach the command groups to the app."""

    @app.cli.group("db")
    def db() -> None:
        """Database schema (Alembic migrations)."""

    @db.command("upgrade")
    @click.argument("revision", default="head")
    def db_upgrade(revision: str) -> None:
        """Migrate the database to REVISION (default: head)."""
        migrate.upgrade(database.engine, revision)
        click.echo(f"database at {revision}")

    @db.command("downgrade")
    @click.argument("revision")
    def db_downgrade(revision: str) -> None:
        """Migrate the database down to REVISION."""
        migrate.downgrade(database.engine, revision)

    @db.command("revision")
    @click.option("-m", "--message", required=True)
    def db_revision(message: str) -> None:
        """Autogenerate a migration from the models."""
        migrate.revision(database.engine, message)

    register_seed(app)
