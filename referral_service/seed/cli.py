"""`flask seed-demo`: load the demo county once, with a progress bar."""

from __future__ import annotations

import time

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import inspect

from ..extensions import database
from ..fhir.store import ResourceStore
from .demo_county import SeedReport, is_demo_loaded, seed_demo
from .materialize import PUBLISHED_TABLES, materialize


def register(app: Flask) -> None:
    """Add the `seed-demo` command to the app's CLI."""
    app.cli.add_command(seed_demo_command)
    app.cli.add_command(fhir_publish_command)
    app.cli.add_command(fhir_reindex_command)


@click.command("seed-demo")
@click.option("--patients", type=click.IntRange(min=0), default=None,
              help="Number of residents (default: DEMO_PATIENTS, 20000).")
@click.option("--seed", type=int, default=None,
              help="Random seed; the same seed and size give the same data (default: DEMO_SEED).")
@with_appcontext
def seed_demo_command(patients: int | None, seed: int | None) -> None:
    """Load the demo county 青山县 unless it is already loaded."""
    engine = database.engine
    if not inspect(engine).has_table("organization"):
        raise click.ClickException("the database has no schema yet: run `flask db upgrade` first")
    if is_demo_loaded(engine):
        click.echo("demo county already loaded; nothing changed")
        return
    size = current_app.config["DEMO_PATIENTS"] if patients is None else patients
    seed = current_app.config["DEMO_SEED"] if seed is None else seed
    with click.progressbar(length=size, label=f"Loading {size} residents of 青山县") as bar:
        report = seed_demo(engine, patients=size, seed=seed, progress=bar.update)
    if report.skipped:  # another process loaded it meanwhile
        click.echo("demo county already loaded; nothing changed")
        return
    click.echo(format_report(report))
    publish_registry()


def publish_registry() -> None:
    """Store the registry as FHIR resources (JSON, versions, search indexes) so the API serves it."""
    started = time.perf_counter()
    with database.unit_of_work() as session:
        counts = materialize(session, progress=lambda kind, n: None)
    database.analyze(PUBLISHED_TABLES)
    total = sum(counts.values())
    elapsed = time.perf_counter() - started
    click.echo(f"published {total:,} registry records as FHIR resources in {elapsed:.1f} s")


@click.command("fhir-publish")
@with_appcontext
def fhir_publish_command() -> None:
    """Store registry rows that are not yet FHIR resources (after a bulk load)."""
    publish_registry()


@click.command("fhir-reindex")
@click.option("--batch", default=1000, show_default=True, help="resources per transaction")
@with_appcontext
def fhir_reindex_command(batch: int) -> None:
    """Extract every live resource's search index rows again (after an upgrade that indexes more,
    such as the texts of codes for `code:text=`). Safe to stop and run again."""
    started, after = time.perf_counter(), 0
    while True:
        with database.unit_of_work() as session:
            last = ResourceStore(session).reindex(after, batch)
        if last is None:
            break
        after = last
    database.analyze(PUBLISHED_TABLES)
    click.echo(f"reindexed the resources up to pk {after:,} in {time.perf_counter() - started:.1f} s")


def format_report(report: SeedReport) -> str:
    """Rows per table and the time taken, one line each."""
    width = max(map(len, report.counts))
    lines = [f"  {table:<{width}}  {count:>9,}" for table, count in report.counts.items()]
    return "\n".join(["demo county loaded:", *lines, f"in {report.elapsed:.1f} s"])
