"""Configuration loading: defaults, environment overrides, production requirements."""

from __future__ import annotations

import logging

import pytest

from referral_service.config import ConfigError, load_config


def test_defaults_give_sqlite_under_instance() -> None:
    settings = load_config(environ={})
    assert settings["DATABASE_URL"].startswith("sqlite:///")
    assert settings["DATABASE_URL"].endswith("instance/referral_service.sqlite3")
    assert settings["PORT"] == 8000


def test_environment_overrides_are_typed() -> None:
    settings = load_config(environ={"PORT": "9001", "LOG_JSON": "false",
                                    "DATABASE_URL": "postgresql+psycopg://x@h/db"})
    assert settings["PORT"] == 9001
    assert settings["LOG_JSON"] is False
    assert settings["DATABASE_URL"] == "postgresql+psycopg://x@h/db"


def test_bad_number_names_the_key() -> None:
    with pytest.raises(ConfigError, match="TOKEN_TTL_SECONDS"):
        load_config(environ={"TOKEN_TTL_SECONDS": "an hour"})


def test_bad_boolean_names_the_key() -> None:
    with pytest.raises(ConfigError, match="SQL_ECHO"):
        load_config(environ={"SQL_ECHO": "maybe"})


def test_production_without_secret_stops_with_its_name() -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY") as info:
        load_config(environ={"ENV": "production", "DATABASE_URL": "postgresql+psycopg://x@h/db"})
    assert "DATABASE_URL" not in str(info.value)


def test_production_names_every_missing_setting() -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY, DATABASE_URL"):
        load_config(environ={"ENV": "production"})


def test_production_with_required_settings_starts() -> None:
    settings = load_config(environ={"ENV": "production", "SECRET_KEY": "k" * 32,
                                    "DATABASE_URL": "postgresql+psycopg://x@h/db"})
    assert settings["ENV"] == "production"
    assert settings["SESSION_COOKIE_SECURE"] is True  # the sign-in cookie travels over HTTPS only
    assert load_config(environ={})["SESSION_COOKIE_SECURE"] is False  # `make run` on plain http


def test_unknown_environment_file_is_refused() -> None:
    with pytest.raises(ConfigError, match="staging"):
        load_config(environ={"ENV": "staging"})


def test_unknown_override_key_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_config({"DATABSE_URL": "typo"}, environ={})
    assert "DATABSE_URL" in caplog.text


def test_the_app_works_out_once_whether_a_view_is_a_coroutine(monkeypatch: pytest.MonkeyPatch) -> None:
    import flask.app

    from referral_service import create_app

    app = create_app({"DATABASE_URL": "sqlite://", "ENV": "testing"})
    asked: list[object] = []
    real = flask.app.iscoroutinefunction

    def counting(func: object) -> bool:
        asked.append(func)
        return real(func)

    monkeypatch.setattr(flask.app, "iscoroutinefunction", counting)
    client = app.test_client()
    assert client.get("/fhir/metadata").status_code == 200
    first = len(asked)
    assert first > 0
    assert client.get("/fhir/metadata").status_code == 200
    assert len(asked) == first  # the second request asked nothing

    def view() -> str:
        return "plain"

    assert app.ensure_sync(view) is view

    async def coroutine_view() -> str:
        return "async"

    with pytest.raises(RuntimeError, match="async"):  # Flask's own answer (asgiref is not installed)
        app.ensure_sync(coroutine_view)
