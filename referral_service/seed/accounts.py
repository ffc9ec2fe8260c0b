"""Demo accounts (DESIGN section 9): API clients and web users, as data."""

from __future__ import annotations

from dataclasses import dataclass

from .places import (
    COUNTY_HOSPITAL,
    HEALTH_COMMISSION,
    INSURANCE_BUREAU,
    POVERTY_OFFICE,
    township_centre_id,
)

# Published in the README for the demo; they exist only when the demo county is loaded.
DEMO_SECRET = "demo-secret"  # noqa: S105
DEMO_PASSWORD = "demo-password"  # noqa: S105

HIS_SCOPES = " ".join((
    "system/Patient.cruds", "system/Encounter.cruds", "system/Observation.cruds",
    "system/Condition.cruds", "system/ServiceRequest.cruds", "system/Task.cruds",
    "system/CarePlan.cruds", "system/GuidanceResponse.rs", "system/EpisodeOfCare.cruds",
    "system/Coverage.cruds", "system/Group.cruds", "system/Organization.rs",
    "system/Practitioner.cruds", "system/PractitionerRole.cruds", "system/Claim.crs",
    "system/ClaimResponse.rs", "system/ExplanationOfBenefit.rs", "system/StructureDefinition.rs",
    "system/CodeSystem.rs", "system/ValueSet.rs",
))
INSURANCE_SCOPES = " ".join((
    "system/Patient.rs", "system/Coverage.rs", "system/Group.rs", "system/Organization.rs",
    "system/Claim.rs", "system/ClaimResponse.rs", "system/ExplanationOfBenefit.rs",
    "system/PaymentReconciliation.cruds", "system/Flag.rs", "system/StructureDefinition.rs",
    "system/CodeSystem.rs", "system/ValueSet.rs",
))
PLATFORM_SCOPES = "system/*.cruds"


@dataclass(frozen=True, slots=True)
class DemoClient:
    """An OAuth2 client of the demo county (secret: DEMO_SECRET)."""

    client_id: str
    organization_id: str
    scopes: str
    name: str


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A web user of the demo county (password: DEMO_PASSWORD)."""

    username: str
    role: str
    organization_id: str
    display_name: str


DEMO_CLIENTS: tuple[DemoClient, ...] = (
    DemoClient("county-his", COUNTY_HOSPITAL, HIS_SCOPES, "青山县人民医院 HIS"),
    DemoClient("township-his", township_centre_id(1), HIS_SCOPES, "城关镇卫生院 HIS"),
    DemoClient("township2-his", township_centre_id(2), HIS_SCOPES, "新集乡卫生院 HIS"),
    DemoClient("insurance-office", INSURANCE_BUREAU, INSURANCE_SCOPES, "青山县医疗保障局"),
    DemoClient("county-platform", HEALTH_COMMISSION, PLATFORM_SCOPES, "青山县全民健康信息平台"),
)

DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("clinic", "clinic", township_centre_id(1), "城关镇卫生院 门诊"),
    DemoUser("hospital", "hospital", COUNTY_HOSPITAL, "青山县人民医院 转诊办"),
    DemoUser("insurer", "insurer", INSURANCE_BUREAU, "青山县医疗保障局 结算科"),
    DemoUser("monitor", "monitor", POVERTY_OFFICE, "青山县乡村振兴局 监测股"),
    DemoUser("admin", "admin", HEALTH_COMMISSION, "青山县卫生健康局 信息中心"),
)
