"""Fixtures: the app on SQLite and on PostgreSQL (when the server answers), clients, factories."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from referral_service import create_app
from referral_service.domain.models import metadata
from referral_service.extensions import database
from referral_service.migrate import upgrade
from tests.support.databases import (
    create_pg_database,
    drop_pg_database,
    empty_all_tables,
    postgres_available,
)

# CI sets REQUIRE_POSTGRES=1 so a missing server fails the run instead of skipping silently.
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"
_PG = postgres_available()
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def database_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One migrated database per backend for the whole run."""
    urls = {"sqlite": f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"}
    if _PG:
        urls["postgresql"] = create_pg_database()
    yield urls
    database.dispose()
    if "postgresql" in urls:
        drop_pg_database(urls["postgresql"])


_migrated: set[str] = set()


def make_app(url: str, **overrides: Any) -> Flask:
    """An app on the URL, migrated to head once per run."""
    app = create_app({"ENV": "testing", "DATABASE_URL": url, "TESTING": True,
                      "WTF_CSRF_ENABLED": False, **overrides})
    if url not in _migrated:
        upgrade(database.engine)
        _migrated.add(url)
    return app


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database engine under test."""
    name: str = request.param
    if name == "postgresql" and not _PG:
        if REQUIRE_POSTGRES:
            pytest.fail("PostgreSQL is required (REQUIRE_POSTGRES=1) but does not answer")
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    return name


@pytest.fixture
def app(backend: str, database_urls: dict[str, str]) -> Iterator[Flask]:
    """The application on a clean database of the backend."""
    application = make_app(database_urls[backend])
    yield application
    empty_all_tables(database.engine, [t.name for t in reversed(metadata.sorted_tables)])


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for the app."""
    return app.test_client()


@pytest.fixture
def make_org(app: Flask) -> Callable[..., str]:
    """Factory: an organisation row; returns its id."""
    from referral_service.domain.registry import Organization

    def factory(org_id: str, **fields: Any) -> str:
        values: dict[str, Any] = {"name": org_id, "district": "青山县", "facility_level": "township"}
        values.update(fields)
        with database.unit_of_work() as session:
            session.add(Organization(id=org_id, **values))
        return org_id

    return factory


@pytest.fixture
def make_api_client(app: Flask, make_org: Callable[..., str]) -> Callable[..., tuple[str, str]]:
    """Factory: an API client bound to an organisation; returns (client_id, secret)."""
    from referral_service.services.accounts import create_api_client

    def factory(client_id: str = "his", scopes: str = "system/*.cruds", org_id: str = "org-1",
                secret: str = "s3cret-value") -> tuple[str, str]:  # noqa: S107
        from referral_service.domain.registry import Organization

        with database.unit_of_work() as session:
            if session.get(Organization, org_id) is None:
                session.add(Organization(id=org_id, name=org_id, district="青山县", facility_level="county"))
                session.flush()
            create_api_client(session, client_id=client_id, organization_id=org_id, scopes=scopes,
                              secret=secret)
        return client_id, secret

    return factory
