"""Quantity search (FHIR search.html#quantity) over HTTP on both engines: Observation `value-quantity`,
`component-value-quantity` and `combo-value-quantity`, prefixes with the implicit precision of the
number, units by system and code or by code or unit alone, every write path keeping the index rows
(create, update, PATCH, conditional update, delete, transaction and batch Bundles, fhir-reindex), the
access policy, and 400 for what is malformed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select

from referral_service.domain.fhir_store import QuantityIndex
from referral_service.extensions import database
from referral_service.fhir import jsonio
from tests.functional.fhir_helpers import FHIR, Fhir, organization, patient, token_for

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OTHER_UNITS = "http://example.org/units"
WEIGHT = "29463-7"  # body weight: no unit rule of ours (vital signs have theirs)
GLUCOSE = "15074-8"  # glucose in blood
SYSTOLIC, DIASTOLIC, BP_PANEL = "8480-6", "8462-4", "85354-9"
MMHG = "mm[Hg]"


def _created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.json
    return dict(response.json)


def send(fhir: Fhir, method: str, path: str, body: dict[str, Any]) -> Any:
    """POST or PUT a body whose Decimals go as JSON numbers with exactly their digits (the test
    client's `json=` would send them as strings)."""
    return fhir.client.open(f"/fhir/{path}", method=method, data=jsonio.dumps(body), headers=fhir._headers(),
                            content_type=FHIR)


def create(fhir: Fhir, body: dict[str, Any]) -> str:
    """POST the resource (`send`); its id."""
    return str(_created(send(fhir, "POST", body["resourceType"], body))["id"])


def ids_of(response: Any) -> set[str]:
    assert response.status_code == 200, response.json
    assert response.json["resourceType"] == "Bundle"
    return {e["resource"]["id"] for e in response.json.get("entry", []) if e["search"]["mode"] == "match"}


def observation(subject: str, code: str, quantity: dict[str, Any] | None, **more: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{subject}"},
        "effectiveDateTime": "2026-11-02T09:05:00+08:00",
        **more,
    }
    if quantity is not None:
        body["valueQuantity"] = quantity
    return body


def kg(value: Any) -> dict[str, Any]:
    return {"value": value, "unit": "kg", "system": UCUM, "code": "kg"}


def mmhg(value: Any) -> dict[str, Any]:
    return {"value": value, "unit": MMHG, "system": UCUM, "code": MMHG}


def bp_panel(subject: str, systolic: int, diastolic: int) -> dict[str, Any]:
    body = observation(subject, BP_PANEL, None)
    body["component"] = [
        {"code": {"coding": [{"system": LOINC, "code": SYSTOLIC}]}, "valueQuantity": mmhg(systolic)},
        {"code": {"coding": [{"system": LOINC, "code": DIASTOLIC}]}, "valueQuantity": mmhg(diastolic)},
    ]
    return body


@dataclass
class Setting:
    platform: Fhir  # the county platform: sees everything
    township: Fhir  # th-01
    township2: Fhir  # th-02
    mine: str  # a patient of th-01 (its GP)
    theirs: str  # a patient of th-02


@pytest.fixture
def setting(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> Setting:
    def fhir(client_id: str, org: str) -> Fhir:
        cid, secret = make_api_client(client_id, "system/*.cruds", org)
        return Fhir(client, token_for(client, cid, secret))

    platform = fhir("county-platform", "qs-health-commission")
    for org_id, name in (("th-01", "测试卫生院"), ("th-02", "第二卫生院")):
        assert platform.put(f"Organization/{org_id}", organization(org_id, name=name) | {"id": org_id}
                            ).status_code == 201
    mine = _created(platform.post("Patient", patient(None, family="钱", gp="th-01")))["id"]
    theirs = _created(platform.post("Patient", patient(None, family="赵", gp="th-02")))["id"]
    return Setting(platform, fhir("township-his", "th-01"), fhir("township2-his", "th-02"), mine, theirs)


def _search(fhir: Fhir, query: dict[str, str], resource_type: str = "Observation") -> set[str]:
    return ids_of(fhir.get(resource_type, query_string=query))


# ------------------------------------------------------------------------------------------ prefixes

WEIGHTS = {"a": "5.34", "b": "5.35", "c": "5.4", "d": "5.449", "e": "5.45", "f": "6", "g": "4.9", "h": "-1"}

PREFIX_CASES = [
    ("5.4", "bcd"),  # eq by default: [5.35, 5.45), 5.45 itself out
    ("eq5.4", "bcd"),
    ("5.40", "c"),  # [5.395, 5.405): the precision the number is written with
    ("eq5.35", "b"),  # [5.345, 5.355)
    ("6", "f"),  # [5.5, 6.5)
    ("1e1", "abcdef"),  # one significant digit: [5, 15)
    ("ne5.4", "aefgh"),
    ("gt5.4", "def"),  # the number itself, exactly
    ("ge5.4", "cdef"),
    ("lt5.4", "abgh"),
    ("le5.4", "abcgh"),
    ("sa5.4", "ef"),  # above the whole precision range: from 5.45 up
    ("eb5.4", "agh"),  # below it: under 5.35
    ("ap5.4", "abcdeg"),  # 10 %: [4.86, 5.94]
    ("ap6", "cdef"),  # [5.4, 6.6], both ends in
    ("ap0", ""),  # the precision range when 10 % of the number is nothing: [-0.5, 0.5]
    ("eq-1", "h"),
    ("gt-1", "abcdefg"),
    ("lt5,gt5.9", "fgh"),  # values are OR-ed
]


def test_each_prefix_over_exact_decimals(setting: Setting) -> None:
    fhir = setting.platform
    made = {name: create(fhir, observation(setting.mine, WEIGHT, kg(Decimal(v))))
            for name, v in WEIGHTS.items()}
    for value, expected in PREFIX_CASES:
        found = _search(fhir, {"value-quantity": value})
        assert found == {made[n] for n in expected}, (value, sorted(n for n, i in made.items() if i in found))
    # repeated parameters are AND-ed
    both = fhir.get("Observation", query_string=[("value-quantity", "gt5"), ("value-quantity", "lt5.4")])
    assert ids_of(both) == {made["a"], made["b"]}


def test_numbers_are_compared_exactly_never_as_floats(setting: Setting) -> None:
    """0.30000000000000000001 and 0.3 are one binary float: compared as floats, le0.3 would find it
    and gt0.3 would not."""
    fhir = setting.platform
    over = create(fhir, observation(setting.mine, WEIGHT, kg(Decimal("0.30000000000000000001"))))
    exact = create(fhir, observation(setting.mine, WEIGHT, kg(Decimal("0.3"))))
    assert _search(fhir, {"value-quantity": "le0.3"}) == {exact}
    assert _search(fhir, {"value-quantity": "gt0.3"}) == {over}
    assert _search(fhir, {"value-quantity": "0.30000000000000000001"}) == {over}
    assert _search(fhir, {"value-quantity": "0.3"}) == {exact, over}  # [0.25, 0.35)
    # 5.4 and 5.40 are the same number stored
    trailing = create(fhir, observation(setting.mine, WEIGHT, kg(Decimal("70.50"))))
    assert _search(fhir, {"value-quantity": "70.5"}) == {trailing}
    pinned = fhir.get("Observation", query_string=[("value-quantity", "ge70.5"),
                                                   ("value-quantity", "le70.50")])
    assert ids_of(pinned) == {trailing}


def test_high_systolic_pressures_by_code_and_value(setting: Setting) -> None:
    fhir = setting.platform
    high = create(fhir, observation(setting.mine, SYSTOLIC, mmhg(152)))
    create(fhir, observation(setting.mine, SYSTOLIC, mmhg(128)))
    create(fhir, observation(setting.mine, WEIGHT, kg(160)))  # high, not a pressure
    found = fhir.get(f"Observation?code={LOINC}|{SYSTOLIC}&value-quantity=gt140")
    assert ids_of(found) == {high}
    code = f"code={LOINC}|{SYSTOLIC}"
    assert ids_of(fhir.get(f"Observation?{code}&value-quantity=gt140|{UCUM}|mm[Hg]")) == {high}
    assert ids_of(fhir.get(f"Observation?{code}&value-quantity=gt140|{UCUM}|kg")) == set()
    # reverse chaining reaches quantities too
    assert ids_of(fhir.get("Patient?_has:Observation:patient:value-quantity=gt150")) == {setting.mine}


# --------------------------------------------------------------------------------------------- units


def test_system_and_code_or_code_and_unit_alone(setting: Setting) -> None:
    fhir = setting.platform
    ucum = create(fhir, observation(
        setting.mine, GLUCOSE, {"value": 5.4, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}))
    other = create(fhir, observation(setting.mine, GLUCOSE, {
        "value": 5.4, "unit": "mmol per litre", "system": OTHER_UNITS, "code": "mmol/L"}))
    unit_only = create(fhir, observation(
        setting.mine, GLUCOSE, {"value": 5.4, "unit": "毫摩尔/升"}))
    mg = create(fhir, observation(
        setting.mine, GLUCOSE, {"value": 5.4, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}))
    cases = {
        "5.4": {ucum, other, unit_only, mg},
        f"5.4|{UCUM}|mmol/L": {ucum},  # system and code
        f"5.4|{OTHER_UNITS}|mmol/L": {other},
        "5.4||mmol/L": {ucum, other},  # no system: the code ...
        "5.4||毫摩尔/升": {unit_only},  # ... or the human-readable unit
        "5.4||mmol per litre": {other},
        f"5.4|{UCUM}|": {ucum, mg},  # the system alone
        "5.4||": {ucum, other, unit_only, mg},
        f"5.4|{UCUM}|毫摩尔/升": set(),  # with a system, the code only
        f"5.4|{UCUM}|mmol per litre": set(),
        "5.4||MMOL/L": set(),  # codes are case-sensitive
        f"gt5.4|{UCUM}|mmol/L": set(),
        f"ge5.4|{UCUM}|mmol/L,5.4||毫摩尔/升": {ucum, unit_only},
    }
    for value, expected in cases.items():
        assert _search(fhir, {"value-quantity": value}) == expected, value


def test_component_values_and_the_combination(setting: Setting) -> None:
    fhir = setting.platform
    panel = create(fhir, bp_panel(setting.mine, 150, 95))
    calm = create(fhir, bp_panel(setting.mine, 118, 76))
    single = create(fhir, observation(setting.mine, SYSTOLIC, mmhg(145)))
    assert _search(fhir, {"component-value-quantity": "gt140"}) == {panel}
    assert _search(fhir, {"component-value-quantity": "95"}) == {panel}  # the diastolic component
    assert _search(fhir, {"component-value-quantity": f"lt80|{UCUM}|{MMHG}"}) == {calm}
    assert _search(fhir, {"value-quantity": "gt140"}) == {single}  # a panel has no value of its own
    assert _search(fhir, {"combo-value-quantity": "gt140"}) == {panel, single}
    assert _search(fhir, {"value-quantity:missing": "true"}) == {panel, calm}
    assert _search(fhir, {"value-quantity:missing": "false"}) == {single}
    assert _search(fhir, {"component-value-quantity:missing": "true"}) == {single}


# --------------------------------------------------------------------------------------- write paths


def _rows(res_id: str) -> list[tuple[str, Decimal]]:
    """The quantity index rows of an Observation: (param, value)."""
    from referral_service.domain.fhir_store import StoredResource

    with database.session() as session:
        rows = session.execute(
            select(QuantityIndex.param, QuantityIndex.value)
            .join(StoredResource, StoredResource.pk == QuantityIndex.resource_pk)
            .where(StoredResource.res_type == "Observation", StoredResource.res_id == res_id)
            .order_by(QuantityIndex.param)
        ).all()
    return [(p, Decimal(v)) for p, v in rows]


def test_update_patch_and_conditional_update_replace_the_rows(setting: Setting) -> None:
    fhir = setting.platform
    body = observation(setting.mine, WEIGHT, kg(70), identifier=[{"system": "urn:lab", "value": "w-1"}])
    oid = create(fhir, body)
    assert _rows(oid) == [("combo-value-quantity", Decimal(70)), ("value-quantity", Decimal(70))]
    assert _search(fhir, {"value-quantity": "70"}) == {oid}

    new_value = body | {"id": oid, "valueQuantity": kg(Decimal("71.5"))}
    updated = send(fhir, "PUT", f"Observation/{oid}", new_value)
    assert updated.status_code == 200, updated.json
    assert _search(fhir, {"value-quantity": "70"}) == set()  # the old value is gone
    assert _search(fhir, {"value-quantity": "71.5"}) == {oid}

    replace = {"op": "replace", "path": "/valueQuantity/value", "value": 73}
    patched = fhir.patch(f"Observation/{oid}", [replace])
    assert patched.status_code == 200, patched.json
    assert _search(fhir, {"value-quantity": "71.5"}) == set()
    assert _search(fhir, {"value-quantity": "73"}) == {oid}

    conditional = fhir.put("Observation?identifier=urn:lab|w-1", body | {"valueQuantity": kg(75)})
    assert conditional.status_code == 200, conditional.json
    assert _search(fhir, {"value-quantity": "73"}) == set()
    assert _search(fhir, {"value-quantity": "75"}) == {oid}
    assert _rows(oid) == [("combo-value-quantity", Decimal(75)), ("value-quantity", Decimal(75))]

    # a new version without a value leaves no row behind
    no_value = body | {"id": oid, "valueString": "not weighed"}
    del no_value["valueQuantity"]
    assert fhir.put(f"Observation/{oid}", no_value).status_code == 200
    assert _rows(oid) == []
    assert _search(fhir, {"value-quantity:missing": "true"}) == {oid}


def test_delete_removes_the_rows(setting: Setting) -> None:
    fhir = setting.platform
    oid = create(fhir, observation(setting.mine, WEIGHT, kg(80)))
    kept = create(fhir, observation(setting.mine, WEIGHT, kg(80)))
    assert fhir.delete(f"Observation/{oid}").status_code in (200, 204)
    assert _rows(oid) == []
    assert _search(fhir, {"value-quantity": "80"}) == {kept}
    assert fhir.delete("Observation?identifier=nothing").status_code in (200, 204)  # (matches none)
    assert _rows(kept) != []


POST = {"method": "POST", "url": "Observation"}


def test_transaction_and_batch_bundles_index_quantities(setting: Setting) -> None:
    fhir = setting.platform
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": observation(setting.mine, WEIGHT, kg(61)), "request": POST},
            {"resource": bp_panel(setting.mine, 161, 99), "request": POST},
        ],
    }
    answer = fhir.post("", transaction)
    assert answer.status_code == 200, answer.json
    weight_id, panel_id = (e["response"]["location"].split("/")[1] for e in answer.json["entry"])
    assert _search(fhir, {"value-quantity": "61"}) == {weight_id}
    assert _search(fhir, {"component-value-quantity": "161"}) == {panel_id}

    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": observation(setting.mine, WEIGHT, kg(62)) | {"id": weight_id},
             "request": {"method": "PUT", "url": f"Observation/{weight_id}"}},
            {"resource": observation(setting.mine, WEIGHT, kg(63)), "request": POST},
        ],
    }
    answer = fhir.post("", batch)
    assert answer.status_code == 200, answer.json
    assert [e["response"]["status"][:3] for e in answer.json["entry"]] == ["200", "201"]
    added = answer.json["entry"][1]["response"]["location"].split("/")[1]
    assert _search(fhir, {"value-quantity": "61"}) == set()
    assert _search(fhir, {"value-quantity": "62"}) == {weight_id}
    assert _search(fhir, {"value-quantity": "63"}) == {added}


