"""The official HL7 FHIR R4 examples survive a round trip through the server, on both engines.

The examples (tests/fixtures/hl7_examples/, from the npm package hl7.fhir.r4.examples 4.0.1; see
NOTICE.md there) were written for the base specification, not for our profiles. Before storing one
we make the minimal adjustments our business rules need. They only ever ADD an element; no element
is removed and no value changed (`assert_only_additions` checks that for every example):

- rs-org-1 (one facility level or organisation kind): append an Organization.type coding
  facility-level `county`;
- Organization.address 1..1 and rs-org-3 (address[0].district): add `address[0].district` 青山县
  (and the address itself when there is none);
- Encounter.serviceProvider 1..1: add `serviceProvider` Organization/1 (HL7's ACME organisation, the
  managing organisation of Patient/example);
- Observation.subject 1..1: add `subject` Patient/example;
- references must resolve (else 422): store what an example references first, by the platform
  client: the adjusted example when we keep it, else a minimal stub with that id.

Each adjusted example is then PUT with its own id (update-as-create), read back, and compared with
what was sent, element by element (only `meta.versionId` and `meta.lastUpdated` are the server's).
Decimals are compared as numbers here; whether their written precision survives is a separate test.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from referral_service.fhir.codes import FACILITY_LEVEL_SYSTEM
from tests.functional.fhir_helpers import FHIR, token_for
from tests.interop.conftest import PLATFORM_ORG

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "hl7_examples"
SUPPORTED = (
    "Patient", "Organization", "Practitioner", "PractitionerRole", "Group", "Coverage", "Encounter",
    "Condition", "Observation",
)
EXAMPLE_FILE = re.compile(rf"^({'|'.join(SUPPORTED)})-([A-Za-z0-9.\-]+)\.json$")
DISTRICT = "青山县"
SERVICE_PROVIDER = "Organization/1"
OBSERVATION_SUBJECT = "Patient/example"
SERVER_META = ("versionId", "lastUpdated")

JsonDict = dict[str, Any]


# ----------------------------------------------------------------------------- loading examples


def example_names() -> list[str]:
    """`Type-id` of every example kept in the fixtures folder."""
    names = sorted(p.stem for p in EXAMPLES_DIR.glob("*.json") if EXAMPLE_FILE.match(p.name))
    assert names, f"no examples in {EXAMPLES_DIR}"
    return names


EXAMPLES = example_names()


def parse(raw: str | bytes) -> JsonDict:
    """JSON with decimals kept exact, as Decimal (with the precision they were written with)."""
    value = json.loads(raw, parse_float=Decimal)
    assert isinstance(value, dict)
    return value


@cache
def _example_text(name: str) -> str:
    return (EXAMPLES_DIR / f"{name}.json").read_text(encoding="utf-8")


def load(name: str) -> JsonDict:
    """The example as published (decimals as Decimal)."""
    return parse(_example_text(name))


def has_example(rtype: str, rid: str) -> bool:
    return f"{rtype}-{rid}" in EXAMPLES


_PLACEHOLDER = re.compile(r'"@@decimal:([^"@]+)@@"')


def encode(resource: Any) -> bytes:
    """JSON bytes in which every Decimal is written back as the number text it was read from."""

    def number(value: Any) -> str:
        if isinstance(value, Decimal):
            return f"@@decimal:{value}@@"
        raise TypeError(f"cannot encode {type(value).__name__}")

    text = json.dumps(resource, ensure_ascii=False, default=number)
    return _PLACEHOLDER.sub(r"\1", text).encode()


# ---------------------------------------------------------------------------------- adjustments


def adjust(resource: JsonDict) -> JsonDict:
    """The example with the minimal additions our business rules need (see the module docstring)."""
    out = copy.deepcopy(resource)
    rtype = out["resourceType"]
    if rtype == "Organization":
        out.setdefault("type", []).append(
            {"coding": [{"system": FACILITY_LEVEL_SYSTEM, "code": "county", "display": "County hospital"}]}
        )
        if not out.get("address"):
            out["address"] = [{"district": DISTRICT}]
        elif not out["address"][0].get("district"):
            out["address"][0]["district"] = DISTRICT
    elif rtype == "Encounter" and "serviceProvider" not in out:
        out["serviceProvider"] = {"reference": SERVICE_PROVIDER}
    elif rtype == "Observation" and "subject" not in out:
        out["subject"] = {"reference": OBSERVATION_SUBJECT}
    return out


def assert_only_additions(original: Any, adjusted: Any, path: str = "") -> None:
    """Every element of `original` is in `adjusted` with the same value (lists may only grow at the end)."""
    if isinstance(original, dict):
        assert isinstance(adjusted, dict), path
        for key, value in original.items():
            assert key in adjusted, f"{path}.{key} was removed"
            assert_only_additions(value, adjusted[key], f"{path}.{key}")
    elif isinstance(original, list):
        assert isinstance(adjusted, list), path
        assert len(adjusted) >= len(original), f"{path} lost items"
        for index, value in enumerate(original):
            assert_only_additions(value, adjusted[index], f"{path}[{index}]")
    else:
        assert type(original) is type(adjusted) and original == adjusted, f"{path} changed"


def references(resource: Any) -> Iterator[tuple[str, str]]:
    """(type, id) of each relative literal reference to a type the server stores."""
    if isinstance(resource, dict):
        for key, value in resource.items():
            if key == "reference" and isinstance(value, str):
                parts = value.split("/")
                if len(parts) == 2 and parts[0] in SUPPORTED:  # skips #contained, urn: and absolute URLs
                    yield parts[0], parts[1]
            else:
                yield from references(value)
    elif isinstance(resource, list):
        for item in resource:
            yield from references(item)


STUB_PATIENT = "interop-stub-patient"


def stub(rtype: str, rid: str) -> JsonDict:
    """A minimal valid resource standing in for something an example references but we do not keep."""
    bodies: dict[str, JsonDict] = {
        "Organization": {
            "name": f"Stub {rid}",
            "type": [{"coding": [{"system": FACILITY_LEVEL_SYSTEM, "code": "county"}]}],
            "address": [{"district": DISTRICT}],
        },
        "Patient": {"name": [{"family": "Stub", "given": [rid]}], "address": [{"district": DISTRICT}]},
        "Practitioner": {"name": [{"family": "Stub", "given": [rid]}]},
        "Observation": {
            "status": "final",
            "code": {"text": f"stub {rid}"},
            "subject": {"reference": f"Patient/{STUB_PATIENT}"},
        },
    }
    assert rtype in bodies, f"no stub for {rtype}/{rid}: add one or keep that example"
    return {"resourceType": rtype, "id": rid, **bodies[rtype]}


def with_prerequisites(names: list[str]) -> list[JsonDict]:
    """The adjusted examples, each after what it references (examples we keep, else stubs)."""
    ordered: list[JsonDict] = []
    done: set[tuple[str, str]] = set()

    def visit(rtype: str, rid: str, resource: JsonDict | None = None) -> None:
        if (rtype, rid) in done:
            return
        done.add((rtype, rid))  # first, so that a cycle ends here
        if resource is None:
            resource = adjust(load(f"{rtype}-{rid}")) if has_example(rtype, rid) else stub(rtype, rid)
        for target in references(resource):
            if target != (rtype, rid):
                visit(*target)
        ordered.append(resource)

    for name in names:
        resource = adjust(load(name))
        visit(resource["resourceType"], resource["id"], resource)
    return ordered


def canonical(value: Any, *, precise: bool = False) -> Any:
    """JSON for comparison: booleans never equal numbers; numbers compare by value, or by value and
    written precision (1.00 is not 1.0) when `precise`."""
    if isinstance(value, dict):
        return {key: canonical(item, precise=precise) for key, item in value.items()}
    if isinstance(value, list):
        return [canonical(item, precise=precise) for item in value]
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | Decimal):
        number = Decimal(value)
        return ("number", tuple(number.as_tuple()) if precise else number)
    return value


def as_stored(resource: JsonDict) -> JsonDict:
    """The resource without the meta elements the server assigns."""
    out = dict(resource)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items() if k not in SERVER_META}
    if meta:
        out["meta"] = meta
    return out


# ------------------------------------------------------------------------------------- fixtures


class RawFhir:
    """The platform client over Flask's test client, sending bodies as exact bytes."""

    def __init__(self, client: FlaskClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}", "Accept": FHIR}

    def put(self, resource: JsonDict) -> TestResponse:
        path = f"/fhir/{resource['resourceType']}/{resource['id']}"
        return self.client.put(path, data=encode(resource), headers=self.headers, content_type=FHIR)

    def post(self, path: str, body: JsonDict) -> TestResponse:
        return self.client.post(path, data=encode(body), headers=self.headers, content_type=FHIR)

    def get(self, path: str) -> TestResponse:
        return self.client.get(path, headers=self.headers)


