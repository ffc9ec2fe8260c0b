"""Use cases for accounts: users and API clients."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..auth.passwords import hash_secret, needs_rehash, verify_secret
from ..auth.scopes import parse_scopes
from ..domain.accounts import ROLES, ApiClient, User
from ..domain.base import utcnow
from ..domain.errors import Conflict, Unauthorized, Unprocessable
from ..domain.registry import Organization


def create_user(
    session: Session, *, username: str, password: str, role: str, organization_id: str,
    display_name: str | None = None, locale: str = "zh",
) -> User:
    """Register a staff user with an argon2 password hash."""
    if role not in ROLES:
        raise Unprocessable(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise Unprocessable("password must have at least 8 characters")
    if session.get(Organization, organization_id) is None:
        raise Unprocessable(f"unknown organization {organization_id!r}")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} exists")
    user = User(
        username=username, display_name=display_name or username, password_hash=hash_secret(password),
        role=role, organization_id=organization_id, locale=locale,
    )
    session.add(user)
    session.flush()
    return user


def set_user_locale(session: Session, user_id: int, locale: str) -> None:
    """Remember the language a user chose (zh or en): their next sign-in starts in it."""
    if locale not in ("zh", "en"):
        raise Unprocessable(f"unknown language {locale!r}; expected zh or en")
    user = session.get(User, user_id)
    if user is None:
        raise Unprocessable(f"unknown user {user_id}")
    user.locale = locale


def set_user_active(session: Session, username: str, active: bool, *, by: str) -> User:
    """Let a user sign in again, or stop them (their open sessions end at their next request)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise Unprocessable(f"unknown user {username!r}")
    if not active and username == by:
        raise Conflict("you cannot deactivate your own account")
    user.active = active
    return user


def set_client_active(session: Session, client_id: str, active: bool) -> ApiClient:
    """Let an API client get tokens again, or stop it (tokens it holds stop working within 30 s)."""
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    if client is None:
        raise Unprocessable(f"unknown API client {client_id!r}")
    client.active = active
    return client


def authenticate_user(session: Session, username: str, password: str) -> User:
    """The active user with this password, or Unauthorized (same answer for unknown users)."""
    user = session.scalar(select(User).where(User.username == username))
    if not verify_secret(user.password_hash if user else None, password) or user is None or not user.active:
        raise Unauthorized("wrong user name or password")
    if needs_rehash(user.password_hash):
        user.password_hash = hash_secret(password)
    user.last_login = utcnow()
    return user


def create_api_client(
    session: Session, *, client_id: str, organization_id: str, scopes: str, name: str | None = None,
    secret: str | None = None,
) -> tuple[ApiClient, str]:
    """Register an API client; returns it with its secret (shown once, only the hash is kept)."""
    parse_scopes(scopes)  # raises ScopeError on a malformed scope
    if session.get(Organization, organization_id) is None:
        raise Unprocessable(f"unknown organization {organization_id!r}")
    if session.scalar(select(ApiClient.id).where(ApiClient.client_id == client_id)) is not None:
        raise Conflict(f"API client {client_id!r} exists")
    secret = secret or secrets.token_urlsafe(32)
    client = ApiClient(
        client_id=client_id, name=name or client_id, secret_hash=hash_secret(secret),
        organization_id=organization_id, scopes=" ".join(scopes.split()),
    )
    session.add(client)
    session.flush()
    return client, secret


def rotate_client_secret(session: Session, client_id: str) -> str:
    """Replace a client's secret; the new secret is returned once."""
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    if client is None:
        raise Unprocessable(f"unknown API client {client_id!r}")
    secret = secrets.token_urlsafe(32)
    client.secret_hash = hash_secret(secret)
    client.secret_rotated = utcnow()
    return secret


def authenticate_client(session: Session, client_id: str, secret: str) -> ApiClient:
    """The active client with this secret, or Unauthorized (same answer for unknown clients)."""
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    if not verify_secret(client.secret_hash if client else None, secret) or client is None:
        raise Unauthorized("client authentication failed")
    if not client.active:
        raise Unauthorized("client authentication failed")
    return client
