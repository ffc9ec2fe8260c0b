"""Each profile rule with a passing and a failing case, and many problems reported at once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from referral_service.fhir import codes, profiles
from referral_service.fhir.profiles import ProfileIssue, has_errors
from tests.unit.fhir_profiles.samples import LOINC, at, check, coding, errors, quantity

RID = codes.RESIDENT_ID_SYSTEM


def only(issues: list[ProfileIssue], expression: str, code: str, severity: str = "error"):
    """Assert exactly one issue, at `expression` with `code`, and return it."""
    assert [(i.severity, i.code, i.expression) for i in issues] == [(severity, code, expression)]
    return issues[0]


@pytest.mark.parametrize(
    "kind", ["patient", "organization", "encounter", "observation", "blood_pressure", "household"]
)
def test_valid_samples_have_no_issue(make, kind):
    assert check(make(kind)) == []


# --- Patient ---------------------------------------------------------------------------------


def test_patient_without_identity_number_is_fine(make):
    assert check(make("patient", identifier=None)) == []


def test_lower_case_check_character_is_accepted(make):
    patient = make("patient", identifier=[{"system": RID, "value": "11010519491231002x"}])
    assert check(patient) == []


def test_wrong_check_digit(make):
    patient = make("patient", identifier=[{"system": RID, "value": "110105194912310021"}])
    issue = only(check(patient), "Patient.identifier[0].value", "value")
    assert "check character" in issue.message


def test_identity_number_must_match_birth_date(make):
    issue = only(check(make("patient", birthDate="1949-12-30")), "Patient.identifier[0].value",
                 "business-rule")
    assert "1949-12-31" in issue.message
    assert "1949-12-30" in issue.message


@pytest.mark.parametrize(("birth_date", "ok"), [("1949", True), ("1949-12", True), ("1950", False)])
def test_partial_birth_date_is_compared_as_far_as_it_goes(make, birth_date, ok):
    issues = check(make("patient", birthDate=birth_date))
    if ok:
        assert issues == []
    else:
        only(issues, "Patient.identifier[0].value", "business-rule")


def test_identity_number_must_match_gender(make):
    issue = only(check(make("patient", gender="male")), "Patient.identifier[0].value",
                 "business-rule")
    assert "female" in issue.message


@pytest.mark.parametrize("gender", ["other", "unknown"])
def test_other_and_unknown_gender_skip_the_sex_check(make, gender):
    assert check(make("patient", gender=gender)) == []


def test_legacy_fifteen_digit_number_is_refused(make):
    patient = make("patient", identifier=[{"system": RID, "value": "110105491231002"}])
    issue = only(check(patient), "Patient.identifier[0].value", "value")
    assert "15-digit" in issue.message


def test_other_identifier_systems_are_not_checked(make):
    patient = make("patient", identifier=[{"system": "urn:oid:1.2.3", "value": "123"}])
    assert check(patient) == []


def test_at_most_one_identity_number(make):
    patient = make("patient")
    patient["identifier"].append({"system": RID, "value": "11010519491231002X"})
    issue = only(check(patient), "Patient.identifier", "structure")
    assert "at most 1" in issue.message


def test_identity_number_identifier_needs_a_value(make):
    patient = make("patient", identifier=[{"system": RID}])
    only(check(patient), "Patient.identifier[0].value", "required")


def test_patient_gender_is_a_required_binding(make):
    patient = make("patient", gender="f", identifier=None)
    issue = only(check(patient), "Patient.gender", "code-invalid")
    assert "AdministrativeGender" in issue.message


def test_missing_insured_region_is_a_warning(make):
    only(check(make("patient", address=None)), "Patient.address", "required", "warning")
    blank = make("patient", address=[{"district": "  "}])
    only(check(blank), "Patient.address[0].district", "required", "warning")


def test_poverty_registration_start_must_not_follow_end(make):
    patient = make("patient")
    patient["extension"][0]["valuePeriod"] = {"start": "2021-01-01", "end": "2020-01-01"}
    only(check(patient), "Patient.extension[0].valuePeriod", "value")


def test_poverty_registration_needs_a_start(make):
    patient = make("patient")
    patient["extension"][0]["valuePeriod"] = {"end": "2020-01-01"}
    only(check(patient), "Patient.extension[0].valuePeriod.start", "required")


def test_poverty_registration_open_period_is_fine(make):
    patient = make("patient")
    patient["extension"][0]["valuePeriod"] = {"start": "2018-01-01"}
    assert check(patient) == []


def test_poverty_registration_value_type(make):
    patient = make("patient")
    patient["extension"][0] = {"url": codes.POVERTY_REGISTRATION_URL, "valueString": "yes"}
    issue = only(check(patient), "Patient.extension[0].valueString", "value")
    assert "valuePeriod" in issue.message


def test_poverty_registration_needs_a_value(make):
    patient = make("patient")
    patient["extension"][0] = {"url": codes.POVERTY_REGISTRATION_URL}
    only(check(patient), "Patient.extension[0].value[x]", "required")


def test_poverty_registration_only_on_patient(make):
    encounter = make("encounter")
    encounter["extension"] = [
        {"url": codes.POVERTY_REGISTRATION_URL, "valuePeriod": {"start": "2018-01-01"}}
    ]
    issue = only(check(encounter), "Encounter.extension[0]", "structure")
    assert "Patient" in issue.message


def test_unknown_extension_of_ours_is_refused(make):
    patient = make("patient")
    patient["extension"].append(
        {"url": f"{codes.BASE}/StructureDefinition/poverty-registraton", "valueBoolean": True}
    )
    only(check(patient), "Patient.extension[1].url", "structure")


def test_foreign_extensions_are_left_alone(make):
    patient = make("patient")
    patient["extension"].append({"url": "http://example.org/x", "valueBoolean": True})
    assert check(patient) == []


def test_identity_number_in_a_logical_reference_is_checked(make):
    encounter = make("encounter", subject={"identifier": {"system": RID, "value": "123"}})
    only(check(encounter), "Encounter.subject.identifier.value", "value")


# --- Organization ----------------------------------------------------------------------------


def test_insurer_has_a_kind_and_no_level(make):
    insurer = make(
        "organization", type=[coding(codes.ORGANIZATION_KIND_SYSTEM, "insurer")], name="医保局"
    )
    assert check(insurer) == []


def test_organization_needs_a_level_or_a_kind(make):
    issue = only(check(make("organization", type=None)), "Organization.type", "required")
    assert "facility-level" in issue.message


def test_organization_cannot_have_level_and_kind(make):
    organization = make("organization")
    organization["type"][0]["coding"].append(
        {"system": codes.ORGANIZATION_KIND_SYSTEM, "code": "insurer"}
    )
    only(check(organization), "Organization.type[0].coding[1]", "business-rule")


def test_health_facility_has_exactly_one_level(make):
    organization = make("organization")
    organization["type"].append(coding(codes.FACILITY_LEVEL_SYSTEM, "township"))
    issue = only(check(organization), "Organization.type[2].coding[0]", "business-rule")
    assert "exactly one" in issue.message


def test_capability_only_on_a_health_facility(make):
    organization = make(
        "organization",
        type=[
            coding(codes.ORGANIZATION_KIND_SYSTEM, "health-commission"),
            coding(codes.CAPABILITY_SYSTEM, "obstetrics"),
        ],
    )
    only(check(organization), "Organization.type[1].coding[0]", "business-rule")


def test_facility_level_code_must_exist(make):
    organization = make("organization", type=[coding(codes.FACILITY_LEVEL_SYSTEM, "hamlet")])
    issue = only(check(organization), "Organization.type[0].coding[0].code", "code-invalid")
    assert "hamlet" in issue.message


def test_organization_needs_an_address(make):
    only(check(make("organization", address=None)), "Organization.address", "required")


def test_organization_needs_a_district(make):
    organization = make("organization", address=[{"city": "云州市"}])
    only(check(organization), "Organization.address[0].district", "required")


# --- Encounter -------------------------------------------------------------------------------


@pytest.mark.parametrize("element", ["subject", "serviceProvider"])
def test_encounter_required_elements(make, element):
    issue = only(check(make("encounter", **{element: None})), f"Encounter.{element}", "required")
    assert element in issue.message


@pytest.mark.parametrize("code", ["AMB", "IMP", "EMER", "VR"])
def test_common_encounter_classes(make, code):
    encounter_class = {"system": codes.V3_ACT_CODE_SYSTEM, "code": code}
    assert check(make("encounter", **{"class": encounter_class})) == []


def test_encounter_class_code_must_be_an_encounter_code(make):
    encounter = make("encounter", **{"class": {"system": codes.V3_ACT_CODE_SYSTEM, "code": "OUT"}})
    only(check(encounter), "Encounter.class.code", "code-invalid")


def test_encounter_class_system_is_fixed(make):
    old_system = {"system": "http://hl7.org/fhir/v3/ActCode", "code": "AMB"}
    encounter = make("encounter", **{"class": old_system})
    issue = only(check(encounter), "Encounter.class.system", "value")
    assert codes.V3_ACT_CODE_SYSTEM in issue.message


def test_encounter_class_needs_a_system(make):
    encounter = make("encounter", **{"class": {"code": "AMB"}})
    only(check(encounter), "Encounter.class.system", "required")


def test_encounter_status_is_a_required_binding(make):
    only(check(make("encounter", status="done")), "Encounter.status", "code-invalid")


def test_discharge_disposition_codes(make):
    home = make("encounter", hospitalization={
        "dischargeDisposition": coding(codes.DISCHARGE_DISPOSITION_SYSTEM, "home")})
    assert check(home) == []
    bad = make("encounter", hospitalization={
        "dischargeDisposition": coding(codes.DISCHARGE_DISPOSITION_SYSTEM, "house")})
    only(check(bad), "Encounter.hospitalization.dischargeDisposition.coding[0].code",
         "code-invalid")


# --- Observation -----------------------------------------------------------------------------


def vital(make, loinc: str, value, unit: str):
    return make("observation", code=coding(LOINC, loinc), valueQuantity=quantity(value, unit))


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "ok"),
    [
        (codes.LOINC_RESPIRATORY_RATE, 0, "/min", True),
        (codes.LOINC_RESPIRATORY_RATE, -1, "/min", False),
        (codes.LOINC_HEART_RATE, 180, "/min", True),
        (codes.LOINC_HEART_RATE, -0.5, "/min", False),
        (codes.LOINC_OXYGEN_SATURATION, 0, "%", True),
        (codes.LOINC_OXYGEN_SATURATION, 100, "%", True),
        (codes.LOINC_OXYGEN_SATURATION, 100.1, "%", False),
        (codes.LOINC_OXYGEN_SATURATION, -1, "%", False),
        (codes.LOINC_BODY_TEMPERATURE, 25, "Cel", True),
        (codes.LOINC_BODY_TEMPERATURE, 45, "Cel", True),
        (codes.LOINC_BODY_TEMPERATURE, 24.9, "Cel", False),
        (codes.LOINC_BODY_TEMPERATURE, 45.1, "Cel", False),
        (codes.LOINC_SYSTOLIC_BP, 120, "mm[Hg]", True),
        (codes.LOINC_DIASTOLIC_BP, -5, "mm[Hg]", False),
    ],
)
def test_vital_sign_plausibility(make, loinc, value, unit, ok):
    issues = check(vital(make, loinc, value, unit))
    if ok:
        assert issues == []
    else:
        issue = only(issues, "Observation.valueQuantity.value", "value")
        assert "implausible" in issue.message


def test_vital_sign_unit_must_be_ucum(make):
    issue = only(check(vital(make, codes.LOINC_HEART_RATE, 72, "bpm")),
                 "Observation.valueQuantity.code", "value")
    assert "/min" in issue.message


def test_temperature_in_fahrenheit_is_a_unit_error_only(make):
    observation = vital(make, codes.LOINC_BODY_TEMPERATURE, 98.6, "[degF]")
    only(check(observation), "Observation.valueQuantity.code", "value")


def test_vital_sign_unit_system_must_be_ucum(make):
    observation = vital(make, codes.LOINC_OXYGEN_SATURATION, 97, "%")
    observation["valueQuantity"]["system"] = "http://example.org/units"
    only(check(observation), "Observation.valueQuantity.system", "value")


def test_vital_sign_needs_a_quantity(make):
    observation = make("observation", valueQuantity=None, valueString="72")
    issue = only(check(observation), "Observation.valueString", "value")
    assert "valueQuantity" in issue.message


def test_vital_sign_needs_a_value_or_a_reason(make):
    only(check(make("observation", valueQuantity=None)), "Observation.value[x]", "required")
    absent = make("observation", valueQuantity=None, dataAbsentReason=coding(
        "http://terminology.hl7.org/CodeSystem/data-absent-reason", "not-performed"))
    assert check(absent) == []


def test_quantity_needs_a_number(make):
    observation = make("observation")
    del observation["valueQuantity"]["value"]
    only(check(observation), "Observation.valueQuantity.value", "required")


def test_values_from_model_dump_are_read_as_decimals(make):
    observation = vital(make, codes.LOINC_OXYGEN_SATURATION, Decimal("100.5"), "%")
    only(profiles.validate(observation), "Observation.valueQuantity.value", "value")


def test_blood_pressure_panel_needs_both_components(make):
    panel = make("blood_pressure")
    del panel["component"][1]
    issue = only(check(panel), "Observation.component", "required")
    assert codes.LOINC_DIASTOLIC_BP in issue.message


def test_blood_pressure_component_plausibility(make):
    panel = make("blood_pressure")
    panel["component"][0]["valueQuantity"]["value"] = -10
    only(check(panel), "Observation.component[0].valueQuantity.value", "value")


def test_blood_pressure_component_unit(make):
    panel = make("blood_pressure")
    panel["component"][1]["valueQuantity"] = quantity(10.7, "kPa")
    only(check(panel), "Observation.component[1].valueQuantity.code", "value")


def test_blood_pressure_component_needs_a_value(make):
    panel = make("blood_pressure")
    del panel["component"][1]["valueQuantity"]
    only(check(panel), "Observation.component[1].value[x]", "required")


def test_systolic_below_diastolic_is_a_warning(make):
    panel = make("blood_pressure")
    panel["component"][0]["valueQuantity"]["value"] = 70
    issues = check(panel)
    only(issues, "Observation.component[0].valueQuantity.value", "business-rule", "warning")
    assert not has_errors(issues)


@pytest.mark.parametrize(("value", "ok"), [("A", True), ("C", True), ("U", True), ("X", False),
                                           ("alert", False)])
def test_acvpu_values(make, value, ok):
    observation = make("observation", code=coding(codes.OBSERVATION_SYSTEM, "acvpu"),
                       valueQuantity=None, valueString=value)
    issues = check(observation)
    if ok:
        assert issues == []
    else:
        only(issues, "Observation.valueString", "value")


def test_acvpu_needs_a_string(make):
    observation = make("observation", code=coding(codes.OBSERVATION_SYSTEM, "acvpu"),
                       valueQuantity=None, valueBoolean=True)
    only(check(observation), "Observation.valueBoolean", "value")


def test_supplemental_oxygen_is_a_boolean(make):
    good = make("observation", code=coding(codes.OBSERVATION_SYSTEM, "supplemental-oxygen"),
                valueQuantity=None, valueBoolean=False)
    assert check(good) == []
    bad = make("observation", code=coding(codes.OBSERVATION_SYSTEM, "supplemental-oxygen"),
               valueQuantity=None, valueString="no")
    only(check(bad), "Observation.valueString", "value")


def test_pregnancy_status_is_a_concept(make):
    pregnant = coding(codes.SNOMED_SYSTEM, codes.SNOMED_PREGNANT)
    good = make("observation", code=coding(LOINC, codes.LOINC_PREGNANCY_STATUS),
                valueQuantity=None, valueCodeableConcept=pregnant)
    assert check(good) == []
    bad = make("observation", code=coding(LOINC, codes.LOINC_PREGNANCY_STATUS),
               valueQuantity=None, valueBoolean=True)
    only(check(bad), "Observation.valueBoolean", "value")


def test_unknown_observation_code_of_ours(make):
    observation = make("observation", code=coding(codes.OBSERVATION_SYSTEM, "gcs"),
                       valueQuantity=None, valueInteger=15)
    only(check(observation), "Observation.code.coding[0].code", "code-invalid")


def test_other_observations_are_not_constrained(make):
    glucose = make("observation", code=coding(LOINC, "2339-0"), valueQuantity=None,
                   valueString="normal")
    assert check(glucose) == []


def test_observation_needs_a_subject(make):
    only(check(make("observation", subject=None)), "Observation.subject", "required")


def test_observation_status_is_a_required_binding(make):
    only(check(make("observation", status="done")), "Observation.status", "code-invalid")


# --- Group (household) -----------------------------------------------------------------------


def test_household_type_and_actual_are_fixed(make):
    issues = check(make("household", type="animal", actual=False))
    assert [(i.code, i.expression) for i in issues] == [
        ("value", "Group.type"),
        ("value", "Group.actual"),
    ]
    assert issues[0].message == 'Group.type must be "person", not "animal".'


def test_household_income_in_cny(make):
    household = make("household")
    household["extension"][0]["valueMoney"]["currency"] = "USD"
    only(check(household), "Group.extension[0].valueMoney.currency", "value")


def test_household_income_not_negative(make):
    household = make("household")
    household["extension"][0]["valueMoney"]["value"] = -1
    only(check(household), "Group.extension[0].valueMoney.value", "value")


def test_household_has_one_income(make):
    household = make("household")
    household["extension"].append(dict(household["extension"][0]))
    only(check(household), "Group.extension", "structure")


def test_group_type_is_a_required_binding(make):
    issues = check(make("household", type="family"))
    assert ("code-invalid", "Group.type") in [(i.code, i.expression) for i in issues]


# --- codings of our code systems anywhere --------------------------------------------------


def claim(category: str) -> dict:
    return {
        "resourceType": "Claim",
        "status": "active",
        "type": coding(codes.CLAIM_TYPE_SYSTEM, "institutional"),
        "use": "claim",
        "patient": {"reference": "Patient/p1"},
        "created": "2024-03-05",
        "provider": {"reference": "Organization/o1"},
        "priority": coding("http://terminology.hl7.org/CodeSystem/processpriority", "normal"),
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/c1"}}],
        "item": [
            {
                "sequence": 1,
                "category": coding(codes.CHARGE_CLASS_SYSTEM, category),
                "productOrService": {"text": "bed"},
                "net": {"value": 100, "currency": "CNY"},
            }
        ],
    }


def test_charge_class_codes():
    assert check(claim("B")) == []
    issue = only(check(claim("D")), "Claim.item[0].category.coding[0].code", "code-invalid")
    assert "charge-class" in issue.message


def test_claim_type_codes():
    bad = claim("A")
    bad["type"] = coding(codes.CLAIM_TYPE_SYSTEM, "inpatient")
    only(check(bad), "Claim.type.coding[0].code", "code-invalid")


def test_a_coding_of_ours_needs_a_code():
    bad = claim("A")
    bad["item"][0]["category"] = {"coding": [{"system": codes.CHARGE_CLASS_SYSTEM}]}
    only(check(bad), "Claim.item[0].category.coding[0].code", "required")


def test_unknown_code_system_of_ours():
    bad = claim("A")
    bad["item"][0]["category"] = coding(f"{codes.BASE}/CodeSystem/charge-klass", "A")
    only(check(bad), "Claim.item[0].category.coding[0].system", "code-invalid")


def guidance(rule: str) -> dict:
    return {
        "resourceType": "GuidanceResponse",
        "moduleCanonical": f"{codes.BASE}/rules/default|1",
        "status": "success",
        "subject": {"reference": "Patient/p1"},
        "reasonCode": [coding(codes.REFERRAL_RULE_SYSTEM, rule)],
    }


def test_referral_rule_ids_are_an_open_fragment():
    assert check(guidance("news2-high")) == []
    only(check(guidance("local-rule-7")), "GuidanceResponse.reasonCode[0].coding[0].code",
         "code-invalid", "warning")


@pytest.mark.parametrize(
    "code", ["I63.9", "I63", "J18.900x001", "A17.0+", "G01*", "I639", "i63.9", "I63.9\u2020"]
)
def test_icd10_codes_pass(code: str) -> None:
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/p1"},
        "code": coding(codes.ICD10_SYSTEM, code),
    }
    assert check(condition) == []


@pytest.mark.parametrize("code", ["stroke", "ZZZ", "I63.", "I6", "63.9", "I63 9"])
def test_icd10_codes_of_another_shape_are_errors(code: str) -> None:
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/p1"},
        "code": coding(codes.ICD10_SYSTEM, code),
    }
    only(check(condition), "Condition.code.coding[0].code", "code-invalid", "error")


# --- FHIR's required bindings that fhir.resources lets through ------------------------------

REF = {"reference": "Patient/p1"}
ORG = {"reference": "Organization/o1"}
CONCEPT = {"text": "x"}
MINIMAL: dict[str, dict[str, Any]] = {
    "Coverage": {"status": "active", "beneficiary": REF, "payor": [ORG]},
    "ServiceRequest": {"status": "draft", "intent": "proposal", "priority": "urgent",
                       "subject": REF},
    "Task": {"status": "requested", "intent": "order", "priority": "stat"},
    "CarePlan": {"status": "active", "intent": "plan", "subject": REF},
    "ClaimResponse": {"status": "active", "type": CONCEPT, "use": "claim", "patient": REF,
                      "created": "2024-03-05", "insurer": ORG, "outcome": "complete"},
    "ExplanationOfBenefit": {
        "status": "active", "type": CONCEPT, "use": "claim", "patient": REF,
        "created": "2024-03-05", "insurer": ORG, "provider": ORG, "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"reference": "Coverage/c1"}}],
    },
    "EpisodeOfCare": {"status": "active", "patient": REF},
    "GuidanceResponse": {"moduleUri": "urn:x", "status": "success"},
    "Flag": {"status": "active", "code": CONCEPT, "subject": REF},
    "PaymentReconciliation": {"status": "active", "created": "2024-03-05",
                              "paymentDate": "2024-03-06",
                              "paymentAmount": {"value": 1, "currency": "CNY"},
                              "outcome": "complete"},
    "Claim": claim("A"),
}
BAD_CODES = [
    ("Coverage", "status"), ("ServiceRequest", "status"), ("ServiceRequest", "intent"),
    ("ServiceRequest", "priority"), ("Task", "status"), ("Task", "intent"),
    ("CarePlan", "status"), ("CarePlan", "intent"), ("Claim", "status"), ("Claim", "use"),
    ("ClaimResponse", "status"), ("ClaimResponse", "outcome"),
    ("ExplanationOfBenefit", "status"), ("ExplanationOfBenefit", "outcome"),
    ("EpisodeOfCare", "status"), ("GuidanceResponse", "status"), ("Flag", "status"),
    ("PaymentReconciliation", "status"), ("PaymentReconciliation", "outcome"),
]


def minimal(resource_type: str) -> dict:
    body = dict(MINIMAL[resource_type])
    body["resourceType"] = resource_type
    return body


@pytest.mark.parametrize("resource_type", sorted(MINIMAL))
def test_minimal_resources_pass(resource_type):
    assert check(minimal(resource_type)) == []


@pytest.mark.parametrize(("resource_type", "element"), BAD_CODES)
def test_required_status_codes(resource_type, element):
    resource = minimal(resource_type)
    resource[element] = "bogus"
    issue = only(check(resource), f"{resource_type}.{element}", "code-invalid")
    assert "'bogus'" in issue.message


def test_care_plan_activity_status():
    plan = minimal("CarePlan")
    plan["activity"] = [{"detail": {"status": "later"}}]
    only(check(plan), "CarePlan.activity[0].detail.status", "code-invalid")


def condition(**elements) -> dict:
    return {"resourceType": "Condition", "subject": REF, **elements}


def test_condition_status_codes():
    active = coding(codes.CONDITION_CLINICAL_SYSTEM, "active")
    confirmed = coding(codes.CONDITION_VER_STATUS_SYSTEM, "confirmed")
    assert check(condition(clinicalStatus=active, verificationStatus=confirmed)) == []
    wrong = coding(codes.CONDITION_CLINICAL_SYSTEM, "current")
    only(check(condition(clinicalStatus=wrong)), "Condition.clinicalStatus.coding[0].code",
         "code-invalid")
    only(check(condition(verificationStatus=CONCEPT)), "Condition.verificationStatus",
         "code-invalid")


def test_condition_invariants():
    active = coding(codes.CONDITION_CLINICAL_SYSTEM, "active")
    resolved = coding(codes.CONDITION_CLINICAL_SYSTEM, "resolved")
    erroneous = coding(codes.CONDITION_VER_STATUS_SYSTEM, "entered-in-error")
    assert check(condition(clinicalStatus=resolved, abatementDateTime="2024-01-01")) == []
    only(check(condition(clinicalStatus=active, abatementDateTime="2024-01-01")),
         "Condition.clinicalStatus", "invariant")
    only(check(condition(clinicalStatus=active, verificationStatus=erroneous)),
         "Condition.clinicalStatus", "invariant")


# --- many problems at once, nested resources ------------------------------------------------


def test_all_problems_are_reported_at_once(make):
    patient = make(
        "patient",
        gender="male",
        birthDate="1950-01-01",
        address=None,
        identifier=[
            {"system": RID, "value": "11010519491231002X"},
            {"system": RID, "value": "110105491231002"},
        ],
    )
    patient["extension"][0]["valuePeriod"] = {"start": "2021-01-01", "end": "2020-01-01"}
    issues = check(patient)
    assert sorted((i.severity, i.code, i.expression) for i in issues) == sorted([
        ("error", "structure", "Patient.identifier"),
        ("error", "business-rule", "Patient.identifier[0].value"),
        ("error", "business-rule", "Patient.identifier[0].value"),
        ("error", "value", "Patient.identifier[1].value"),
        ("warning", "required", "Patient.address"),
        ("error", "value", "Patient.extension[0].valuePeriod"),
    ])
    assert len(errors(issues)) == 5
    assert has_errors(issues)


def test_several_elements_of_one_resource(make):
    observation = make("blood_pressure", status="done", subject=None)
    observation["component"][0]["valueQuantity"] = quantity(-1, "mmHg")
    observation["component"][1]["valueQuantity"]["value"] = -2
    expressions = {i.expression for i in check(observation)}
    assert expressions == {
        "Observation.subject",
        "Observation.status",
        "Observation.component[0].valueQuantity.code",
        "Observation.component[1].valueQuantity.value",
    }


def test_bundle_entries_are_checked_with_their_path(make):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": make("patient", gender="male"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": make("organization", address=None),
             "request": {"method": "POST", "url": "Organization"}},
            {"resource": make("encounter"), "request": {"method": "POST", "url": "Encounter"}},
        ],
    }
    issues = check(bundle)
    assert [(i.code, i.expression) for i in issues] == [
        ("business-rule", "Bundle.entry[0].resource.identifier[0].value"),
        ("required", "Bundle.entry[1].resource.address"),
    ]


def test_contained_resources_are_checked(make):
    request = minimal("ServiceRequest")
    request["contained"] = [make("patient", id="p", gender="male")]
    request["subject"] = {"reference": "#p"}
    issues = check(request)
    assert at(issues, "ServiceRequest.contained[0].identifier[0].value")
    assert len(issues) == 1


def test_model_dump_dates_are_read(make):
    from fhir.resources.R4B.patient import Patient

    dumped = Patient.model_validate(make("patient", gender="male")).model_dump()
    issues = profiles.validate(dumped)
    only(issues, "Patient.identifier[0].value", "business-rule")


def test_resource_without_type():
    only(profiles.validate({}), "resourceType", "structure")
