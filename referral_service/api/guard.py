"""Bearer-token guard for the FHIR API: token, scope and organisation on every call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from flask import current_app, g, request

from ..auth.scopes import Scope, allows, parse_scopes
from ..auth.tokens import TokenError, verify_token_cached
from ..domain.errors import Forbidden, InvalidToken, Unauthorized
from ..extensions import database
from ..services.actors import check_client_active

PLATFORM_CLIENTS = frozenset({"county-platform"})


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API client acting for an organisation, with granted scopes."""

    client_id: str
    organization_id: str
    scopes: tuple[Scope, ...]

    @property
    def is_platform(self) -> bool:
        """The county platform may act for any provider."""
        return self.client_id in PLATFORM_CLIENTS

    def may(self, resource_type: str, permission: str) -> bool:
        """Whether the granted scopes allow the interaction."""
        return allows(self.scopes, resource_type, permission)


@lru_cache(maxsize=256)
def _scopes(text: str) -> tuple[Scope, ...]:
    return tuple(parse_scopes(text))


def current_principal() -> Principal:
    """Authenticate the request's bearer token (cached on g)."""
    principal: Principal | None = g.get("principal")
    if principal is not None:
        return principal
    principal = principal_for(request.headers.get("Authorization", ""), current_app.config)
    g.principal = principal
    g.client_id = principal.client_id
    return principal


def principal_for(header: str, config: Mapping[str, Any]) -> Principal:
    """The caller an Authorization header names: its token verified, its client still active.

    401 (`Unauthorized`, `InvalidToken`) when there is no usable bearer token.
    """
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("an access token is required (Authorization: Bearer ...)")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("the Authorization header must be 'Bearer <token>'")
    try:
        claims = verify_token_cached(token.strip(), key=config["SECRET_KEY"], issuer=config["TOKEN_ISSUER"])
    except TokenError as exc:
        raise InvalidToken(str(exc)) from None
    check_client_active(database.engine, claims.client_id)
    return Principal(claims.client_id, claims.organization_id, _scopes(claims.scope))


def require(resource_type: str, permission: str) -> Principal:
    """The caller, if its scopes allow the interaction on the type; else 401/403."""
    principal = current_principal()
    if not principal.may(resource_type, permission):
        raise Forbidden(
            f"the token's scopes do not allow '{permission}' on {resource_type} "
            f"(needs system/{resource_type}.{permission})"
        )
    return principal
