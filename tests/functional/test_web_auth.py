"""Sign-in, sign-out, rate limit, session timeout, CSRF, and the safe redirect after sign-in."""

from __future__ import annotations

import time

import pytest
from flask import Flask

from referral_service.domain.registry import AuditRecord
from referral_service.extensions import database
from tests.conftest import make_app
from tests.functional.test_web_support import PASSWORD, County, build_county

# Engine-independent behaviour: SQLite only, to keep the suite fast (flows run on both engines).
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def county(app: Flask) -> County:
    return build_county(app)


@SQLITE_ONLY
def test_sign_in_page_and_wrong_password(county: County) -> None:
    client = county.client()
    page = client.get("/login")
    assert page.status_code == 200
    assert 'name="csrf_token"' in page.get_data(as_text=True)
    wrong = client.post("/login", data={"username": "clinic", "password": "not-the-password"})
    assert wrong.status_code == 401
    html = wrong.get_data(as_text=True)
    assert "Wrong user name or password." in html
    assert 'value="clinic"' in html  # what was typed stays
    unknown = client.post("/login", data={"username": "nobody", "password": "whatever-it-is"})
    assert unknown.status_code == 401 and "Wrong user name or password." in unknown.get_data(as_text=True)
    empty = client.post("/login", data={"username": "", "password": ""})
    assert empty.status_code == 401 and "Enter your user name and password." in empty.get_data(as_text=True)


def test_sign_in_and_out_are_audited(county: County) -> None:
    client = county.client()
    assert client.post("/login", data={"username": "clinic", "password": "bad-password"}).status_code == 401
    ok = client.post("/login", data={"username": "clinic", "password": PASSWORD})
    assert ok.status_code == 302 and ok.headers["Location"] == "/clinic"
    assert client.get("/clinic").status_code == 200
    out = client.post("/logout")
    assert out.headers["Location"] == "/login"
    assert client.get("/clinic").status_code == 302
    with database.unit_of_work() as db:
        outcomes = [
            r.outcome for r in db.query(AuditRecord).filter_by(interaction="login", agent_name="clinic")
        ]
    assert sorted(outcomes) == ["0", "4"]


@SQLITE_ONLY
def test_next_is_followed_only_within_the_site(county: County) -> None:
    client = county.client()
    ok = client.post("/login?next=/clinic/referrals", data={"username": "clinic", "password": PASSWORD})
    assert ok.headers["Location"] == "/clinic/referrals"
    client = county.client()
    evil = client.post("/login?next=//evil.example/x", data={"username": "clinic", "password": PASSWORD})
    assert evil.headers["Location"] == "/clinic"


@SQLITE_ONLY
def test_inactive_users_cannot_sign_in(county: County) -> None:
    from referral_service.domain.accounts import User

    with database.unit_of_work() as db:
        db.query(User).filter_by(username="monitor").one().active = False
    response = county.client().post("/login", data={"username": "monitor", "password": PASSWORD})
    assert response.status_code == 401


@SQLITE_ONLY
def test_sign_in_is_rate_limited(county: County, database_urls: dict[str, str], backend: str) -> None:
    limited = make_app(database_urls[backend], LOGIN_RATE_LIMIT="3/minute")
    client = limited.test_client()
    with client.session_transaction() as sess:
        sess["lang"] = "en"
    codes = [
        client.post("/login", data={"username": "admin", "password": f"guess-{i}"}).status_code
        for i in range(4)
    ]
    assert codes == [401, 401, 401, 429]
    assert "Too many attempts" in client.post("/login", data={"username": "admin", "password": "x"}).get_data(
        as_text=True
    )
    # Another user name from the same address is not locked out.
    other = client.post("/login", data={"username": "clinic", "password": PASSWORD})
    assert other.status_code == 302


@SQLITE_ONLY
def test_session_times_out_after_inactivity(county: County) -> None:
    client = county.client("clinic")
    assert client.get("/clinic").status_code == 200
    minutes = county.app.config["SESSION_TIMEOUT_MINUTES"]
    with client.session_transaction() as sess:
        sess["seen"] = int(time.time()) - minutes * 60 - 5
    expired = client.get("/clinic/referrals")
    assert expired.status_code == 302
    assert expired.headers["Location"].startswith("/login?next=/clinic/referrals")
    page = client.get("/login").get_data(as_text=True)
    assert "Your session expired" in page
    assert client.get("/clinic").status_code == 302


@SQLITE_ONLY
def test_session_cookie_lifetime_is_the_timeout(app: Flask) -> None:
    assert app.permanent_session_lifetime.total_seconds() == app.config["SESSION_TIMEOUT_MINUTES"] * 60


@SQLITE_ONLY
def test_only_pages_refresh_the_session_cookie(county: County) -> None:
    """A page view slides the idle timeout (a new cookie); a stylesheet or script sets no cookie. Were
    it to send back the session it was requested with, an asset that finishes late would put back
    what a page had just changed: a flash message already shown, or one not yet shown lost."""
    client = county.client()
    assert client.post("/login", data={"username": "clinic", "password": PASSWORD}).status_code == 302
    page = client.get("/clinic")
    assert page.status_code == 200 and "session=" in page.headers.get("Set-Cookie", "")
    for asset in ("/assets/app.css", "/assets/app.js"):
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert "Set-Cookie" not in served.headers, asset
        served.close()


@SQLITE_ONLY
def test_forms_without_a_csrf_token_are_refused(
    county: County, database_urls: dict[str, str], backend: str
) -> None:
    protected = make_app(database_urls[backend], WTF_CSRF_ENABLED=True)
    client = protected.test_client()
    with client.session_transaction() as sess:
        sess["lang"] = "en"
    refused = client.post("/login", data={"username": "clinic", "password": PASSWORD})
    assert refused.status_code == 400
    assert "The form could not be accepted" in refused.get_data(as_text=True)
    # With the token from the page it goes through, and so do the forms after sign-in.
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    ok = client.post("/login", data={"username": "clinic", "password": PASSWORD, "csrf_token": token})
    assert ok.status_code == 302
    no_token = client.post(f"/clinic/patients/{county.patients['elder']}/visit", data={"complaint": "x"})
    assert no_token.status_code == 400
    assert client.post("/logout").status_code == 400  # signing out is a form too
    # Signing in starts a fresh session: the token of the sign-in page no longer counts.
    assert client.post("/logout", data={"csrf_token": token}).status_code == 400
    fresh = (
        client.get("/clinic").get_data(as_text=True).split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    )
    assert client.post("/logout", data={"csrf_token": fresh}).status_code == 302
    # The FHIR API is not a form: bearer tokens, no CSRF.
    assert client.post("/fhir/Patient", json={}).status_code == 401
