"""Resolve who is acting: an API client or user becomes an Actor with its organisation's facts."""

from __future__ import annotations

from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.errors import Unauthorized
from ..domain.registry import Organization

PLATFORM_CLIENTS = frozenset({"county-platform"})


def actor_for(session: Session, *, name: str, kind: str, organization_id: str, admin: bool = False) -> Actor:
    """The Actor for a client or user acting for the organisation."""
    org = session.get(Organization, organization_id)
    if org is None:
        raise Unauthorized(f"the organisation {organization_id} of {name} no longer exists")
    return Actor(
        name=name, kind=kind, organization_id=org.id, facility_level=org.facility_level,
        organization_kind=org.kind, district=(org.district or "").strip() or None,
        is_platform=admin or (kind == "client" and name in PLATFORM_CLIENTS),
    )
