"""Who acts: the organisation a client or user works for, and what that lets it see."""

from __future__ import annotations

from dataclasses import dataclass

# The offices that watch the network: they see every monitoring alert (DESIGN section 6).
MONITORING_OFFICES = frozenset({"poverty-office", "health-commission", "insurer"})


@dataclass(frozen=True)
class Actor:
    """The caller of a use case (API client or web user) as the access policy sees it."""

    name: str  # client id or user name
    kind: str  # client, user, system
    organization_id: str | None
    facility_level: str | None = None  # village ... province, or None for offices
    organization_kind: str | None = None  # insurer, health-commission, poverty-office
    district: str | None = None
    is_platform: bool = False  # the county platform (and admins) see and act for everyone

    @property
    def sees_everything(self) -> bool:
        """System jobs and the county platform are not filtered."""
        return self.is_platform or self.kind == "system"

    @property
    def leads_district(self) -> bool:
        """A county-level hospital leads its district's medical community: it sees its residents."""
        return self.facility_level == "county"

    @property
    def monitors(self) -> bool:
        """The poverty-alleviation office, the health commission or the insurer (or the platform)."""
        return self.sees_everything or self.organization_kind in MONITORING_OFFICES

    @property
    def is_insurer(self) -> bool:
        """The medical insurance bureau."""
        return self.organization_kind == "insurer"


SYSTEM = Actor(name="system", kind="system", organization_id=None, is_platform=True)
