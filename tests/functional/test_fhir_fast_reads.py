"""Plain reads by id served before Flask (api/fast_reads.py) answer exactly as the app's route does."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError
from werkzeug.test import TestResponse

from referral_service.api.fast_reads import FastReads
from referral_service.api.responses import http_date
from referral_service.extensions import database
from referral_service.services import resources as service
from referral_service.services.accounts import set_client_active
from tests.conftest import make_app
from tests.functional.fhir_helpers import FHIR, Fhir, organization, patient, token_for

READ_RULE = "/fhir/<resource_type>/<res_id>"


@pytest.fixture
def routed(app: Flask) -> Iterator[list[tuple[str, str]]]:
    """(path, Authorization) of the requests that went through Flask's request machinery."""
    seen: list[tuple[str, str]] = []

    def note() -> None:
        from flask import request

        seen.append((request.full_path.rstrip("?"), request.headers.get("Authorization", "")))

    app.before_request_funcs.setdefault(None, []).insert(0, note)
    yield seen
    app.before_request_funcs[None].remove(note)


@pytest.fixture
def records(
    make_api_client: Callable[..., tuple[str, str]], make_org: Callable[..., str], client: FlaskClient
) -> dict[str, str]:
    """Two township clinics' patients, a deleted patient, and the clinics' tokens."""
    for org in ("org-a", "org-b", "org-c"):
        make_org(org)  # township level: each sees its own patients only
    tokens = {
        "clinic": token_for(client, *make_api_client("clinic-a", "system/*.cruds", "org-a")),
        "other": token_for(client, *make_api_client("clinic-b", "system/*.cruds", "org-b")),
        "narrow": token_for(client, *make_api_client("clinic-c", "system/Organization.rs", "org-c")),
    }
    clinic, other = Fhir(client, tokens["clinic"]), Fhir(client, tokens["other"])
    county = Fhir(client, token_for(client, *make_api_client("county-platform", "system/*.cruds",
                                                             "qs-health-commission")))
    assert county.put("Organization/org-t", organization("org-t")).status_code == 201
    mine = clinic.post("Patient", patient(None, family="宋", given="一")).json["id"]
    theirs = other.post("Patient", patient(None, family="唐", given="二")).json["id"]
    gone = clinic.post("Patient", patient(None, family="元", given="三")).json["id"]
    assert clinic.delete(f"Patient/{gone}").status_code == 204
    return {**tokens, "mine": mine, "theirs": theirs, "gone": gone}


def _read(client: FlaskClient, path: str, token: str | None, **headers: str) -> TestResponse:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.get(path, headers={"Accept": FHIR, **headers})


def _answer(response: TestResponse) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body, less what differs between any two answers (request id, outcome id)."""
    headers = {k: v for k, v in response.headers.items() if k != "X-Request-ID"}
    body = response.get_data()
    outcome = response.json if response.status_code >= 400 else None
    if outcome is not None and outcome.get("resourceType") == "OperationOutcome":
        body = json.dumps({k: v for k, v in outcome.items() if k != "id"}, sort_keys=True).encode()
        headers.pop("Content-Length", None)
    return response.status_code, headers, body


def test_every_plain_read_answers_as_the_route_does(
    backend: str, app: Flask, client: FlaskClient, records: dict[str, str], routed: list[tuple[str, str]]
) -> None:
    """Status, headers and body, for successes and for every refusal, with the middleware and without."""
    clinic = records["clinic"]
    requests = [
        (f"/fhir/Patient/{records['mine']}", clinic),
        (f"/fhir/Patient/{records['theirs']}", clinic),  # not visible: 404
        (f"/fhir/Patient/{records['gone']}", clinic),  # 410
        ("/fhir/Patient/no-such-id", clinic),
        (f"/fhir/Patient/{records['mine']}", None),  # 401
        (f"/fhir/Patient/{records['mine']}", "not-a-token"),
        (f"/fhir/Patient/{records['mine']}", records["narrow"]),  # scope: 403
        ("/fhir/Organization/org-t", records["narrow"]),
        ("/fhir/Organization/org-t", clinic),
        ("/fhir/Nonsense/x", clinic),
        ("/fhir/Patient/bad%20id", clinic),
        ("/fhir/CodeSystem/facility-level", clinic),
        (f"/fhir/Patient/{records['mine']}?_pretty=true", clinic),
    ]
    fast = [_answer(_read(client, path, token)) for path, token in requests]
    fast_routed = list(routed)
    plain = make_app(database.engine.url.render_as_string(hide_password=False), FHIR_FAST_READS=False)
    slow = [_answer(_read(plain.test_client(), path, token)) for path, token in requests]
    for (path, _), one, other in zip(requests, fast, slow, strict=True):
        assert one == other, path
    statuses = [status for status, _, _ in fast]
    assert statuses == [200, 404, 410, 404, 401, 401, 403, 200, 200, 404, 404, 200, 200]
    assert fast[0][1]["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert fast[0][1]["ETag"] == 'W/"1"'
    # On PostgreSQL the successful plain reads (no query) never entered Flask, every other request did;
    # on SQLite (no pool of reads) every request did.
    sent = [(path.replace("%20", " "), f"Bearer {token}" if token else "") for path, token in requests]
    plain_successes = [sent[i] for i in (0, 7, 8)]
    if backend == "postgresql":
        assert fast_routed == [r for r in sent if r not in plain_successes]
    else:
        assert fast_routed == sent


def test_conditional_reads_and_accept_answer_as_the_route_does(
    backend: str, app: Flask, client: FlaskClient, records: dict[str, str], routed: list[tuple[str, str]]
) -> None:
    """If-None-Match naming the current version is a 304 on the fast path too (ETag, no body, no
    content type), exactly as the route's; an Accept without JSON goes to the app for its 406."""
    mine, clinic = f"/fhir/Patient/{records['mine']}", records["clinic"]
    requests = [
        (mine, {"If-None-Match": 'W/"1"'}),
        (mine, {"If-None-Match": "*"}),
        (mine, {"If-None-Match": 'W/"2"'}),
        (mine, {"Accept": "application/fhir+xml"}),
        (mine, {"Accept": "application/fhir+json; fhirVersion=4.0"}),
        (f"/fhir/Patient/{records['gone']}", {"If-None-Match": "*"}),
    ]
    fast = [_answer(_read(client, path, clinic, **headers)) for path, headers in requests]
    fast_routed = list(routed)
    plain = make_app(database.engine.url.render_as_string(hide_password=False), FHIR_FAST_READS=False)
    slow = [_answer(_read(plain.test_client(), path, clinic, **headers)) for path, headers in requests]
    for (path, headers), one, other in zip(requests, fast, slow, strict=True):
        assert one == other, (path, headers)
    assert [status for status, _, _ in fast] == [304, 304, 200, 406, 200, 410]
    assert fast[0][2] == b"" and "Content-Type" not in fast[0][1] and fast[0][1]["ETag"] == 'W/"1"'
    answered_first = 4 if backend == "postgresql" else 0  # the 304s, the 200s: no request entered Flask
    assert len(fast_routed) == len(requests) - answered_first


