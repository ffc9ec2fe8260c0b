"""The JSON in fhir_profiles/: valid FHIR R4 shapes, one source of truth with codes.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.structuredefinition import StructureDefinition
from fhir.resources.R4B.valueset import ValueSet

from referral_service.fhir import codes, profiles
from referral_service.fhir.profiles import Conformance, ProfileLoadError

FILES = sorted(profiles.PROFILES_DIR.glob("*.json"))
MODELS: dict[str, Any] = {
    "CodeSystem": CodeSystem,
    "ValueSet": ValueSet,
    "StructureDefinition": StructureDefinition,
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_folder_holds_the_contract_definitions():
    names = {path.name for path in FILES}
    for system in codes.CODE_SYSTEMS:
        name = system.rsplit("/", 1)[-1]
        assert f"CodeSystem-{name}.json" in names
        assert f"ValueSet-{name}.json" in names
    for url in (
        codes.POVERTY_REGISTRATION_URL,
        codes.HOUSEHOLD_ANNUAL_INCOME_URL,
        codes.PATIENT_PROFILE_URL,
        codes.ORGANIZATION_PROFILE_URL,
        codes.ENCOUNTER_PROFILE_URL,
        codes.OBSERVATION_PROFILE_URL,
        codes.HOUSEHOLD_PROFILE_URL,
    ):
        assert f"StructureDefinition-{url.rsplit('/', 1)[-1]}.json" in names


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_every_file_parses_with_fhir_resources(path):
    resource = load(path)
    model = MODELS[resource["resourceType"]].model_validate(resource)
    assert model.id == resource["id"]


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_every_file_is_named_and_canonical(path):
    resource = load(path)
    kind = resource["resourceType"]
    assert path.name == f"{kind}-{resource['id']}.json"
    assert resource["url"] == f"{codes.BASE}/{kind}/{resource['id']}"
    assert resource["version"]
    assert resource["status"] == "active"
    assert resource["name"].isidentifier()


@pytest.mark.parametrize(
    "path", [p for p in FILES if p.name.startswith("CodeSystem-")], ids=lambda p: p.name
)
def test_every_concept_has_an_english_display_and_a_zh_designation(path):
    code_system = load(path)
    assert code_system["count"] == len(code_system["concept"])
    assert code_system["valueSet"] == code_system["url"].replace("/CodeSystem/", "/ValueSet/")
    for concept in code_system["concept"]:
        assert concept["display"].isascii()
        zh = [d for d in concept["designation"] if d["language"] == "zh-CN"]
        assert len(zh) == 1
        assert not zh[0]["value"].isascii()


@pytest.mark.parametrize("system", sorted(codes.CODE_SYSTEMS))
def test_codes_module_mirrors_the_code_systems(system):
    enum = codes.CODE_SYSTEMS[system]
    assert profiles.codes_of(system) == {member.value for member in enum}


def test_constraint_keys_in_the_json_are_exactly_the_implemented_ones():
    declared = {
        constraint["key"]
        for path in FILES
        if path.name.startswith("StructureDefinition-")
        for element in load(path)["differential"]["element"]
        for constraint in element.get("constraint", [])
    }
    assert declared == profiles.constraint_keys()


def test_all_conformance_resources_serves_every_file_as_a_copy():
    served = profiles.all_conformance_resources()
    assert sorted(r["url"] for r in served) == sorted(load(p)["url"] for p in FILES)
    served[0]["status"] = "retired"
    assert profiles.all_conformance_resources()[0]["status"] == "active"


def test_by_url_with_and_without_version():
    url = codes.FACILITY_LEVEL_SYSTEM
    plain = profiles.by_url(url)
    versioned = profiles.by_url(f"{url}|1.0.0")
    assert plain is not None
    assert plain["resourceType"] == "CodeSystem"
    assert versioned == plain
    assert profiles.by_url(f"{url}|9.9.9") is None
    assert profiles.by_url(f"{codes.BASE}/CodeSystem/nothing") is None


def test_display_in_english_and_chinese():
    assert profiles.display(codes.FACILITY_LEVEL_SYSTEM, "township") == "Township health centre"
    assert profiles.display(codes.FACILITY_LEVEL_SYSTEM, "township", "zh-CN") == "乡镇卫生院"
    assert profiles.display(codes.SETTLEMENT_COMPONENT_SYSTEM, "critical-illness", "zh") == (
        "大病保险支付"
    )
    assert profiles.display(codes.FACILITY_LEVEL_SYSTEM, "hamlet") is None


def copy_profiles(tmp_path: Path) -> Path:
    for path in FILES:
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    return tmp_path


def test_a_copy_of_the_folder_loads(tmp_path):
    store = Conformance.from_directory(copy_profiles(tmp_path))
    assert store.codes_of(codes.CHARGE_CLASS_SYSTEM) == {"A", "B", "C"}


def test_load_refuses_malformed_json_naming_the_file(tmp_path):
    folder = copy_profiles(tmp_path)
    (folder / "CodeSystem-broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ProfileLoadError, match=r"CodeSystem-broken\.json"):
        Conformance.from_directory(folder)


def test_load_refuses_a_duplicate_url(tmp_path):
    folder = copy_profiles(tmp_path)
    twin = load(folder / "CodeSystem-capability.json")
    twin["id"] = "capability-twin"
    (folder / "CodeSystem-capability-twin.json").write_text(json.dumps(twin), encoding="utf-8")
    with pytest.raises(ProfileLoadError, match="duplicate url"):
        Conformance.from_directory(folder)


def test_load_refuses_a_constraint_without_implementation(tmp_path):
    folder = copy_profiles(tmp_path)
    path = folder / "StructureDefinition-referral-encounter.json"
    sd = load(path)
    sd["differential"]["element"].insert(
        0,
        {
            "id": "Encounter",
            "path": "Encounter",
            "constraint": [
                {"key": "rs-enc-9", "severity": "error", "human": "x", "expression": "true"}
            ],
        },
    )
    path.write_text(json.dumps(sd), encoding="utf-8")
    with pytest.raises(ProfileLoadError, match="rs-enc-9"):
        Conformance.from_directory(folder)


def test_load_refuses_a_missing_folder(tmp_path):
    with pytest.raises(ProfileLoadError, match="not found"):
        Conformance.from_directory(tmp_path / "absent")
