"""County hospital pages: inbox order and age, accept, decline with reason, admit, discharge, refer down."""

from __future__ import annotations

import re

import orjson
import pytest
from flask import Flask
from sqlalchemy import select

from referral_service.domain.fhir_store import ResourceVersion, StoredResource
from referral_service.domain.registry import AuditRecord
from referral_service.extensions import database
from tests.functional.test_web_clinic import stored
from tests.functional.test_web_support import (
    CALM,
    CLINIC,
    HOSPITAL,
    OTHER_CLINIC,
    County,
    build_county,
    confirm_referral_of,
    discharged_home,
    field_errors,
    record_visit,
    registration_form,
    resident,
    waiting_task,
)


@pytest.fixture
def county(app: Flask) -> County:
    return build_county(app)


def _referred(county: County, patient: str, **visit: object) -> tuple[str, str]:
    """A confirmed up-referral; returns (encounter id, ServiceRequest id)."""
    clinic = county.client("clinic")
    encounter_id = record_visit(clinic, county.patients[patient], **visit)
    return encounter_id, confirm_referral_of(clinic, encounter_id)


def test_inbox_lists_the_most_urgent_first_then_the_oldest(county: County) -> None:
    from datetime import date

    clinic = county.client("clinic")
    third = clinic.post(
        "/clinic/patients/new",
        data=registration_form(
            given_name="三妹", resident_id=resident(date(1960, 1, 1), "female", 51), birth_date="1960-01-01"
        ),
    )
    county.patients["third"] = third.headers["Location"].rsplit("/", 1)[-1]
    _referred(county, "woman", **{**CALM, "diagnosis": ["I21.0"]})  # county-only-dx: urgent, older
    _referred(county, "third", **{**CALM, "diagnosis": ["K35.8"]})  # urgent, newer
    _referred(county, "elder")  # NEWS2 high: emergency, newest
    page = county.client("hospital").get("/hospital").get_data(as_text=True)
    waiting = page.split('id="waiting"', 1)[1].split("</table>", 1)[0]
    assert [m for m in re.findall(r"(王建国|李秀英|李三妹)", waiting)] == ["王建国", "李秀英", "李三妹"]
    assert re.findall(r'badge badge-(\w+)"', waiting) == ["stat", "urgent", "urgent"]
    assert "0 minutes" in waiting or "1 minute" in waiting  # the age of each request