@pytest.fixture
def platform(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> RawFhir:
    client_id, secret = make_api_client("county-platform", "system/*.cruds", PLATFORM_ORG)
    return RawFhir(client, token_for(client, client_id, secret))


def store(platform: RawFhir, resources: list[JsonDict]) -> None:
    for resource in resources:
        response = platform.put(resource)
        assert response.status_code == 201, (resource["resourceType"], resource["id"], response.json)


def read_back(platform: RawFhir, resource: JsonDict) -> JsonDict:
    response = platform.get(f"/fhir/{resource['resourceType']}/{resource['id']}")
    assert response.status_code == 200, response.json
    return parse(response.data)


# ---------------------------------------------------------------------------------------- tests


def test_the_subset_is_small_and_representative() -> None:
    per_type: dict[str, int] = {}
    for name in EXAMPLES:
        per_type[name.split("-", 1)[0]] = per_type.get(name.split("-", 1)[0], 0) + 1
    assert set(per_type) == set(SUPPORTED)
    assert all(1 <= n <= 4 for n in per_type.values()), per_type
    assert sum(p.stat().st_size for p in EXAMPLES_DIR.iterdir()) < 300_000
    assert (EXAMPLES_DIR / "NOTICE.md").is_file()
    assert json.loads((EXAMPLES_DIR / "package.json").read_text())["license"] == "CC0-1.0"


@pytest.mark.parametrize("name", EXAMPLES)
def test_adjustments_only_add(name: str) -> None:
    original = load(name)
    assert f"{original['resourceType']}-{original['id']}" == name
    assert_only_additions(original, adjust(original))


@pytest.mark.parametrize("name", EXAMPLES)
def test_r4b_model_round_trip(name: str) -> None:
    """fhir.resources R4B reads and writes each example (as published and adjusted) unchanged."""
    original = load(name)
    rtype = original["resourceType"]
    model = getattr(importlib.import_module(f"fhir.resources.R4B.{rtype.lower()}"), rtype)
    for resource in (original, adjust(original)):
        dumped = model.model_validate(resource).model_dump(mode="json", by_alias=True, exclude_none=True)
        assert canonical(parse(json.dumps(dumped))) == canonical(resource)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_round_trip(name: str, platform: RawFhir) -> None:
    *prerequisites, example = with_prerequisites([name])
    store(platform, prerequisites)

    response = platform.put(example)
    assert response.status_code == 201, response.json
    assert response.headers["ETag"] == 'W/"1"'
    assert canonical(as_stored(parse(response.data))) == canonical(example)

    stored = read_back(platform, example)
    assert stored["meta"]["versionId"] == "1"
    assert canonical(as_stored(stored)) == canonical(example)


def test_all_examples_in_one_transaction(platform: RawFhir) -> None:
    resources = with_prerequisites(EXAMPLES)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }
    response = platform.post("/fhir", bundle)
    assert response.status_code == 200, response.json
    statuses = [e["response"]["status"] for e in parse(response.data)["entry"]]
    assert all(s.startswith("201") for s in statuses), statuses
    for resource in resources:
        assert canonical(as_stored(read_back(platform, resource))) == canonical(resource)


def _has_decimals(name: str) -> bool:
    found: list[str] = []
    json.loads(_example_text(name), parse_float=lambda text: found.append(text))
    return bool(found)


# FHIR R4 says the precision of a decimal is significant: 20.00 stays 20.00, 1.00 stays 1.00 and
# -1.000000000000000000E+245 keeps every digit (the server parses decimals as Decimal, not float).
DECIMAL_EXAMPLES = [name for name in EXAMPLES if _has_decimals(name)]


@pytest.mark.parametrize("name", DECIMAL_EXAMPLES)
def test_decimal_precision_is_preserved(name: str, platform: RawFhir) -> None:
    """FHIR decimals keep their written precision: 1.00 is not 1.0 (R4 datatypes, decimal)."""
    *prerequisites, example = with_prerequisites([name])
    store(platform, prerequisites)
    assert platform.put(example).status_code == 201
    sent = canonical(parse(encode(example)), precise=True)
    assert sent == canonical(example, precise=True)  # the test's own encoding keeps the precision
    assert canonical(as_stored(read_back(platform, example)), precise=True) == sent
