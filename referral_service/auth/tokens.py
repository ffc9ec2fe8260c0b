"""Signed JWT bearer tokens for API clients."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import jwt

ALGORITHM = "HS256"


def _signing_key(secret: str) -> bytes:
    """A 256-bit key for tokens derived from the app secret (kept apart from session signing)."""
    return hmac.new(secret.encode(), b"referral-service/access-token", hashlib.sha256).digest()


class TokenError(Exception):
    """A bearer token that is missing, malformed, expired or forged."""


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says about its holder."""

    client_id: str
    organization_id: str
    scope: str
    expires: datetime
    token_id: str


def issue_token(
    *, client_id: str, organization_id: str, scope: str, key: str, issuer: str, ttl_seconds: int,
    now: datetime | None = None,
) -> str:
    """A signed token for the client, valid ttl_seconds from now."""
    now = now or datetime.now(UTC)
    payload = {
        "iss": issuer,
        "sub": client_id,
        "org": organization_id,
        "scope": scope,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl_seconds)).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(payload, _signing_key(key), algorithm=ALGORITHM)


def verify_token(token: str, *, key: str, issuer: str) -> TokenClaims:
    """Check signature, issuer and expiry; raise TokenError with a reason."""
    try:
        payload = jwt.decode(
            token, _signing_key(key), algorithms=[ALGORITHM], issuer=issuer,
            options={"require": ["exp", "iat", "sub", "org", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the access token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"the access token is not valid ({exc.__class__.__name__})") from None
    return TokenClaims(
        client_id=str(payload["sub"]),
        organization_id=str(payload["org"]),
        scope=str(payload.get("scope", "")),
        expires=datetime.fromtimestamp(int(payload["exp"]), UTC),
        token_id=str(payload.get("jti", "")),
    )


@lru_cache(maxsize=4096)
def _verified(token: str, key: str, issuer: str) -> TokenClaims:
    return verify_token(token, key=key, issuer=issuer)


def verify_token_cached(token: str, *, key: str, issuer: str, now: datetime | None = None) -> TokenClaims:
    """`verify_token`, remembering tokens already verified (a client sends the same one for an hour).

    Signature and issuer are checked once per token; expiry is checked on every call.
    """
    claims = _verified(token, key, issuer)
    if claims.expires <= (now or datetime.now(UTC)):
        raise TokenError("the access token has expired")
    return claims
