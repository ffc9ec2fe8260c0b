"""Password hashing, bearer tokens and SMART scopes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from referral_service.auth.passwords import hash_secret, verify_secret
from referral_service.auth.scopes import Scope, ScopeError, grant, parse_scopes
from referral_service.auth.tokens import TokenError, issue_token, verify_token, verify_token_cached

KEY = "test-signing-key-of-reasonable-length"


def test_password_hash_is_argon2id_and_salted() -> None:
    first, second = hash_secret("demo-password"), hash_secret("demo-password")
    assert first.startswith("$argon2id$")
    assert first != second
    assert verify_secret(first, "demo-password")
    assert not verify_secret(first, "demo-passwore")


def test_unknown_account_never_verifies() -> None:
    assert not verify_secret(None, "no-such-account")


def test_garbage_hash_does_not_raise() -> None:
    assert not verify_secret("not-a-hash", "x")


def test_token_round_trip() -> None:
    token = issue_token(client_id="county-his", organization_id="org-1", scope="system/Patient.rs",
                        key=KEY, issuer="rs", ttl_seconds=60)
    claims = verify_token(token, key=KEY, issuer="rs")
    assert (claims.client_id, claims.organization_id, claims.scope) == ("county-his", "org-1",
                                                                        "system/Patient.rs")
    assert claims.expires > datetime.now(UTC)


def test_expired_token_is_refused() -> None:
    token = issue_token(client_id="c", organization_id="o", scope="", key=KEY, issuer="rs",
                        ttl_seconds=60, now=datetime.now(UTC) - timedelta(hours=2))
    with pytest.raises(TokenError, match="expired"):
        verify_token(token, key=KEY, issuer="rs")


def test_forged_token_is_refused() -> None:
    token = issue_token(client_id="c", organization_id="o", scope="", key="another-key-entirely-here",
                        issuer="rs", ttl_seconds=60)
    with pytest.raises(TokenError, match="InvalidSignatureError"):
        verify_token(token, key=KEY, issuer="rs")


def test_token_from_another_issuer_is_refused() -> None:
    token = issue_token(client_id="c", organization_id="o", scope="", key=KEY, issuer="other",
                        ttl_seconds=60)
    with pytest.raises(TokenError):
        verify_token(token, key=KEY, issuer="rs")


def test_unsigned_token_is_refused() -> None:
    token = jwt.encode({"sub": "c", "org": "o", "iss": "rs", "iat": 0, "exp": 2**31}, None,
                       algorithm="none")
    with pytest.raises(TokenError):
        verify_token(token, key=KEY, issuer="rs")


@pytest.mark.parametrize(
    ("text", "resource", "perms"),
    [("system/Patient.rs", "Patient", "rs"), ("system/*.cruds", "*", "cruds"),
     ("system/Claim.c", "Claim", "c"), ("system/Patient.read", "Patient", "rs"),
     ("system/Patient.write", "Patient", "cud")],
)
def test_scope_parsing(text: str, resource: str, perms: str) -> None:
    assert Scope.parse(text) == Scope(resource, perms)


@pytest.mark.parametrize("text", ["user/Patient.rs", "system/Patient.sr", "system/Patient.rr",
                                  "system/patient.rs", "system/Patient", "Patient.rs"])
def test_bad_scopes_are_refused(text: str) -> None:
    with pytest.raises(ScopeError):
        Scope.parse(text)


def test_grant_is_the_intersection() -> None:
    held = "system/Patient.rs system/Claim.crs"
    assert [str(s) for s in grant("system/Patient.cruds system/Task.rs", held)] == ["system/Patient.rs"]
    assert [str(s) for s in grant("system/*.rs", held)] == ["system/Patient.rs", "system/Claim.rs"]
    assert [str(s) for s in grant(None, held)] == ["system/Patient.rs", "system/Claim.crs"]
    assert grant("system/Task.rs", held) == []


def test_wildcard_holder_grants_what_is_asked() -> None:
    assert [str(s) for s in grant("system/Claim.c system/Patient.rs", "system/*.cruds")] == [
        "system/Claim.c", "system/Patient.rs"]


def test_scope_allows() -> None:
    scopes = parse_scopes("system/Patient.rs system/Claim.c")
    assert scopes[0].allows("Patient", "r") and scopes[0].allows("Patient", "s")
    assert not scopes[0].allows("Patient", "c")
    assert scopes[1].allows("Claim", "c") and not scopes[1].allows("Claim", "r")


def test_cached_verification_still_refuses_a_token_once_it_expires() -> None:
    issued = datetime.now(UTC)
    token = issue_token(client_id="c", organization_id="o", scope="", key=KEY, issuer="rs",
                        ttl_seconds=60, now=issued)
    first = verify_token_cached(token, key=KEY, issuer="rs")
    assert verify_token_cached(token, key=KEY, issuer="rs") == first  # served from the cache
    with pytest.raises(TokenError, match="expired"):
        verify_token_cached(token, key=KEY, issuer="rs", now=issued + timedelta(seconds=61))


def test_cached_verification_never_caches_a_refusal() -> None:
    forged = issue_token(client_id="c", organization_id="o", scope="", key="another-key-entirely-here",
                         issuer="rs", ttl_seconds=60)
    for _ in range(2):
        with pytest.raises(TokenError):
            verify_token_cached(forged, key=KEY, issuer="rs")
    # The same token checked against the key it was signed with is fine: the key is part of the cache key.
    assert verify_token_cached(forged, key="another-key-entirely-here", issuer="rs").client_id == "c"
