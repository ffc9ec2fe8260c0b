"""Languages: zh-CN first, English on request; the catalogue is complete; money and times per locale."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from babel.messages.catalog import Message
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from flask import Flask
from flask_babel import force_locale

from referral_service.web import formatting
from tests.functional.test_web_support import County, build_county, record_visit

# Engine-independent behaviour: SQLite only, to keep the suite fast (flows run on both engines).
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def county(app: Flask) -> County:
    return build_county(app)


CATALOGUE = Path(__file__).resolve().parents[2] / "referral_service" / "translations" / "zh" / "LC_MESSAGES"


@SQLITE_ONLY
def test_chinese_is_the_default_and_english_is_a_switch_away(county: County) -> None:
    client = county.app.test_client()
    page = client.get("/login").get_data(as_text=True)
    assert '<html lang="zh-CN">' in page and "登录" in page and "用户名" in page
    english = client.get("/login", headers={"Accept-Language": "en-GB,en;q=0.9"}).get_data(as_text=True)
    assert '<html lang="en">' in english and "User name" in english
    switched = client.post("/language", data={"lang": "en", "next": "/login"})
    assert switched.headers["Location"] == "/login"
    assert "User name" in client.get("/login").get_data(as_text=True)
    client.post("/language", data={"lang": "zh"})
    assert "用户名" in client.get("/login").get_data(as_text=True)


@SQLITE_ONLY
def test_the_language_switch_only_returns_to_this_site(county: County) -> None:
    client = county.app.test_client()
    assert (
        client.post("/language", data={"lang": "en", "next": "https://evil.example/"}).headers["Location"]
        == "/"
    )
    assert client.post("/language", data={"lang": "fr"}).status_code == 302
    assert '<html lang="en">' in client.get("/login").get_data(as_text=True)  # fr ignored, en kept


def test_a_signed_in_user_gets_the_pages_in_chinese(county: County) -> None:
    client = county.client("clinic", lang="zh")
    encounter_id = record_visit(client, county.patients["elder"])
    page = client.get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "上转县级医院" in page and "确认并发送转诊" in page
    assert "NEWS2 总分 ≥ 7" in page  # the rule's own Chinese explanation
    assert "血氧饱和度" in page and "总分 9；单项最高 3 分。" in page
    english = county.client("clinic", lang="en").get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "Refer up to the county hospital" in english and "SpO2" in english
    assert "NEWS2 total &gt;= 7: critically ill, emergency referral" in english


@SQLITE_ONLY
def test_registration_errors_in_chinese_all_at_once(county: County) -> None:
    from tests.functional.test_web_support import field_errors, registration_form

    client = county.client("clinic", lang="zh")
    form = registration_form(family_name="", birth_date="1958-04-13", phone="电话")
    errors = field_errors(client.post("/clinic/patients/new", data=form).get_data(as_text=True))
    assert errors["family_name"] == "此项为必填项。"
    assert errors["phone"] == "请填写电话号码（仅限数字）。"
    assert "身份证号码中的出生日期" in errors["resident_id"]


@SQLITE_ONLY
def test_money_is_formatted_per_locale(app: Flask) -> None:
    with app.test_request_context():
        with force_locale("zh"):
            assert formatting.money(Decimal("1234.5")) == "¥1,234.50"
        with force_locale("en"):
            assert formatting.money("1234.5") == "CN¥1,234.50"
        assert formatting.money(None) == "—"


@SQLITE_ONLY
def test_times_are_shown_in_asia_shanghai(app: Flask) -> None:
    with app.test_request_context(), force_locale("zh"):
        assert formatting.when(datetime(2026, 1, 31, 17, 30, tzinfo=UTC)) == "2026-02-01 01:30"
        assert formatting.day(date(2026, 2, 1)) == "2026年2月1日"
        assert formatting.duration(timedelta(hours=3, minutes=5)) == "3 小时"
        assert formatting.duration(timedelta(days=3)) == "3 天"
    with app.test_request_context(), force_locale("en"):
        assert formatting.day(date(2026, 2, 1)) == "Feb 1, 2026"
        assert formatting.duration(timedelta(minutes=1)) == "1 minute"
        assert formatting.duration(timedelta(minutes=50)) == "50 minutes"


def test_every_message_has_a_chinese_translation_and_the_mo_file_is_current() -> None:
    with (CATALOGUE / "messages.po").open("rb") as fh:
        po = read_po(fh)
    with (CATALOGUE / "messages.mo").open("rb") as fh:
        mo = read_mo(fh)
    untranslated = [
        m.id for m in po if m.id and not (m.string if isinstance(m.string, str) else all(m.string or ()))
    ]
    assert untranslated == []

    def entries(catalogue: Iterable[Message]) -> dict[Any, Any]:
        def key(value: Any) -> Any:
            return tuple(value) if isinstance(value, list | tuple) else value

        return {key(m.id): key(m.string) for m in catalogue if m.id}

    assert entries(po) == entries(mo), (
        "messages.mo is stale: run pybabel compile -d referral_service/translations"
    )


@SQLITE_ONLY
def test_a_signed_in_users_language_choice_is_remembered_for_the_next_sign_in(county: County) -> None:
    from tests.functional.test_web_support import PASSWORD

    first = county.client("clinic", lang="zh")
    assert '<html lang="zh-CN">' in first.get("/clinic").get_data(as_text=True)
    first.post("/language", data={"lang": "en"})
    later = county.app.test_client()  # another browser: no session language, no Accept-Language
    assert later.post("/login", data={"username": "clinic", "password": PASSWORD}).status_code == 302
    assert '<html lang="en">' in later.get("/clinic").get_data(as_text=True)
    anonymous = county.app.test_client()
    anonymous.post("/language", data={"lang": "en"})  # no user to remember it for: nothing stored
    back = county.client("clinic", lang="zh")
    back.post("/language", data={"lang": "zh"})
    again = county.app.test_client()
    assert again.post("/login", data={"username": "clinic", "password": PASSWORD}).status_code == 302
    assert '<html lang="zh-CN">' in again.get("/clinic").get_data(as_text=True)


@SQLITE_ONLY
def test_the_workflows_notes_on_a_decision_are_translated(app: Flask) -> None:
    note = "no township clinic found for the patient: no down-referral (down-referral-no-clinic)"
    with app.test_request_context():
        with force_locale("zh"):
            assert formatting.label("decision_note", note) == "未找到患者所属的乡镇卫生院：不下转。"
        with force_locale("en"):
            assert formatting.label("decision_note", note) == (
                "No township clinic was found for the patient: no down-referral."
            )
        assert formatting.label("decision_note", "something else") == "something else"