def test_a_fast_read_is_counted_logged_and_keeps_the_callers_request_id(
    backend: str, app: Flask, client: FlaskClient, records: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    path = f"/fhir/Patient/{records['mine']}"
    with caplog.at_level(logging.INFO, logger="referral_service.access"):
        given = _read(client, path, records["clinic"], **{"X-Request-ID": "his-req-42"})
        made = _read(client, path, records["clinic"], **{"X-Request-ID": "x" * 65})
    assert given.status_code == made.status_code == 200
    assert given.headers["X-Request-ID"] == "his-req-42"
    assert len(made.headers["X-Request-ID"]) == 32 and made.headers["X-Request-ID"] != "x" * 65
    lines = [r for r in caplog.records if r.name == "referral_service.access"]
    assert [(r.request_id, r.status, r.path, r.client) for r in lines] == [  # type: ignore[attr-defined]
        ("his-req-42", 200, path, "clinic-a"),
        (made.headers["X-Request-ID"], 200, path, "clinic-a"),
    ]
    metrics = client.get("/metrics").get_data(as_text=True)
    counted = f'http_requests_total{{endpoint="{READ_RULE}",method="GET",status="200"}} 2.0'
    assert counted in metrics


def test_a_read_that_fails_before_flask_is_answered_by_the_app(
    backend: str, app: Flask, client: FlaskClient, records: dict[str, str], routed: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A database error on the fast path costs a second try through the app, never a lost answer."""
    calls: list[str] = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append("fast")
        raise OperationalError("SELECT", {}, Exception("connection reset"))

    monkeypatch.setattr(service, "read_on_connection", broken)
    path = f"/fhir/Patient/{records['mine']}"
    with caplog.at_level(logging.WARNING, logger="referral_service.api.fast_reads"):
        answer = _read(client, path, records["clinic"])
    assert answer.status_code == 200
    assert answer.json is not None and answer.json["id"] == records["mine"]
    assert (path, f"Bearer {records['clinic']}") in routed
    if backend == "postgresql":
        assert calls == ["fast"]
        assert "the app answers it" in caplog.text


def test_a_deactivated_client_is_refused_on_the_fast_path_too(
    backend: str, app: Flask, client: FlaskClient, records: dict[str, str]
) -> None:
    path = f"/fhir/Patient/{records['mine']}"
    assert _read(client, path, records["clinic"]).status_code == 200
    with database.unit_of_work() as session:
        set_client_active(session, "clinic-a", False)
    refused = _read(client, path, records["clinic"])
    assert refused.status_code == 401
    assert refused.json is not None and refused.json["resourceType"] == "OperationOutcome"



def test_only_types_the_generic_read_route_serves_are_taken(app: Flask) -> None:
    """AuditEvent and the conformance resources have routes of their own; a literal id is refused."""
    middleware = app.wsgi_app
    assert isinstance(middleware, FastReads)
    assert {"Patient", "Encounter", "Organization", "Coverage"} <= middleware.types
    assert not {"AuditEvent", "CodeSystem", "ValueSet", "StructureDefinition"} & middleware.types
    assert middleware.rule == READ_RULE
    fresh = make_app(database.engine.url.render_as_string(hide_password=False), FHIR_FAST_READS=False)
    fresh.add_url_rule("/fhir/Patient/everyone", "everyone", lambda: "")
    with pytest.raises(RuntimeError, match="literal id"):
        FastReads(fresh, fresh.wsgi_app)


def test_http_dates_are_written_as_the_standard_library_writes_them() -> None:
    rng = random.Random(7)
    china = timezone(timedelta(hours=8))
    for _ in range(2000):
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(5 * 10**9),
                                                              microseconds=rng.randrange(10**6))
        assert http_date(moment.astimezone(china)) == format_datetime(moment, usegmt=True)
