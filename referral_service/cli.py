"""Flask sub-commands: db, seed-demo, users, clients, rules, policy, jobs, export."""

from __future__ import annotations

from pathlib import Path

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
    @click.argument("revision", default="heads")
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

    @app.cli.group("rules")
    def rules() -> None:
        """Referral rule sets: check files, explain a stored visit's decision."""

    @rules.command("check")
    @click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
    def rules_check(files: tuple[str, ...]) -> None:
        """Validate rule files (default: every file in RULES_DIR); exit 1 listing every problem."""
        from .rules import check_files

        paths = [Path(f) for f in files] or sorted(
            p for p in rules_dir(app).glob("*") if p.suffix in (".yaml", ".yml", ".json"))
        problems = check_files(paths)
        for problem in problems:
            click.echo(problem, err=True)
        if problems:
            raise SystemExit(1)
        click.echo(f"{len(paths)} rule file(s) OK")

    @rules.command("explain")
    @click.option("--encounter", "encounter_id", required=True, help="Encounter id of a stored visit")
    def rules_explain(encounter_id: str) -> None:
        """Print the decision the rules give for a stored visit (nothing is written)."""
        from .services.referrals import explain_visit

        with database.session() as session:
            click.echo(explain_visit(session, encounter_id))

    register_seed(app)


def rules_dir(app: Flask) -> Path:
    """The configured folder of rule files."""
    from .config import PROJECT_ROOT

    return PROJECT_ROOT / app.config["RULES_DIR"]
