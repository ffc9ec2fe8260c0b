"""Configuration: defaults from config/, then the environment file, then environment variables."""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "config"

# Keys that must be set (non-empty) before a production process may start.
REQUIRED_IN_PRODUCTION = ("SECRET_KEY", "DATABASE_URL")
# Keys Flask and its extensions read that need not appear in defaults.toml.
PASSTHROUGH_KEYS = frozenset({"TESTING", "SERVER_NAME", "WTF_CSRF_ENABLED", "PREFERRED_URL_SCHEME"})


class ConfigError(RuntimeError):
    """The configuration cannot start the service."""


def _read(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _coerce(key: str, raw: str, default: Any) -> Any:
    """Convert an environment string to the type of the default."""
    if isinstance(default, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected a whole number, got {raw!r}") from None
    return raw


def load_config(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Build the settings dict; raise ConfigError naming any missing required key."""
    environ = os.environ if environ is None else environ
    defaults = _read(CONFIG_DIR / "defaults.toml")
    settings = dict(defaults)
    env_name = (overrides or {}).get("ENV") or environ.get("ENV") or defaults["ENV"]
    env_file = CONFIG_DIR / f"{env_name}.toml"
    if env_file.exists():
        settings.update(_read(env_file))
    elif env_name != "development":
        raise ConfigError(f"ENV={env_name!r}: no config/{env_name}.toml")
    for key, default in defaults.items():
        if key in environ:
            settings[key] = _coerce(key, environ[key], default)
    if overrides:
        for key in overrides:
            if key not in defaults and key not in PASSTHROUGH_KEYS:
                log.warning("unknown configuration key %s (ignored by the service)", key)
        settings.update(overrides)
    if settings["ENV"] == "production":
        missing = [k for k in REQUIRED_IN_PRODUCTION if not settings.get(k)]
        if missing:
            raise ConfigError(
                "missing required setting(s) for production: "
                + ", ".join(missing)
                + " (set them as environment variables)"
            )
    if not settings["DATABASE_URL"]:
        instance = PROJECT_ROOT / "instance"
        instance.mkdir(exist_ok=True)
        settings["DATABASE_URL"] = f"sqlite:///{instance / 'referral_service.sqlite3'}"
    return settings