def test_accept_then_admit_then_discharge_home_refers_down(county: County) -> None:
    _, sr_id = _referred(county, "elder")
    hospital = county.client("hospital")
    task = waiting_task(hospital)
    detail = hospital.get(f"/hospital/referrals/{task}").get_data(as_text=True)
    assert "王建国" in detail and "城关镇卫生院" in detail and "news2-high" in detail and "咳嗽三天" in detail
    assert hospital.post(f"/hospital/referrals/{task}/accept").status_code == 302
    assert stored("Task", task)["status"] == "accepted"
    inbox = hospital.get("/hospital").get_data(as_text=True)
    assert "王建国" in inbox.split('id="accepted"', 1)[1].split("</table>", 1)[0]
    admitted = hospital.post(f"/hospital/referrals/{task}/admit")
    stay = admitted.headers["Location"].split("/")[-2]
    assert stored("Task", task)["status"] == "in-progress"
    encounter = stored("Encounter", stay)
    assert encounter["class"]["code"] == "IMP" and encounter["basedOn"] == [
        {"reference": f"ServiceRequest/{sr_id}"}
    ]
    form_page = hospital.get(f"/hospital/admissions/{stay}/discharge").get_data(as_text=True)
    assert "Discharge" in form_page and 'value="home" selected' in form_page
    assert "王建国" in hospital.get("/hospital").get_data(as_text=True).split('id="admitted"', 1)[1]
    done = hospital.post(
        f"/hospital/admissions/{stay}/discharge",
        data={
            "disposition": "home",
            "diagnosis": ["I63.9", "I10"],
            "summary": "左侧肢体乏力好转",
            "charges-0-description": "住院床位费",
            "charges-0-charge_class": "A",
            "charges-0-amount": "1,200.00",
            "charges-1-description": "进口药",
            "charges-1-charge_class": "C",
            "charges-1-amount": "300",
        },
    )
    assert done.status_code == 302, field_errors(done.get_data(as_text=True))
    # The hospital lands on the decision: the rules that fired and why, the proposal to confirm.
    assert done.headers["Location"] == f"/hospital/discharges/{stay}"
    result = hospital.get(done.headers["Location"]).get_data(as_text=True)
    assert "Down-referral to the township clinic" in result and "城关镇卫生院" in result
    assert "down-referral-dx" in result and "Proposed down-referral" in result
    assert "proposed, not yet confirmed" in result
    assert result.count("scheduled") == 3
    assert f"/hospital/down-referrals/ref-down-{stay}/confirm" in result
    assert stored("Task", task)["status"] == "completed"
    assert stored("ServiceRequest", sr_id)["status"] == "completed"
    down = stored("ServiceRequest", f"ref-down-{stay}")
    assert down["basedOn"] == [{"reference": f"ServiceRequest/{sr_id}"}] and down["status"] == "draft"
    assert stored("Task", f"task-ref-down-{stay}")["status"] == "draft"
    assert stored("CarePlan", f"cp-ref-down-{stay}")["status"] == "draft"
    finished = stored("Encounter", stay)
    assert finished["status"] == "finished"
    assert finished["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"
    claim = stored("Claim", f"claim-{stay}")
    assert claim["type"]["coding"][0]["code"] == "institutional"
    assert [(i["category"]["coding"][0]["code"], i["net"]["value"]) for i in claim["item"]] == [
        ("A", 1200.0),
        ("C", 300.0),
    ]
    assert claim["total"] == {"value": 1500.0, "currency": "CNY"}
    # Discharged: the form now shows the decision, and discharging twice is refused.
    assert hospital.get(f"/hospital/admissions/{stay}/discharge").status_code == 302
    again = hospital.post(
        f"/hospital/admissions/{stay}/discharge", data={"disposition": "home", "diagnosis": "I63.9"}
    )
    assert again.status_code == 409


def _down_rows(client_page: str) -> str:
    """The rows of the clinic's down-referral table."""
    return client_page.split('id="down-referrals"', 1)[1].split("</table>", 1)[0]


def test_the_hospital_confirms_the_down_referral_and_then_the_clinic_sees_it(county: County) -> None:
    """DESIGN section 9: the rules propose (draft ServiceRequest, Task and CarePlan); the hospital's
    confirm sends it (active, Task requested, CarePlan active); only then is it the clinic's."""
    hospital, stay = discharged_home(county, county.patients["elder"], confirm=False)
    sr_id = f"ref-down-{stay}"
    clinic = county.client("clinic")
    follow_ups = clinic.get("/clinic/follow-ups").get_data(as_text=True)
    assert "王建国" not in follow_ups
    assert "down-referred patients to accept" not in clinic.get("/clinic").get_data(as_text=True)
    assert "王建国" not in _down_rows(clinic.get("/clinic/referrals").get_data(as_text=True))
    # The clinic cannot confirm the hospital's proposal (its web form confirms the clinic's own only).
    assert clinic.post(f"/clinic/referrals/{sr_id}/confirm").status_code == 403
    assert stored("ServiceRequest", sr_id)["status"] == "draft"

    zh = county.client("hospital", lang="zh").get(f"/hospital/discharges/{stay}").get_data(as_text=True)
    assert "建议下转" in zh and "确认并发送下转" in zh and "down-referral-dx" in zh
    # The hospital's inbox keeps the proposal in view until it is decided.
    inbox = hospital.get("/hospital").get_data(as_text=True)
    to_confirm = inbox.split('id="down-to-confirm"', 1)[1].split("</ul>", 1)[0]
    assert f'href="/hospital/discharges/{stay}">王建国</a>' in to_confirm and "城关镇卫生院" in to_confirm
    confirmed = hospital.post(f"/hospital/down-referrals/{sr_id}/confirm")
    assert confirmed.status_code == 302 and confirmed.headers["Location"] == f"/hospital/discharges/{stay}"
    page = hospital.get(confirmed.headers["Location"]).get_data(as_text=True)
    assert "The down-referral is confirmed and sent to the township clinic." in page
    assert "sent" in page and "waiting for the clinic" in page
    assert f"/hospital/down-referrals/{sr_id}/confirm" not in page
    assert stored("ServiceRequest", sr_id)["status"] == "active"
    assert stored("Task", f"task-{sr_id}")["status"] == "requested"
    plan = stored("CarePlan", f"cp-{sr_id}")
    assert plan["status"] == "active"
    assert [a["detail"]["status"] for a in plan["activity"]] == ["scheduled"] * 3
    assert hospital.post(f"/hospital/down-referrals/{sr_id}/confirm").status_code == 409  # once
    assert 'id="down-to-confirm"' not in hospital.get("/hospital").get_data(as_text=True)

    follow_ups = clinic.get("/clinic/follow-ups").get_data(as_text=True)
    assert "王建国" in follow_ups and "0 / 3" in follow_ups
    assert "1 down-referred patients to accept." in clinic.get("/clinic").get_data(as_text=True)
    assert "waiting for the clinic" in _down_rows(clinic.get("/clinic/referrals").get_data(as_text=True))


def test_overriding_a_down_referral_needs_a_reason_and_revokes_it(county: County) -> None:
    hospital, stay = discharged_home(county, county.patients["elder"], confirm=False)
    sr_id = f"ref-down-{stay}"
    page = hospital.get(f"/hospital/discharges/{stay}").get_data(as_text=True)
    assert f"/hospital/down-referrals/{sr_id}/override" in page
    missing = hospital.post(f"/hospital/down-referrals/{sr_id}/override", data={"action": "no-referral"})
    assert missing.status_code == 422
    html = missing.get_data(as_text=True)
    assert field_errors(html)["reason"] == "This field is required."
    assert '<details class="override" open>' in html and "down-referral-dx" in html
    assert stored("ServiceRequest", sr_id)["status"] == "draft"

    done = hospital.post(
        f"/hospital/down-referrals/{sr_id}/override",
        data={"action": "no-referral", "reason": "患者转往上级医院继续康复"},
    )
    assert done.status_code == 302
    page = hospital.get(done.headers["Location"]).get_data(as_text=True)
    assert "The down-referral is withdrawn." in page and "患者转往上级医院继续康复" in page
    assert "withdrawn" in page
    assert stored("ServiceRequest", sr_id)["status"] == "revoked"
    task = stored("Task", f"task-{sr_id}")
    assert (task["status"], task["statusReason"]["text"]) == ("cancelled", "患者转往上级医院继续康复")
    plan = stored("CarePlan", f"cp-{sr_id}")
    assert plan["status"] == "revoked"
    assert [a["detail"]["status"] for a in plan["activity"]] == ["cancelled"] * 3
    clinic = county.client("clinic")
    assert "王建国" not in clinic.get("/clinic/follow-ups").get_data(as_text=True)
    assert hospital.post(f"/hospital/down-referrals/{sr_id}/confirm").status_code == 409


def test_a_down_referral_overridden_to_another_clinic_goes_there_with_its_plan(county: County) -> None:
    hospital, stay = discharged_home(county, county.patients["elder"], confirm=False)
    sr_id = f"ref-down-{stay}"
    no_target = hospital.post(
        f"/hospital/down-referrals/{sr_id}/override", data={"action": "change", "reason": "离家近"}
    )
    assert no_target.status_code == 422
    assert field_errors(no_target.get_data(as_text=True))["target_id"] == "Choose another clinic."
    not_a_clinic = hospital.post(
        f"/hospital/down-referrals/{sr_id}/override",
        data={"action": "change", "target_id": HOSPITAL, "reason": "离家近"},
    )
    assert not_a_clinic.status_code == 422
    assert field_errors(not_a_clinic.get_data(as_text=True))["target_id"] == "Choose a clinic from the list."
    no_reason = hospital.post(
        f"/hospital/down-referrals/{sr_id}/override", data={"action": "change", "target_id": OTHER_CLINIC}
    )
    assert no_reason.status_code == 422
    assert stored("ServiceRequest", sr_id)["status"] == "draft"

    moved = hospital.post(
        f"/hospital/down-referrals/{sr_id}/override",
        data={"action": "change", "target_id": OTHER_CLINIC, "reason": "患者住在新集乡"},
    )
    assert moved.status_code == 302
    sr = stored("ServiceRequest", sr_id)
    assert sr["status"] == "active" and sr["performer"] == [{"reference": f"Organization/{OTHER_CLINIC}"}]
    assert stored("Task", f"task-{sr_id}")["status"] == "cancelled"
    new_task = stored("Task", f"task-{sr_id}-2")
    assert new_task["status"] == "requested"
    assert new_task["owner"] == {"reference": f"Organization/{OTHER_CLINIC}"}
    plan = stored("CarePlan", f"cp-{sr_id}")
    assert plan["status"] == "active" and plan["author"] == {"reference": f"Organization/{OTHER_CLINIC}"}
    assert {a["detail"]["performer"][0]["reference"] for a in plan["activity"]} == {
        f"Organization/{OTHER_CLINIC}"
    }
    assert "王建国" not in county.client("clinic").get("/clinic/follow-ups").get_data(as_text=True)
    other = county.client("clinic2").get("/clinic/follow-ups").get_data(as_text=True)
    assert "王建国" in other and "0 / 3" in other


def test_discharge_without_a_down_referral_diagnosis(county: County) -> None:
    _referred(county, "elder")
    hospital = county.client("hospital")
    task = waiting_task(hospital)
    stay = hospital.post(f"/hospital/referrals/{task}/admit").headers["Location"].split("/")[-2]
    done = hospital.post(
        f"/hospital/admissions/{stay}/discharge", data={"disposition": "home", "diagnosis": "J18.9"}
    )
    page = hospital.get(done.headers["Location"]).get_data(as_text=True)
    assert "No down-referral" in page and "Follow-up visits" not in page


def test_discharge_errors_are_shown_beside_the_field(county: County) -> None:
    _referred(county, "elder")
    hospital = county.client("hospital")
    task = waiting_task(hospital)
    stay = hospital.post(f"/hospital/referrals/{task}/admit").headers["Location"].split("/")[-2]
    response = hospital.post(
        f"/hospital/admissions/{stay}/discharge",
        data={
            "disposition": "moon",
            "diagnosis": ["", "I6"],
            "summary": "好转",
            "charges-0-description": "床位费",
            "charges-0-charge_class": "A",
            "charges-0-amount": "abc",
        },
    )
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    errors = field_errors(html)
    assert errors["disposition"] == "Choose one of the options."
    assert "Not an ICD-10 code" in errors["diagnosis-0"]
    assert errors["charges-0-amount"] == "Enter an amount in yuan, in digits (such as 35.50)."
    assert 'value="I6"' in html and "好转" in html and 'value="床位费"' in html and 'value="abc"' in html
    assert stored("Encounter", stay)["status"] == "in-progress"


def test_decline_needs_a_reason_and_the_clinic_sees_it(county: County) -> None:
    _referred(county, "elder")
    hospital = county.client("hospital")
    task = waiting_task(hospital)
    missing = hospital.post(f"/hospital/referrals/{task}/decline", data={"reason": ""})
    assert missing.status_code == 422
    html = missing.get_data(as_text=True)
    assert (
        field_errors(html)["reason"] == "This field is required." and '<details class="decline" open>' in html
    )
    assert stored("Task", task)["status"] == "requested"
    done = hospital.post(f"/hospital/referrals/{task}/decline", data={"reason": "ICU 无床位"})
    assert done.status_code == 302
    assert stored("Task", task)["status"] == "rejected"
    assert "No referrals waiting." in hospital.get("/hospital").get_data(as_text=True)
    home = county.client("clinic").get("/clinic").get_data(as_text=True)
    assert "ICU 无床位" in home.split("Declined by the hospital", 1)[1].split("</section>", 1)[0]
    assert hospital.post(f"/hospital/referrals/{task}/accept").status_code == 409  # final state


def test_a_referral_to_another_hospital_is_not_in_this_inbox(county: County) -> None:
    from tests.functional.test_web_support import MCH

    clinic = county.client("clinic")
    encounter_id = record_visit(clinic, county.patients["woman"])
    clinic.post(
        f"/clinic/referrals/ref-up-{encounter_id}/override",
        data={"action": "change", "target_id": MCH, "reason": "产科情况"},
    )
    hospital = county.client("hospital")
    assert "No referrals waiting." in hospital.get("/hospital").get_data(as_text=True)
    assert stored("Task", f"task-ref-up-{encounter_id}-2")["owner"] == {"reference": f"Organization/{MCH}"}
    assert hospital.get(f"/hospital/referrals/task-ref-up-{encounter_id}-2").status_code == 404


def _task_history(task_id: str) -> list[dict[str, object]]:
    """Every stored version of a Task, oldest first (what vread and _history serve)."""
    with database.unit_of_work() as db:
        rows = db.scalars(
            select(ResourceVersion.content)
            .join(StoredResource, StoredResource.pk == ResourceVersion.resource_pk)
            .where(StoredResource.res_type == "Task", StoredResource.res_id == task_id)
            .order_by(ResourceVersion.version_id)
        ).all()
    return [orjson.loads(r) for r in rows]


def _moved_by(task: dict[str, object]) -> str | None:
    for ext in task.get("extension") or []:  # type: ignore[attr-defined]
        if ext["url"].endswith("/StructureDefinition/moved-by"):
            return str(ext["valueString"])
    return None


def test_every_task_move_from_the_web_names_the_signed_in_user(county: County) -> None:
    """Confirm (clinic), accept, admit, discharge (hospital): who moved the Task, in its history and audit."""
    _, sr_id = _referred(county, "elder")
    hospital = county.client("hospital")
    task = waiting_task(hospital)
    assert task == f"task-{sr_id}"
    assert hospital.post(f"/hospital/referrals/{task}/accept").status_code == 302
    stay = hospital.post(f"/hospital/referrals/{task}/admit").headers["Location"].split("/")[-2]
    discharge = {"disposition": "home", "diagnosis": "J18.9"}
    done = hospital.post(f"/hospital/admissions/{stay}/discharge", data=discharge)
    assert done.status_code == 302
    history = _task_history(task)
    moves = [(v["status"], _moved_by(v)) for v in history if v["status"] != "draft"]
    assert moves == [
        ("requested", "clinic"),
        ("accepted", "hospital"),
        ("in-progress", "hospital"),
        ("completed", "hospital"),
    ]
    with database.unit_of_work() as db:
        writes = db.execute(
            select(AuditRecord.agent_kind, AuditRecord.agent_name, AuditRecord.organization_id)
            .where(AuditRecord.entity_type == "Task", AuditRecord.entity_id == task)
            .where(AuditRecord.action == "U")
            .order_by(AuditRecord.id)
        ).all()
    assert [tuple(w) for w in writes] == [
        ("user", "clinic", CLINIC),
        ("user", "hospital", HOSPITAL),
        ("user", "hospital", HOSPITAL),
        ("user", "hospital", HOSPITAL),
    ]
