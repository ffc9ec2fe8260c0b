"""SMART on FHIR v2 system scopes: parsing, matching and granting."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

PERMISSIONS = "cruds"
_SCOPE = re.compile(r"^system/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|[cruds]+)$")
# SMART v1 spellings still sent by older systems.
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


class ScopeError(ValueError):
    """A scope string that is not a SMART system scope."""


@dataclass(frozen=True)
class Scope:
    """One system scope: a resource type (or *) and a set of permission letters."""

    resource: str
    permissions: str

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse `system/Patient.rs` (v2) or `system/Patient.read` (v1)."""
        m = _SCOPE.match(text)
        if not m:
            raise ScopeError(f"not a SMART system scope: {text!r}")
        resource, perms = m.groups()
        perms = _V1.get(perms, perms)
        if len(set(perms)) != len(perms) or perms != "".join(p for p in PERMISSIONS if p in perms):
            raise ScopeError(f"permissions must be in the order c, r, u, d, s without repeats: {text!r}")
        return cls(resource, perms)

    def __str__(self) -> str:
        return f"system/{self.resource}.{self.permissions}"

    def allows(self, resource: str, permission: str) -> bool:
        """Whether this scope permits the interaction letter on the resource type."""
        return self.resource in ("*", resource) and permission in self.permissions

    def intersect(self, other: Scope) -> Scope | None:
        """What both scopes allow, or None."""
        if self.resource == "*":
            resource = other.resource
        elif other.resource in ("*", self.resource):
            resource = self.resource
        else:
            return None
        perms = "".join(p for p in PERMISSIONS if p in self.permissions and p in other.permissions)
        return Scope(resource, perms) if perms else None


def parse_scopes(text: str) -> list[Scope]:
    """Parse a space-separated scope string."""
    return [Scope.parse(part) for part in text.split()]


def _system_scopes(text: str) -> list[Scope]:
    """The SMART system scopes of a requested scope string; anything else in it is left out.

    A client may ask for scopes this server never grants in the client-credentials flow (`openid`,
    `launch`, `offline_access`, `patient/...`, `user/...`, SMART v2 scopes narrowed by a query):
    they are dropped from the grant, as OAuth 2.0 (RFC 6749 section 3.3) lets a server do, and the
    answer's `scope` says what was granted.
    """
    found = []
    for part in text.split():
        try:
            found.append(Scope.parse(part))
        except ScopeError:
            continue
    return found


def grant(requested: str | None, held: str) -> list[Scope]:
    """The intersection of what was asked and what the client holds (all held when nothing asked)."""
    held_scopes = parse_scopes(held)
    if not requested or not requested.strip():
        return held_scopes
    granted: list[Scope] = []
    for asked in _system_scopes(requested):
        for have in held_scopes:
            common = asked.intersect(have)
            if common is not None and common not in granted:
                granted.append(common)
    return granted


def allows(scopes: Sequence[Scope], resource: str, permission: str) -> bool:
    """Whether any scope permits the interaction."""
    return any(s.allows(resource, permission) for s in scopes)
