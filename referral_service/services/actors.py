"""Resolve who is acting: an API client or user becomes an Actor with its organisation's facts.

Every API request needs its organisation's facts (level, kind, district) for the access policy. They
change rarely, so each process keeps them for `FACTS_TTL_SECONDS`; a change written through the ORM
in this process forgets them at once, other processes pick it up when their entry expires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, event, select
from sqlalchemy.orm import Session

from ..domain.accounts import ApiClient
from ..domain.actor import Actor
from ..domain.errors import InvalidToken, Unauthorized
from ..domain.registry import Organization

PLATFORM_CLIENTS = frozenset({"county-platform"})
FACTS_TTL_SECONDS = 30.0


@dataclass(frozen=True)
class _Facts:
    facility_level: str | None
    kind: str | None
    district: str | None


# (database engine, organisation id) -> (expires at, facts); one process may serve several databases.
_facts: dict[tuple[int, str], tuple[float, _Facts]] = {}


# (database engine, client id) -> (expires at, active): a deactivated client's tokens stop working
# within FACTS_TTL_SECONDS in every process (at once in the process that deactivated it).
_clients: dict[tuple[int, str], tuple[float, bool]] = {}


def forget(organization_id: str | None = None) -> None:
    """Drop the cached facts of one organisation (all, and every client's state, when None)."""
    for key in [k for k in _facts if organization_id is None or k[1] == organization_id]:
        _facts.pop(key, None)
    if organization_id is None:
        _clients.clear()


@event.listens_for(Organization, "after_insert")
@event.listens_for(Organization, "after_update")
@event.listens_for(Organization, "after_delete")
def _organization_changed(mapper: Any, connection: Any, target: Organization) -> None:
    forget(target.id)


def _organization_facts(session: Session | Connection, organization_id: str) -> _Facts | None:
    engine = session.get_bind() if isinstance(session, Session) else session.engine
    key = (id(engine), organization_id)
    cached = _facts.get(key)
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    row = session.execute(
        select(Organization.facility_level, Organization.kind, Organization.district).where(
            Organization.id == organization_id
        )
    ).first()
    if row is None:
        _facts.pop(key, None)
        return None
    facts = _Facts(row.facility_level, row.kind, (row.district or "").strip() or None)
    _facts[key] = (now + FACTS_TTL_SECONDS, facts)
    return facts


def actor_for(
    session: Session | Connection, *, name: str, kind: str, organization_id: str, admin: bool = False
) -> Actor:
    """The Actor for a client or user acting for the organisation."""
    facts = _organization_facts(session, organization_id)
    if facts is None:
        raise Unauthorized(f"the organisation {organization_id} of {name} no longer exists")
    return Actor(
        name=name, kind=kind, organization_id=organization_id, facility_level=facts.facility_level,
        organization_kind=facts.kind, district=facts.district,
        is_platform=admin or (kind == "client" and name in PLATFORM_CLIENTS),
    )


@event.listens_for(ApiClient, "after_update")
@event.listens_for(ApiClient, "after_delete")
def _client_changed(mapper: Any, connection: Any, target: ApiClient) -> None:
    for key in [k for k in _clients if k[1] == target.client_id]:
        _clients.pop(key, None)


def check_client_active(engine: Engine, client_id: str) -> None:
    """401 for a token of a client that has been deactivated (or removed) since it was issued."""
    key = (id(engine), client_id)
    now = time.monotonic()
    cached = _clients.get(key)
    if cached is None or cached[0] <= now:
        # Its own connection, reading statement by statement (SQLite: without the writer lock).
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            active = connection.execute(
                select(ApiClient.active).where(ApiClient.client_id == client_id)
            ).scalar_one_or_none()
        cached = (now + FACTS_TTL_SECONDS, bool(active))
        _clients[key] = cached
    if not cached[1]:
        raise InvalidToken(f"the API client {client_id} has been deactivated")
