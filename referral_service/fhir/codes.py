"""Code systems, codes and canonical URLs of the interface contract (DESIGN section 9)."""

# Our own code lists mirror fhir_profiles/CodeSystem-*.json (the source of truth); the unit
# test tests/unit/fhir_profiles/test_conformance_files.py holds them equal. Displays in English
# and zh-CN come from the JSON through referral_service.fhir.profiles.display().

from __future__ import annotations

from enum import StrEnum
from typing import Final

BASE: Final = "http://referral-service.example/fhir"


def code_system_url(name: str) -> str:
    """Return the canonical URL of our code system `name`."""
    return f"{BASE}/CodeSystem/{name}"


def value_set_url(name: str) -> str:
    """Return the canonical URL of our value set `name`."""
    return f"{BASE}/ValueSet/{name}"


def structure_definition_url(name: str) -> str:
    """Return the canonical URL of our StructureDefinition `name`."""
    return f"{BASE}/StructureDefinition/{name}"


# --- our code systems ---------------------------------------------------------------------

FACILITY_LEVEL_SYSTEM: Final = code_system_url("facility-level")
CAPABILITY_SYSTEM: Final = code_system_url("capability")
ORGANIZATION_KIND_SYSTEM: Final = code_system_url("organization-kind")
COVERAGE_TYPE_SYSTEM: Final = code_system_url("coverage-type")
CHARGE_CLASS_SYSTEM: Final = code_system_url("charge-class")
SETTLEMENT_COMPONENT_SYSTEM: Final = code_system_url("settlement-component")
REFERRAL_TYPE_SYSTEM: Final = code_system_url("referral-type")
OBSERVATION_SYSTEM: Final = code_system_url("observation")
REFERRAL_RULE_SYSTEM: Final = code_system_url("referral-rule")


class FacilityLevel(StrEnum):
    """Level of a health facility (医疗机构级别)."""

    VILLAGE = "village"  # 村卫生室
    TOWNSHIP = "township"  # 乡镇卫生院
    COUNTY = "county"  # 县级医院
    CITY = "city"  # 市级医院
    PROVINCE = "province"  # 省级医院


class Capability(StrEnum):
    """Clinical capability of a hospital (诊疗能力)."""

    GENERAL = "general"
    OBSTETRICS = "obstetrics"
    PAEDIATRICS = "paediatrics"
    TCM = "tcm"  # 中医


class OrganizationKind(StrEnum):
    """Kind of an organisation that is not a health facility."""

    INSURER = "insurer"  # 医疗保障局
    HEALTH_COMMISSION = "health-commission"  # 卫生健康委员会
    POVERTY_OFFICE = "poverty-office"  # 扶贫办公室


class CoverageType(StrEnum):
    """Type of insurance enrolment."""

    BASIC = "basic"  # 基本医疗保险


class ChargeClass(StrEnum):
    """Reimbursement class of a charge item (医保目录类别)."""

    A = "A"  # 甲类
    B = "B"  # 乙类
    C = "C"  # 丙类


class SettlementComponent(StrEnum):
    """Component of a one-stop settlement result (一站式结算分项)."""

    TOTAL = "total"
    ELIGIBLE = "eligible"
    BASIC_DEDUCTIBLE = "basic-deductible"  # 起付线
    BASIC_INSURANCE = "basic-insurance"  # 基本医保
    CRITICAL_ILLNESS = "critical-illness"  # 大病保险
    MEDICAL_ASSISTANCE = "medical-assistance"  # 医疗救助
    POVERTY_SAFETY_NET = "poverty-safety-net"  # 兜底保障
    CLASS_B_SELF_PAY = "class-b-self-pay"  # 乙类先行自付
    OUT_OF_LIST = "out-of-list"  # 目录外
    PATIENT_PAY = "patient-pay"  # 个人自付


class ReferralType(StrEnum):
    """Direction of a referral."""

    UP_REFERRAL = "up-referral"  # 上转
    DOWN_REFERRAL = "down-referral"  # 下转


class ObservationCode(StrEnum):
    """Observation codes of our own code system."""

    ACVPU = "acvpu"
    SUPPLEMENTAL_OXYGEN = "supplemental-oxygen"


class ReferralRule(StrEnum):
    """Rule ids of the default rule sets (a fragment: rule sets may add more)."""

    NEWS2_HIGH = "news2-high"
    NEWS2_MEDIUM = "news2-medium"
    COUNTY_ONLY_DX = "county-only-dx"
    INFANT_FEVER = "infant-fever"
    PREGNANT_ABNORMAL_VITALS = "pregnant-abnormal-vitals"
    REPEAT_VISITS = "repeat-visits"
    ELDERLY_WATCH = "elderly-watch"
    DEFAULT = "default"
    DOWN_REFERRAL_DX = "down-referral-dx"
    DOWN_REFERRAL_NONE = "down-referral-none"
    DOWN_REFERRAL_NO_CLINIC = "down-referral-no-clinic"


