"""The referral journey across roles in real Chromium, with screenshots under docs/screenshots/.

Clinic registers a patient and records a visit with low SpO2 -> sees the emergency referral decision ->
confirms -> the county hospital accepts, admits, discharges, confirms the proposed down-referral and
settles -> the down-referral appears at the clinic, which records the first follow-up -> the insurance
office exports the month and sees totals matching the settlements -> after the poverty scan, the
poverty-alleviation office sees the household's alert on its dashboard and resolves it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.serving import make_server

if TYPE_CHECKING:
    from playwright.sync_api import Page, ViewportSize

from referral_service import create_app
from referral_service.domain import resident_id
from referral_service.extensions import database
from referral_service.migrate import upgrade
from referral_service.seed import DEMO_PASSWORD, seed_demo
from referral_service.seed.materialize import materialize
from referral_service.services import alerts
from referral_service.services.indicators import local_today

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DESKTOP: ViewportSize = {"width": 1024, "height": 768}
PHONE: ViewportSize = {"width": 360, "height": 740}

pytestmark = pytest.mark.browser


def _need_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium (apt-get install -y chromium)")
    pytest.skip(
        f"{CHROMIUM} is not installed (apt-get install -y chromium); browser tests skipped outside CI"
    )


@contextmanager
def _desktop_page() -> Iterator[Page]:
    """A page of Debian's Chromium at desktop size, in Chinese and Asia/Shanghai; closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport=DESKTOP, locale="zh-CN", timezone_id="Asia/Shanghai")
            context.set_default_timeout(10_000)
            yield context.new_page()
        finally:
            browser.close()


def _flashed(page: Any, message: str) -> None:
    """The success message `message` is shown once. (Matched by its text: an earlier step's message
    may still stand beside it, which a bare `.flash-success` locator would find twice.)"""
    from playwright.sync_api import expect

    expect(page.locator(".flash-success", has_text=message)).to_have_count(1)


def _whole_bodies(app: Any) -> Any:
    """The app with each response body read whole and closed before the server sends it.

    Werkzeug's development server closes a response only after draining the request socket; when
    Chromium resets a connection (it drops a stylesheet request when a page moves on), that drain
    raises first and the static file's handle is left open. Its ResourceWarning then surfaced, at
    the next garbage collection, as a failure of whichever test ran (with warnings as errors)."""

    def wsgi(environ: Any, start_response: Any) -> list[bytes]:
        answer = app(environ, start_response)
        try:
            return [b"".join(answer)]
        finally:
            if hasattr(answer, "close"):
                answer.close()

    return wsgi