def test_reindex_restores_the_rows(setting: Setting, client: FlaskClient) -> None:
    """Resources stored before the quantity index get their rows from `flask fhir-reindex`."""
    fhir = setting.platform
    oid = create(fhir, observation(setting.mine, WEIGHT, kg(66)))
    panel = create(fhir, bp_panel(setting.mine, 149, 91))
    with database.unit_of_work() as session:
        session.execute(delete(QuantityIndex))  # as stored before the upgrade
    assert _search(fhir, {"value-quantity": "66"}) == set()
    result = client.application.test_cli_runner().invoke(args=["fhir-reindex", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert _search(fhir, {"value-quantity": "66"}) == {oid}
    assert _search(fhir, {"component-value-quantity": "gt145"}) == {panel}
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(QuantityIndex)) == 2 + 4  # no duplicates


# --------------------------------------------------------------------------------------------- access


def test_a_client_finds_only_what_it_may_see(setting: Setting) -> None:
    mine = create(setting.platform, observation(setting.mine, SYSTOLIC, mmhg(170)))
    theirs = create(setting.platform, observation(setting.theirs, SYSTOLIC, mmhg(171)))
    assert _search(setting.platform, {"value-quantity": "gt160"}) == {mine, theirs}
    assert _search(setting.township, {"value-quantity": "gt160"}) == {mine}
    assert _search(setting.township2, {"value-quantity": "gt160"}) == {theirs}
    assert _search(setting.township, {"value-quantity": "171"}) == set()
    counted = setting.township.get("Observation?value-quantity=gt160&_summary=count")
    assert counted.json["total"] == 1
    has = setting.township.get("Patient?_has:Observation:patient:value-quantity=gt160")
    assert ids_of(has) == {setting.mine}


# ------------------------------------------------------------------------------------------ malformed

MALFORMED = [
    ("value-quantity", "xx5.4"),  # unknown prefix
    ("value-quantity", "gt"),  # a prefix without a number
    ("value-quantity", "abc"),
    ("value-quantity", "5,4.4.4"),
    ("value-quantity", "5.4|mg"),  # a unit needs both separators
    ("value-quantity", "5.4|a|b|c"),
    ("value-quantity", "5."),
    ("value-quantity", "0x10"),
    ("value-quantity", "NaN"),
    ("value-quantity", "1e999"),  # beyond the numbers searched
    ("value-quantity", "1e99999999999999999999"),  # beyond Decimal's exponent (InvalidOperation: 500)
    ("combo-value-quantity", "gt-1e-99999999999999999999||kg"),
    ("value-quantity", "|http://unitsofmeasure.org|kg"),  # no number
    ("component-value-quantity", "gt14O"),
    ("value-quantity:exact", "5.4"),
    ("value-quantity:missing", "maybe"),
]


@pytest.mark.parametrize(("name", "value"), MALFORMED)
def test_malformed_values_are_400_naming_the_parameter(setting: Setting, name: str, value: str) -> None:
    response = setting.platform.get("Observation", query_string={name: value})
    assert response.status_code == 400, (value, response.json)
    outcome = response.json
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [name.partition(":")[0]]


def test_a_value_whose_exponent_decimal_cannot_hold_is_400(setting: Setting) -> None:
    """A JSON number such as 1e99999999999999999999 in a body (Decimal refuses the exponent:
    InvalidOperation) was a 500; it is 400 as any JSON the service cannot read."""
    fhir = setting.platform
    body = jsonio.dumps(observation(setting.mine, WEIGHT, kg(Decimal(70))))
    for number in ("1e99999999999999999999", "-1E-99999999999999999999"):
        raw = body.replace(b'"value":70', b'"value":' + number.encode())
        assert raw != body
        response = fhir.client.post("/fhir/Observation", data=raw, headers=fhir._headers(), content_type=FHIR)
        assert response.status_code == 400, response.json
        assert response.json["resourceType"] == "OperationOutcome"


def test_sorting_by_a_quantity_is_400_saying_so(setting: Setting) -> None:
    response = setting.platform.get("Observation?_sort=value-quantity")
    assert response.status_code == 400
    assert "value-quantity" in response.json["issue"][0]["diagnostics"]
    assert response.json["issue"][0]["expression"] == ["_sort"]


def test_the_capability_statement_lists_the_quantity_parameters(setting: Setting) -> None:
    metadata = setting.platform.get("metadata").json
    (observation_entry,) = [r for r in metadata["rest"][0]["resource"] if r["type"] == "Observation"]
    params = {p["name"]: p["type"] for p in observation_entry["searchParam"]}
    assert params["value-quantity"] == "quantity"
    assert params["component-value-quantity"] == "quantity"
    assert params["combo-value-quantity"] == "quantity"
