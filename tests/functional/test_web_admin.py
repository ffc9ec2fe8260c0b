"""Administration pages: users, API clients (secret shown once, rotation), organisations, rules, audit log."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from sqlalchemy import select

from referral_service.domain.accounts import ApiClient
from referral_service.extensions import database
from referral_service.services.accounts import authenticate_client
from tests.conftest import make_app
from tests.functional.test_web_support import INSURER, PASSWORD, County, build_county, field_errors

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
PAGES = ("/admin/users", "/admin/clients", "/admin/organisations", "/admin/rules", "/admin/audit")


@pytest.fixture
def county(app: Flask) -> County:
    return build_county(app)


def test_create_a_user_who_can_then_sign_in(county: County) -> None:
    admin = county.client("admin")
    listing = admin.get("/admin/users").get_data(as_text=True)
    assert "<code>monitor</code>" in listing
    done = admin.post("/admin/users", data={
        "username": "insurer2", "display_name": "医保二科", "role": "insurer", "organization_id": INSURER,
        "locale": "zh", "password": "another-password"})
    assert done.status_code == 200 and 'id="created"' in done.get_data(as_text=True)
    new = county.app.test_client()
    signed_in = new.post("/login", data={"username": "insurer2", "password": "another-password"})
    assert signed_in.status_code == 302
    assert new.get("/insurer/settlements").status_code == 200


@SQLITE_ONLY
def test_user_form_errors_are_shown_beside_the_fields(county: County) -> None:
    admin = county.client("admin")
    bad = admin.post("/admin/users", data={"username": "", "role": "boss", "organization_id": INSURER,
                                           "password": "short"})
    assert bad.status_code == 422
    errors = field_errors(bad.get_data(as_text=True))
    assert errors["username"] == "This field is required."
    assert errors["role"] == "Choose one of the roles."
    assert errors["password"] == "The password needs at least 8 characters."
    taken = admin.post("/admin/users", data={"username": "clinic", "role": "clinic",
                                             "organization_id": INSURER, "password": "long-enough-1"})
    assert field_errors(taken.get_data(as_text=True))["username"] == "This user name is taken."
    assert 'value="long-enough-1"' not in taken.get_data(as_text=True)  # the password is never echoed


def test_api_client_secret_is_shown_once_and_rotates(county: County) -> None:
    admin = county.client("admin")
    made = admin.post("/admin/clients", data={
        "client_id": "his-9", "name": "HIS 9", "organization_id": INSURER,
        "scopes": "system/Patient.rs system/Task.cru"})
    html = made.get_data(as_text=True)
    assert made.status_code == 200
    secret = re.search(r'id="secret-value">([^<]+)<', html)
    assert secret
    with database.session() as db:
        assert authenticate_client(db, "his-9", secret.group(1)).client_id == "his-9"
    listing = admin.get("/admin/clients").get_data(as_text=True)
    assert secret.group(1) not in listing and "system/Task.cru" in listing
    rotated = admin.post("/admin/clients/his-9/rotate").get_data(as_text=True)
    new_secret = re.search(r'id="secret-value">([^<]+)<', rotated)
    assert new_secret and new_secret.group(1) != secret.group(1)
    with database.session() as db:
        client = db.scalar(select(ApiClient).where(ApiClient.client_id == "his-9"))
        assert client is not None and secret.group(1) not in client.secret_hash
    assert admin.post("/admin/clients/nobody/rotate").status_code == 404


def test_deactivated_users_are_signed_out_and_may_come_back(county: County) -> None:
    admin = county.client("admin")
    working = county.client("monitor")
    assert working.get("/monitor").status_code == 200
    stopped = admin.post("/admin/users/monitor/active", data={"active": "0"})
    assert stopped.status_code == 200 and 'id="notice"' in stopped.get_data(as_text=True)
    assert working.get("/monitor").status_code == 302  # the open session ends at its next request
    again = county.app.test_client().post("/login", data={"username": "monitor", "password": PASSWORD})
    assert again.status_code == 401  # the sign-in form again: refused
    assert admin.post("/admin/users/monitor/active", data={"active": "1"}).status_code == 200
    back = county.app.test_client()
    assert back.post("/login", data={"username": "monitor", "password": PASSWORD}).status_code == 302
    assert admin.post("/admin/users/admin/active", data={"active": "0"}).status_code == 409  # not oneself
    assert admin.post("/admin/users/nobody/active", data={"active": "0"}).status_code == 404


def test_a_deactivated_api_client_gets_no_token_and_its_token_stops_working(county: County) -> None:
    from tests.functional.fhir_helpers import Fhir, token_for

    admin = county.client("admin")
    made = admin.post("/admin/clients", data={
        "client_id": "his-8", "name": "HIS 8", "organization_id": INSURER, "scopes": "system/Patient.rs"})
    secret = re.search(r'id="secret-value">([^<]+)<', made.get_data(as_text=True))
    assert secret
    api = county.app.test_client()
    his = Fhir(api, token_for(api, "his-8", secret.group(1)))
    assert his.get("Patient?_count=1").status_code == 200
    assert admin.post("/admin/clients/his-8/active", data={"active": "0"}).status_code == 200
    refused = his.get("Patient?_count=1")
    assert refused.status_code == 401 and "deactivated" in refused.json["issue"][0]["diagnostics"]
    with pytest.raises(AssertionError):
        token_for(api, "his-8", secret.group(1))  # no new token either
    assert admin.post("/admin/clients/his-8/active", data={"active": "1"}).status_code == 200
    assert his.get("Patient?_count=1").status_code == 200
    assert admin.post("/admin/clients/nobody/active", data={"active": "0"}).status_code == 404


@SQLITE_ONLY
def test_api_client_form_checks_the_scopes(county: County) -> None:
    bad = county.client("admin").post("/admin/clients", data={"client_id": "x", "organization_id": INSURER,
                                                               "scopes": "read-everything"})
    assert bad.status_code == 422
    assert "SMART scopes" in field_errors(bad.get_data(as_text=True))["scopes"]


@SQLITE_ONLY
def test_organisations_rules_and_the_rule_files(county: County) -> None:
    admin = county.client("admin")
    assert "青山县乡村振兴局" in admin.get("/admin/organisations").get_data(as_text=True)
    rules = admin.get("/admin/rules").get_data(as_text=True)
    files = re.findall(r'href="(/admin/rules/files/[^"]+)"', rules)
    assert 'id="policies"' in rules and 'id="rule-sets"' in rules and files
    shown = admin.get(files[0])
    assert shown.status_code == 200 and 'id="file-text"' in shown.get_data(as_text=True)
    assert admin.get("/admin/rules/files/..%2F..%2Fsetup.cfg").status_code == 404
    assert admin.get("/admin/rules/files/setup.cfg").status_code == 404


def test_audit_log_search(county: County) -> None:
    county.client("clinic").get(f"/clinic/patients/{county.patients['elder']}")
    admin = county.client("admin")
    by_user = admin.get("/admin/audit?agent=clinic").get_data(as_text=True)
    table = by_user.split('id="audit"', 1)[1]
    assert "clinic" in table and "No entries match." not in table
    by_patient = admin.get(f"/admin/audit?patient={county.patients['elder']}").get_data(as_text=True)
    assert county.patients["elder"] in by_patient.split('id="audit"', 1)[1]
    assert "No entries match." in admin.get("/admin/audit?agent=nobody").get_data(as_text=True)
    bad = admin.get("/admin/audit?from=yesterday")
    assert bad.status_code == 422
    assert field_errors(bad.get_data(as_text=True))["from"] == "Enter a date as YYYY-MM-DD."
    for query, field in (("from=0001-01-01", "from"), ("to=9999-12-31", "to"), ("to=0001-01-01", "to"),
                         ("from=2200-01-01", "from")):  # beyond the calendar once made local: not 500
        out_of_range = admin.get(f"/admin/audit?{query}")
        assert out_of_range.status_code == 422, query
        assert field_errors(out_of_range.get_data(as_text=True))[field] == (
            "Enter a date between 1900-01-01 and 2199-12-31.")
    assert admin.get("/admin/audit?from=1900-01-01&to=2199-12-31").status_code == 200


@SQLITE_ONLY
def test_other_roles_may_not_administer(county: County) -> None:
    for role in ("clinic", "hospital", "insurer", "monitor"):
        client = county.client(role)
        for path in PAGES:
            assert client.get(path).status_code == 403, (role, path)
        assert client.post("/admin/users", data={"username": "x"}).status_code == 403
    assert county.client().get("/admin/users").headers["Location"].startswith("/login")
    menu = county.client("admin").get("/office").get_data(as_text=True)
    assert all(f'href="{path}"' in menu for path in PAGES)


@SQLITE_ONLY
def test_admin_forms_need_the_csrf_token(county: County, database_urls: dict[str, str],
                                                backend: str) -> None:
    protected = make_app(database_urls[backend], WTF_CSRF_ENABLED=True)
    client = protected.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    assert client.post("/login", data={"username": "admin", "password": PASSWORD,
                                       "csrf_token": token}).status_code == 302
    assert client.post("/admin/users", data={"username": "sneaky"}).status_code == 400


@SQLITE_ONLY
def test_organisations_and_audit_log_speak_chinese(county: County) -> None:
    """Facility levels, organisation kinds, audit interactions, agent kinds and outcomes are shown
    in the user's language, not as the codes stored."""
    county.client("clinic").get(f"/clinic/patients/{county.patients['elder']}")
    admin = county.client("admin", lang="zh")
    organisations = admin.get("/admin/organisations").get_data(as_text=True)
    table = organisations.split('id="organisations"', 1)[1]
    assert "机构名称" in table and "姓名" not in table
    assert "乡村振兴局" in table and ">poverty-office<" not in table
    assert "乡镇卫生院" in table and ">township<" not in table
    audit = admin.get("/admin/audit?agent=clinic").get_data(as_text=True).split('id="audit"', 1)[1]
    assert "登录 (E)" in audit and "login (E)" not in audit
    assert "(员工用户)" in audit and "(user)" not in audit
    assert "成功" in audit


@SQLITE_ONLY
def test_searches_of_the_web_pages_are_audited_as_query_strings(county: County) -> None:
    """The audit row of a page's search holds its parameters as the API's do (a=b&c=d), not a
    Python list; AuditEvent.entity.query serves it."""
    from referral_service.domain.registry import AuditRecord

    assert county.client("hospital").get("/hospital").status_code == 200
    with database.session() as s:
        queries = list(s.scalars(select(AuditRecord.query).where(
            AuditRecord.agent_name == "hospital", AuditRecord.interaction == "search")))
    assert queries
    assert all(q and "=" in q and not q.startswith("[") for q in queries), queries
