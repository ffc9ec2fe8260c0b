"""Flask sub-commands: db, seed-demo, users, clients, rules, policy, jobs, export."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click
from flask import Flask

from . import migrate
from .domain.errors import DomainError
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

        try:
            with database.session() as session:
                click.echo(explain_visit(session, encounter_id))
        except DomainError as exc:
            raise click.ClickException(exc.message) from None

    @app.cli.group("policy")
    def policy() -> None:
        """Settlement policies: check files, show the one in force."""

    @policy.command("check")
    @click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
    def policy_check(files: tuple[str, ...]) -> None:
        """Validate policy files (default: every file in POLICIES_DIR), overlaps included."""
        from .settlement import check_files as check_policies

        paths = [Path(f) for f in files] or sorted(
            p for p in policies_dir(app).glob("*") if p.suffix in (".yaml", ".yml", ".json"))
        problems = check_policies(paths)
        for problem in problems:
            click.echo(problem, err=True)
        if problems:
            raise SystemExit(1)
        click.echo(f"{len(paths)} policy file(s) OK")

    @policy.command("show")
    @click.option("--region", required=True, help="insured region (district), e.g. 青山县")
    @click.option("--date", "on", required=True, type=click.DateTime(formats=["%Y-%m-%d"]))
    def policy_show(region: str, on: datetime) -> None:
        """Print the policy in force for a region on a date."""
        import json

        from .services.settlement import policies
        from .settlement import NoPolicyError

        try:
            found = policies().in_force(region, on.date())
        except NoPolicyError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(json.dumps(found.to_dict(), ensure_ascii=False, indent=2, default=str))

    register_seed(app)


def policies_dir(app: Flask) -> Path:
    """The configured folder of policy files."""
    from .config import PROJECT_ROOT

    return PROJECT_ROOT / app.config["POLICIES_DIR"]


def rules_dir(app: Flask) -> Path:
    """The configured folder of rule files."""
    from .config import PROJECT_ROOT

    return PROJECT_ROOT / app.config["RULES_DIR"]
