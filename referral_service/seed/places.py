"""The fictional county 青山县 in the fictional city 云州市: townships, villages, organisations."""

from __future__ import annotations

from dataclasses import dataclass

COUNTY = "青山县"
CITY = "云州市"
# Region codes 620424-620429 are unassigned in Gansu (6204xx); the county and its neighbours use
# them so that no generated identity number can belong to a real person.
COUNTY_REGION_CODE = "620429"
NEIGHBOUR_REGION_CODES = ("620426", "620427", "620428")

INSURANCE_BUREAU = "qs-insurance-bureau"
HEALTH_COMMISSION = "qs-health-commission"
POVERTY_OFFICE = "qs-poverty-office"
COUNTY_HOSPITAL = "qs-county-hospital"
MCH_HOSPITAL = "qs-mch-hospital"
TCM_HOSPITAL = "qs-tcm-hospital"
CITY_HOSPITAL = "yz-city-hospital"

# (township, its five villages); the first is the county seat.
TOWNSHIPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("城关镇", ("王家庄村", "东关村", "西关村", "南河村", "北山村")),
    ("新集乡", ("新集村", "李家湾村", "张家坪村", "杏园村", "下河村")),
    ("石门镇", ("石门村", "刘家岔村", "陈家塬村", "红崖村", "上庄村")),
    ("柳树乡", ("柳树村", "杨家沟村", "赵家山村", "柳沟村", "水泉村")),
    ("河湾镇", ("河湾村", "何家坪村", "马家湾村", "中滩村", "河口村")),
    ("高庙乡", ("高庙村", "魏家堡村", "郭家台村", "东坡村", "阳洼村")),
    ("红土乡", ("红土村", "牛家川村", "孙家峪村", "阴洼村", "砖井村")),
    ("大坪乡", ("大坪村", "周家庄村", "徐家湾村", "榆树村", "梨园村")),
    ("马营镇", ("马营村", "吴家沟村", "朱家岔村", "石岘村", "堡子村")),
    ("杨家寺乡", ("杨家寺村", "胡家塬村", "高家山村", "后川村", "前进村")),
    ("清水乡", ("清水村", "罗家庄村", "蒋家湾村", "泉湾村", "新庄村")),
    ("南川乡", ("南川村", "田家坪村", "董家沟村", "窑洼村", "白杨村")),
)


def township_centre_id(township_no: int) -> str:
    """Id of the township health centre (乡镇卫生院) number 1-12."""
    return f"qs-th-{township_no:02d}"


def village_clinic_id(township_no: int, village_no: int) -> str:
    """Id of the village clinic (村卫生室) number 1-5 of a township."""
    return f"qs-vc-{township_no:02d}-{village_no:02d}"


@dataclass(frozen=True, slots=True)
class OrgSpec:
    """One organisation of the demo county."""

    id: str
    name: str
    district: str = COUNTY
    city: str = CITY
    facility_level: str | None = None
    kind: str | None = None
    capabilities: tuple[str, ...] = ()
    township: str | None = None
    parent_id: str | None = None


# Named organisations (other code and the docs refer to these ids).
NAMED_ORGANIZATIONS: tuple[OrgSpec, ...] = (
    OrgSpec(INSURANCE_BUREAU, "青山县医疗保障局", kind="insurer"),
    OrgSpec(HEALTH_COMMISSION, "青山县卫生健康局", kind="health-commission"),
    OrgSpec(POVERTY_OFFICE, "青山县乡村振兴局", kind="poverty-office"),
    OrgSpec(COUNTY_HOSPITAL, "青山县人民医院", facility_level="county", capabilities=("general",),
            township="城关镇"),
    OrgSpec(MCH_HOSPITAL, "青山县妇幼保健院", facility_level="county",
            capabilities=("obstetrics", "paediatrics"), township="城关镇"),
    OrgSpec(TCM_HOSPITAL, "青山县中医医院", facility_level="county", capabilities=("tcm",),
            township="城关镇"),
    OrgSpec(CITY_HOSPITAL, "云州市人民医院", district=CITY, facility_level="city",
            capabilities=("general", "obstetrics", "paediatrics")),
)


def organizations() -> list[OrgSpec]:
    """Every organisation, parents before children."""
    specs = list(NAMED_ORGANIZATIONS)
    for t_no, (township, _) in enumerate(TOWNSHIPS, start=1):
        specs.append(OrgSpec(
            township_centre_id(t_no), f"{township}卫生院", facility_level="township",
            capabilities=("general",), township=township, parent_id=COUNTY_HOSPITAL,
        ))
    for t_no, (township, villages) in enumerate(TOWNSHIPS, start=1):
        for v_no, village in enumerate(villages, start=1):
            specs.append(OrgSpec(
                village_clinic_id(t_no, v_no), f"{village}卫生室", facility_level="village",
                capabilities=("general",), township=township, parent_id=township_centre_id(t_no),
            ))
    return specs


# 统一社会信用代码 (GB 32100-2015) for public institutions: check-character alphabet and weights.
_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_ORG_CODE_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)  # 组织机构代码 (GB 11714-1997)


def unified_credit_code(region_code: str, serial: int) -> str:
    """A well-formed fictional unified social credit code (统一社会信用代码) of a public institution."""
    body = f"{43850000 + serial:08d}"
    check = 11 - sum(int(c) * w for c, w in zip(body, _ORG_CODE_WEIGHTS, strict=True)) % 11
    org_code = body + {10: "X", 11: "0"}.get(check, str(check))
    first17 = f"12{region_code}{org_code}"  # 1 = 机构编制, 2 = 事业单位
    total = sum(_USCC_CHARS.index(c) * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return first17 + _USCC_CHARS[(31 - total % 31) % 31]