CODE_SYSTEMS: Final[dict[str, type[StrEnum]]] = {
    FACILITY_LEVEL_SYSTEM: FacilityLevel,
    CAPABILITY_SYSTEM: Capability,
    ORGANIZATION_KIND_SYSTEM: OrganizationKind,
    COVERAGE_TYPE_SYSTEM: CoverageType,
    CHARGE_CLASS_SYSTEM: ChargeClass,
    SETTLEMENT_COMPONENT_SYSTEM: SettlementComponent,
    REFERRAL_TYPE_SYSTEM: ReferralType,
    OBSERVATION_SYSTEM: ObservationCode,
    REFERRAL_RULE_SYSTEM: ReferralRule,
}

ACVPU_VALUES: Final = frozenset({"A", "C", "V", "P", "U"})
ACVPU_ALERT: Final = "A"

# --- identifiers, extensions, profiles ----------------------------------------------------

RESIDENT_ID_SYSTEM: Final = f"{BASE}/sid/resident-id"
POVERTY_REGISTRATION_URL: Final = structure_definition_url("poverty-registration")
HOUSEHOLD_ANNUAL_INCOME_URL: Final = structure_definition_url("household-annual-income")
PATIENT_PROFILE_URL: Final = structure_definition_url("referral-patient")
ORGANIZATION_PROFILE_URL: Final = structure_definition_url("referral-organization")
ENCOUNTER_PROFILE_URL: Final = structure_definition_url("referral-encounter")
OBSERVATION_PROFILE_URL: Final = structure_definition_url("referral-observation")
HOUSEHOLD_PROFILE_URL: Final = structure_definition_url("household")

CURRENCY: Final = "CNY"

# --- external code systems ----------------------------------------------------------------

LOINC_SYSTEM: Final = "http://loinc.org"
LOINC_RESPIRATORY_RATE: Final = "9279-1"
LOINC_HEART_RATE: Final = "8867-4"
LOINC_OXYGEN_SATURATION: Final = "59408-5"  # SpO2
LOINC_BODY_TEMPERATURE: Final = "8310-5"
LOINC_BLOOD_PRESSURE_PANEL: Final = "85354-9"
LOINC_SYSTOLIC_BP: Final = "8480-6"
LOINC_DIASTOLIC_BP: Final = "8462-4"
LOINC_PREGNANCY_STATUS: Final = "82810-3"

UCUM_SYSTEM: Final = "http://unitsofmeasure.org"
UCUM_PER_MINUTE: Final = "/min"
UCUM_PERCENT: Final = "%"
UCUM_CELSIUS: Final = "Cel"
UCUM_MM_HG: Final = "mm[Hg]"

SNOMED_SYSTEM: Final = "http://snomed.info/sct"
SNOMED_PREGNANT: Final = "77386006"
SNOMED_NOT_PREGNANT: Final = "60001007"
REFERRAL_CATEGORY: Final = "3457005"  # SNOMED "Patient referral", ServiceRequest.category

ICD10_SYSTEM: Final = "http://hl7.org/fhir/sid/icd-10"

V3_ACT_CODE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ENCOUNTER_CLASS_AMBULATORY: Final = "AMB"
ENCOUNTER_CLASS_INPATIENT: Final = "IMP"
ENCOUNTER_CLASS_EMERGENCY: Final = "EMER"

DISCHARGE_DISPOSITION_SYSTEM: Final = (
    "http://terminology.hl7.org/CodeSystem/discharge-disposition"
)
DISCHARGE_HOME: Final = "home"
DISCHARGE_OTHER_HCF: Final = "other-hcf"

CLAIM_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/claim-type"
CLAIM_TYPE_INSTITUTIONAL: Final = "institutional"  # inpatient
CLAIM_TYPE_PROFESSIONAL: Final = "professional"  # outpatient

CONDITION_CLINICAL_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VER_STATUS_SYSTEM: Final = (
    "http://terminology.hl7.org/CodeSystem/condition-ver-status"
)


class RequestPriority(StrEnum):
    """FHIR request-priority, used for ServiceRequest.priority (urgency of a referral)."""

    ROUTINE = "routine"
    URGENT = "urgent"
    ASAP = "asap"
    STAT = "stat"