@pytest.fixture
def live_county(tmp_path: Path) -> Iterator[str]:
    """The app on a fresh SQLite demo county (200 residents), served by a real server thread."""
    _need_chromium()
    app = create_app(
        {
            "ENV": "testing",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'browser.sqlite3'}",
            "WTF_CSRF_ENABLED": True,
        }
    )
    upgrade(database.engine)
    seed_demo(database.engine, patients=200)
    with database.unit_of_work() as db:
        materialize(db)
    server = make_server("127.0.0.1", 0, _whole_bodies(app), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        database.dispose()


def test_referral_journey_across_roles(live_county: str) -> None:
    from playwright.sync_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    base = live_county
    number = resident_id.generate("620425", date(1948, 9, 15), "male", 17)

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def sign_in(page: Page, user: str) -> None:
        page.goto(f"{base}/login")
        page.fill("#username", user)
        page.fill("#password", DEMO_PASSWORD)
        page.click("button[type=submit].primary")

    def sign_out(page: Page) -> None:
        page.click("form[action='/logout'] button")
        expect(page.locator("#username")).to_be_visible()

    with _desktop_page() as page:

        # Sign-in page in Chinese (the cursor starts in the user name field).
        page.goto(f"{base}/login")
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.locator("#username")).to_be_focused()
        shot(page, "01-sign-in")
        sign_in(page, "clinic")
        expect(page.locator("h1")).to_contain_text("城关镇卫生院")
        # Keyboard users reach the skip link first; it jumps over the menu to the content.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip-link"
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
        shot(page, "02-clinic-overview")

        # Registration: a wrong check character is caught live, then corrected.
        page.click("nav >> text=患者建档")
        page.fill("#family_name", "周")
        page.fill("#given_name", "德顺")
        page.fill("#resident_id", number[:-1] + ("0" if number[-1] != "0" else "1"))
        expect(page.locator("#resident_id-live")).to_contain_text("校验码错误")
        page.fill("#resident_id", number)
        expect(page.locator("#resident_id-live")).to_have_text("✓ 号码有效。")
        expect(page.locator("#birth_date")).to_have_value("1948-09-15")  # filled from the number
        expect(page.locator("#gender")).to_have_value("male")
        page.fill("#village", "东关村")
        page.check("input[name=household_mode][value=new]")
        page.fill("#household_income", "1600")  # below the poverty line: the scan flags the household
        page.check("#coverage_basic")
        shot(page, "03-registration")
        page.click("button[type=submit].primary")
        _flashed(page, "患者建档成功")
        expect(page.locator("h1")).to_contain_text("周德顺")
        shot(page, "04-patient")

        # A validation error keeps what was typed and sits beside the field.
        page.click("text=登记首诊")
        page.fill("#complaint", "咳嗽一周，气促加重两天")
        page.fill("#spo2", "101")
        page.click("button[type=submit].primary")
        expect(page.locator("#spo2-error")).to_contain_text("请填写 50 至 100 之间的数值")
        expect(page.locator("#complaint")).to_have_value("咳嗽一周，气促加重两天")
        expect(page.locator("#error-summary")).to_be_focused()
        shot(page, "05-visit-validation")

        # The first visit with low SpO2.
        for field, value in {
            "respiration_rate": "26",
            "spo2": "87",
            "pulse": "118",
            "temperature": "38.9",
            "systolic_bp": "98",
            "diastolic_bp": "60",
        }.items():
            page.fill(f"#{field}", value)
        page.select_option("#consciousness", "A")
        page.fill("#diagnosis-0", "J18")
        expect(page.locator("#icd10-options option[value='J18.9']")).to_have_count(1)
        page.fill("#diagnosis-0", "J18.9")
        page.fill("#diagnosis-1", "R50.9")
        page.fill("#charges-0-description", "血常规")
        page.fill("#charges-0-amount", "35.50")
        page.fill("#charges-1-description", "胸部X线")
        page.fill("#charges-1-amount", "80")
        shot(page, "06-first-visit")
        page.click("button[type=submit].primary")

        # The decision: emergency referral, its explanation, NEWS2 and the proposed hospital.
        expect(page.locator(".decision .outcome")).to_contain_text("上转县级医院")
        expect(page.locator(".decision .outcome")).to_contain_text("危急")
        expect(page.locator(".rules")).to_contain_text("news2-high")
        expect(page.locator("table.news2")).to_contain_text("血氧饱和度")
        expect(page.locator(".referral .target")).to_have_text("青山县人民医院")
        shot(page, "07-decision")
        # On a 360 px phone the decision reads without sideways scrolling, the NEWS2 table too.
        page.set_viewport_size(PHONE)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        wrap = page.evaluate("(() => { const w = document.querySelector('table.news2').parentElement;"
                             " return [w.scrollWidth, w.clientWidth]; })()")
        assert wrap[0] <= wrap[1], wrap
        page.set_viewport_size(DESKTOP)
        page.click("#confirm-referral")
        _flashed(page, "转诊已确认")
        expect(page.locator(".referral-status")).to_contain_text("待医院处理")
        shot(page, "08-referral-sent")
        sign_out(page)

        # The county hospital: inbox (urgent first, age), accept, admit, discharge.
        sign_in(page, "hospital")
        waiting = page.locator("#waiting tbody tr").first
        expect(waiting).to_contain_text("周德顺")
        expect(waiting).to_contain_text("危急")
        shot(page, "09-hospital-inbox")
        # On a 360 px phone the inbox still reads: rows become cards, the page does not scroll sideways.
        page.set_viewport_size(PHONE)
        page.reload()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shot(page, "10-phone-inbox")
        page.set_viewport_size(DESKTOP)
        page.reload()
        waiting = page.locator("#waiting tbody tr").first
        waiting.locator("a").click()
        expect(page.locator("h1")).to_contain_text("周德顺")
        shot(page, "11-incoming-referral")
        page.click("#accept")
        _flashed(page, "已接收此转诊")
        page.click("#admit")
        _flashed(page, "患者已入院")
        page.select_option("#disposition", "home")
        page.fill("#diagnosis-0", "I63.9")
        page.fill("#diagnosis-1", "J18.9")
        page.fill("#summary", "肺部感染控制，左侧肢体乏力好转，回乡镇卫生院康复")
        page.fill("#charges-0-description", "住院床位费")
        page.fill("#charges-0-amount", "1200")
        page.select_option("#charges-1-charge_class", "B")
        page.fill("#charges-1-description", "头颅CT")
        page.fill("#charges-1-amount", "320")
        shot(page, "12-discharge")
        page.click("button[type=submit].primary")
        # The decision at discharge: the rules propose the down-referral, the hospital confirms it.
        expect(page.locator(".decision .outcome")).to_contain_text("下转乡镇卫生院")
        expect(page.locator(".rules")).to_contain_text("down-referral-dx")
        expect(page.locator(".referral .target")).to_have_text("城关镇卫生院")
        expect(page.locator(".referral-status")).to_contain_text("尚未确认")
        expect(page.locator(".referral ol li")).to_have_count(3)
        page.click("#confirm-down-referral")
        _flashed(page, "下转已确认")
        expect(page.locator(".referral-status")).to_contain_text("待基层接收")
        shot(page, "13-down-referral")

        # One-stop settlement at the discharge desk: preview with its trace, confirm, the A4 slip.
        page.click("#to-settlement")
        expect(page.locator(".settlement h2")).to_contain_text("预览")
        expect(page.locator("#components")).to_contain_text("¥1,520.00")
        shot(page, "14-settlement-preview")
        page.click("#confirm-settlement")
        _flashed(page, "结算完成")
        slip_url = page.locator("#print-slip").get_attribute("href")
        page.goto(f"{base}{slip_url}")
        expect(page.locator("h1")).to_contain_text("一站式结算单")
        shot(page, "15-settlement-slip")
        page.goto(f"{base}/hospital")

        sign_out(page)

        # Back at the clinic: the down-referred patient is due for follow-up.
        sign_in(page, "clinic")
        page.click("nav >> text=随访")
        row = page.locator("#follow-ups tbody tr", has_text="周德顺")
        expect(row).to_contain_text("青山县人民医院")
        expect(row).to_contain_text("0 / 3")
        shot(page, "16-clinic-follow-ups")
        row.locator("button", has_text="接收患者").click()
        row = page.locator("#follow-ups tbody tr", has_text="周德顺")
        row.locator("a", has_text="登记随访").click()
        page.fill("#notes", "生命体征平稳，继续康复训练")
        page.click("button[type=submit].primary")
        _flashed(page, "还有 2 次待随访")
        expect(page.locator("#follow-ups tbody tr", has_text="周德顺")).to_contain_text("1 / 3")

        # Every clinic page fits a 360 px phone without sideways scrolling.
        patient_url = (
            page.locator("#follow-ups tbody tr", has_text="周德顺")
            .locator("a")
            .first.get_attribute("href")
        )
        page.set_viewport_size(PHONE)
        for path in (
            "/clinic",
            "/clinic/patients?q=周",
            "/clinic/patients/new",
            patient_url,
            f"{patient_url}/visit",
            "/clinic/referrals",
            "/clinic/follow-ups",
        ):
            page.goto(f"{base}{path}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], (path, width)
        page.goto(f"{base}{patient_url}/visit")
        shot(page, "18-phone-first-visit")
        page.set_viewport_size(DESKTOP)
        page.goto(f"{base}/clinic/follow-ups")

        # The same page in English.
        page.click("form.lang-switch button")
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator("h1")).to_contain_text("Follow-ups of down-referred patients")
        shot(page, "17-follow-ups-english")
        assert not re.search(r"\b500\b", page.title())
        page.click("form.lang-switch button")
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        sign_out(page)

        # The insurance office exports this month; the file's totals match the settlements page.
        today = local_today()
        sign_in(page, "insurer")
        page.click("nav >> text=数据导出")
        page.fill("#from", today.replace(day=1).isoformat())
        page.fill("#to", today.isoformat())
        page.select_option("#format", "xlsx")
        page.click("#run-export")
        result = page.locator("#export-result")
        expect(result).to_contain_text("导出完成")
        expect(result.locator(".badge-ok")).to_have_count(4)  # every fund matches the settlements page
        expect(result.locator("a[href$='.xlsx']")).to_have_count(1)
        expect(result.locator("a[href$='.manifest.json']")).to_have_count(1)
        expect(page.locator("#history tbody tr").first).to_contain_text("insurer")
        shot(page, "19-insurer-export")
        page.set_viewport_size(PHONE)
        for path in ("/insurer/exports", "/insurer/settlements", "/insurer/payments"):
            page.goto(f"{base}{path}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], (path, width)
        page.set_viewport_size(DESKTOP)
        page.goto(f"{base}/insurer/exports")
        page.click("nav >> text=结算")
        expect(page.locator("#by-hospital")).to_contain_text("青山县人民医院")
        shot(page, "20-insurer-settlements")
        sign_out(page)

        # The nightly poverty scan (run here through the service) flags the household.
        with database.unit_of_work() as db:
            scan = alerts.scan_poverty_risk(db, today)
        assert scan.raised >= 1, scan
        sign_in(page, "monitor")
        page.click("nav >> text=监测看板")
        expect(page.locator("svg#chart-oop")).to_be_visible()
        expect(page.locator("#townships")).to_contain_text("城关镇")
        shot(page, "21-monitor-dashboard")
        page.set_viewport_size(PHONE)
        for path in ("/monitor", "/monitor/alerts"):
            page.goto(f"{base}{path}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], (path, width)
        page.set_viewport_size(DESKTOP)
        page.goto(f"{base}/monitor")
        page.click("nav >> text=预警")
        row = page.locator("#alerts tbody tr").first
        expect(row).to_contain_text("城关镇")
        row.locator("a").click()
        expect(page.locator("#figures")).to_contain_text("1600")
        page.click("#acknowledge")
        _flashed(page, "预警已签收")
        page.fill("#note", "已上门核实，纳入医疗救助")
        shot(page, "22-monitor-alert")
        page.click("#resolve")
        expect(page.locator("#alert-status")).to_have_text("已办结")
        expect(page.locator("#resolution")).to_contain_text("纳入医疗救助")


def test_errors_mark_only_their_field_and_admin_tables_keep_their_columns(live_county: str) -> None:
    """A charge row in error leaves the other rows' class selects alone; the API clients' and audit log's
    long codes wrap so that names and short columns keep a readable width at 1024 px."""
    from playwright.sync_api import expect
    from sqlalchemy import select

    from referral_service.domain.registry import Patient

    base = live_county
    with database.session() as db:
        mine = select(Patient.id).where(Patient.general_practitioner_id == "qs-th-01")
        patient_id = db.scalar(mine.limit(1))
    assert patient_id is not None
    with _desktop_page() as page:
        for user in ("clinic", "admin"):
            page.goto(f"{base}/login")
            page.fill("#username", user)
            page.fill("#password", DEMO_PASSWORD)
            page.click("button[type=submit].primary")
            if user == "clinic":
                page.goto(f"{base}/clinic/patients/{patient_id}/visit")
                page.fill("#complaint", "头晕")
                page.fill("#diagnosis-0", "R42")
                page.fill("#charges-0-description", "血常规")
                page.fill("#charges-0-amount", "12.345")
                page.click("button[type=submit].primary")
                expect(page.locator("#charges-0-amount-error")).to_be_visible()
                border = "getComputedStyle(document.querySelector('%s')).borderTopWidth"
                assert page.evaluate(border % "#charges-0-amount") == "2px"
                assert page.evaluate(border % "#charges-1-charge_class") == "1px"
                assert page.evaluate(border % "#charges-0-charge_class") == "1px"
                page.click("form[action='/logout'] button")
                continue
            page.goto(f"{base}/admin/clients")
            for cell in page.locator("#clients tbody td.name").all():
                assert cell.bounding_box()["width"] >= 90, cell.inner_text()  # type: ignore[index]
            page.goto(f"{base}/admin/audit")
            wrap = page.locator("#audit").locator("xpath=..")
            assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), "the audit log scrolls sideways"
            lines = "e => { const r = document.createRange(); r.selectNodeContents(e); " \
                    "return r.getClientRects().length; }"
            assert page.locator("#audit tbody td").first.evaluate(lines) == 1, "the time wraps"
