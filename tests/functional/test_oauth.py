"""POST /oauth/token: client credentials, errors, scopes, and the bearer guard."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
def his(make_api_client: Callable[..., tuple[str, str]]) -> tuple[str, str]:
    return make_api_client("county-his", "system/Patient.rs system/Claim.c", "org-county")


def test_token_with_basic_auth(client: FlaskClient, his: tuple[str, str]) -> None:
    response = client.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(*his))
    assert response.status_code == 200
    body = response.json
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "system/Patient.rs system/Claim.c"
    assert body["organization"] == "Organization/org-county"
    assert response.headers["Cache-Control"] == "no-store"


def test_token_with_form_credentials_and_narrowed_scope(client: FlaskClient, his: tuple[str, str]) -> None:
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": his[0],
            "client_secret": his[1],
            "scope": "system/Patient.cruds system/Task.rs",
        },
    )
    assert response.status_code == 200
    assert response.json["scope"] == "system/Patient.rs"


def test_token_lifetime_follows_configuration(client: FlaskClient, his: tuple[str, str]) -> None:
    client.application.config["TOKEN_TTL_SECONDS"] = 120
    response = client.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(*his))
    assert response.json["expires_in"] == 120


def test_scope_outside_the_client_is_invalid_scope(client: FlaskClient, his: tuple[str, str]) -> None:
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "system/Task.rs"},
        headers=basic(*his),
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_scope"


def test_malformed_scope_is_invalid_scope(client: FlaskClient, his: tuple[str, str]) -> None:
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "patient/*.read"},
        headers=basic(*his),
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_scope"


def test_scopes_this_server_never_grants_are_dropped(client: FlaskClient, his: tuple[str, str]) -> None:
    asked = "openid fhirUser launch offline_access patient/*.read system/Patient.rs system/Patient.rs?x=1"
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials", "scope": asked}, headers=basic(*his)
    )
    assert response.status_code == 200, response.json
    assert response.json["scope"] == "system/Patient.rs"


def test_bad_secret_is_401_and_secret_never_logged(
    client: FlaskClient, his: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers=basic(his[0], "wrong-secret-zebra"),
        )
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert "wrong-secret-zebra" not in caplog.text
    assert his[1] not in caplog.text


def test_unknown_client_gets_the_same_answer(client: FlaskClient, his: tuple[str, str]) -> None:
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=basic("nobody", "whatever")
    )
    assert response.status_code == 401
    assert response.json == {"error": "invalid_client", "error_description": "client authentication failed"}


def test_missing_grant_type(client: FlaskClient, his: tuple[str, str]) -> None:
    response = client.post("/oauth/token", data={}, headers=basic(*his))
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"
    assert "grant_type" in response.json["error_description"]


def test_other_grant_type(client: FlaskClient, his: tuple[str, str]) -> None:
    response = client.post("/oauth/token", data={"grant_type": "password"}, headers=basic(*his))
    assert response.status_code == 400
    assert response.json["error"] == "unsupported_grant_type"


def test_wrong_content_type(client: FlaskClient, his: tuple[str, str]) -> None:
    response = client.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=basic(*his))
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"
    assert "x-www-form-urlencoded" in response.json["error_description"]


def test_no_credentials(client: FlaskClient) -> None:
    response = client.post("/oauth/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"


def test_token_endpoint_is_rate_limited(client: FlaskClient, his: tuple[str, str]) -> None:
    client.application.config["TOKEN_RATE_LIMIT"] = "3/minute"
    statuses = [
        client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(his[0], "bad")
        ).status_code
        for _ in range(5)
    ]
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3:] == [429, 429]


def test_get_is_not_allowed(client: FlaskClient) -> None:
    assert client.get("/oauth/token").status_code == 405


@pytest.mark.parametrize(
    "form",
    [
        {"client_id": "other-his", "client_secret": "other-secret"},  # another client in the form
        {"client_id": "county-his", "client_secret": "s3cret-value"},  # the same one, twice over
        {"client_secret": "s3cret-value"},  # a second secret
        {"client_id": "other-his"},  # another client id
    ],
)
def test_basic_and_form_credentials_together_are_400_invalid_request(
    client: FlaskClient, his: tuple[str, str], make_api_client: Callable[..., tuple[str, str]],
    form: dict[str, str],
) -> None:
    """RFC 6749 2.3: one authentication method per request; Basic no longer silently wins."""
    make_api_client("other-his", "system/Patient.rs", "org-other", secret="other-secret")
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials", **form}, headers=basic(*his)
    )
    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_request"
    assert "one method" in response.json["error_description"]
    assert response.headers["Cache-Control"] == "no-store"
    assert "access_token" not in response.json


def test_basic_with_the_same_client_id_in_the_form_is_accepted(
    client: FlaskClient, his: tuple[str, str]
) -> None:
    """A form client_id naming the Basic client (and no form secret) identifies, it does not authenticate."""
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials", "client_id": his[0]}, headers=basic(*his)
    )
    assert response.status_code == 200, response.json
    assert response.json["organization"] == "Organization/org-county"


def test_smart_discovery_leads_a_backend_client_to_a_working_token(
    client: FlaskClient, his: tuple[str, str]
) -> None:
    """SMART App Launch 2.0 discovery (`{base}/.well-known/smart-configuration`), without a token:
    its token endpoint issues tokens by both advertised methods, and every advertised scope parses."""
    from referral_service.auth.scopes import parse_scopes
    from referral_service.fhir.resources import RESOURCES

    response = client.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200, response.json
    assert response.mimetype == "application/json"
    smart = response.json
    assert smart["grant_types_supported"] == ["client_credentials"]
    assert "client-confidential-symmetric" in smart["capabilities"]
    assert "authorization_endpoint" not in smart  # no user-facing launch is offered
    endpoint = smart["token_endpoint"]
    assert endpoint.startswith("http://localhost/")
    path = "/" + endpoint.split("/", 3)[3]
    assert path == "/oauth/token"
    assert len(parse_scopes(" ".join(smart["scopes_supported"]))) == len(smart["scopes_supported"])
    assert {f"system/{t}.rs" for t in RESOURCES} <= set(smart["scopes_supported"])
    methods = set(smart["token_endpoint_auth_methods_supported"])
    assert methods == {"client_secret_basic", "client_secret_post"}
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    by_basic = client.post(path, data=form, headers=basic(*his))
    by_post = client.post(path, data={**form, "client_id": his[0], "client_secret": his[1]})
    for issued in (by_basic, by_post):
        assert issued.status_code == 200, issued.json
        token = issued.json["access_token"]
        assert client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.post("/fhir/.well-known/smart-configuration").status_code == 405
