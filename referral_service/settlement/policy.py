"""Settlement policies (结算政策): versioned data files, their validation and the registry."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import yaml

from referral_service.settlement.errors import NoPolicyError, PolicyError

FACILITY_LEVELS: Final[tuple[str, ...]] = ("village", "township", "county", "city", "province")
POLICY_FILE_PATTERNS: Final[tuple[str, ...]] = ("*.yaml", "*.yml")

_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
_CENT: Final = Decimal("0.01")
_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class LevelTable:
    """One value per facility level (机构级别); None where the policy has none."""

    village: Decimal | None = None
    township: Decimal | None = None
    county: Decimal | None = None
    city: Decimal | None = None
    province: Decimal | None = None

    def get(self, level: str) -> Decimal | None:
        """Value at `level`; None when the policy has none there or the level is unknown."""
        if level not in FACILITY_LEVELS:
            return None
        value: Decimal | None = getattr(self, level)
        return value

    def levels(self) -> tuple[str, ...]:
        """Levels that have a value, lowest first."""
        return tuple(level for level in FACILITY_LEVELS if getattr(self, level) is not None)

    def to_dict(self) -> dict[str, str]:
        """Levels that have a value, as exact decimal strings."""
        return {level: str(getattr(self, level)) for level in self.levels()}


@dataclass(frozen=True, slots=True)
class Band:
    """Critical-illness band over the cumulative amount above the threshold; `upper` None = open."""

    lower: Decimal
    upper: Decimal | None
    ratio: Decimal


@dataclass(frozen=True, slots=True)
class InpatientBasic:
    """Basic insurance for inpatient stays (住院统筹); no entry at a level = inpatient refused there."""

    deductible: LevelTable
    ratio: LevelTable
    yearly_cap: Decimal | None


@dataclass(frozen=True, slots=True)
class OutpatientBasic:
    """Basic insurance for outpatient visits (门诊统筹); no entry at a level = ratio 0."""

    ratio: LevelTable
    yearly_cap: Decimal | None


@dataclass(frozen=True, slots=True)
class BasicInsurance:
    """Basic medical insurance (基本医保)."""

    inpatient: InpatientBasic
    outpatient: OutpatientBasic
    unreferred_out_of_county_penalty: Decimal


@dataclass(frozen=True, slots=True)
class CriticalIllness:
    """Critical illness insurance (大病保险); caps None = no cap."""

    threshold: Decimal
    threshold_poor: Decimal
    bands: tuple[Band, ...]
    poor_bonus: Decimal
    yearly_cap: Decimal | None
    yearly_cap_poor: Decimal | None


@dataclass(frozen=True, slots=True)
class MedicalAssistance:
    """Medical assistance (医疗救助), registered poor only; cap None = no cap."""

    ratio: Decimal
    yearly_cap: Decimal | None


@dataclass(frozen=True, slots=True)
class PovertySafetyNet:
    """Poverty safety net (兜底保障), registered poor, inpatient only."""

    oop_ceiling_per_stay: Decimal
    target_reimbursement_ratio: Decimal


@dataclass(frozen=True, slots=True)
class ClassB:
    """Class B items (乙类): in the list, but the patient first pays a self-pay share."""

    self_pay_share: Decimal


@dataclass(frozen=True, slots=True)
class Policy:
    """One settlement policy version for one insured region and validity period (both dates inclusive)."""

    id: str
    version: str
    region: str
    valid_from: dt.date
    valid_to: dt.date | None
    basic_insurance: BasicInsurance
    critical_illness: CriticalIllness
    medical_assistance: MedicalAssistance
    poverty_safety_net: PovertySafetyNet
    class_b: ClassB
    name: str = ""
    source: str = field(default="", compare=False)

    def covers(self, on_date: dt.date) -> bool:
        """Whether the policy is in force on `on_date`."""
        return self.valid_from <= on_date and (self.valid_to is None or on_date <= self.valid_to)

    def validity(self) -> str:
        """Validity period as text, e.g. `2018-01-01..open`."""
        end = self.valid_to.isoformat() if self.valid_to is not None else "open"
        return f"{self.valid_from.isoformat()}..{end}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the shape of the policy file (decimals as exact strings, dates ISO)."""
        basic = self.basic_insurance
        ci = self.critical_illness
        return {
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "region": self.region,
            "valid_from": self.valid_from.isoformat(),
            "valid_to": self.valid_to.isoformat() if self.valid_to is not None else None,
            "basic_insurance": {
                "inpatient": {
                    "deductible": basic.inpatient.deductible.to_dict(),
                    "ratio": basic.inpatient.ratio.to_dict(),
                    "yearly_cap": _text(basic.inpatient.yearly_cap),
                },
                "outpatient": {
                    "ratio": basic.outpatient.ratio.to_dict(),
                    "yearly_cap": _text(basic.outpatient.yearly_cap),
                },
                "unreferred_out_of_county_penalty": str(basic.unreferred_out_of_county_penalty),
            },
            "critical_illness": {
                "threshold": str(ci.threshold),
                "threshold_poor": str(ci.threshold_poor),
                "bands": [
                    {"from": str(b.lower), "to": _text(b.upper), "ratio": str(b.ratio)} for b in ci.bands
                ],
                "poor_bonus": str(ci.poor_bonus),
                "yearly_cap": _text(ci.yearly_cap),
                "yearly_cap_poor": _text(ci.yearly_cap_poor),
            },
            "medical_assistance": {
                "ratio": str(self.medical_assistance.ratio),
                "yearly_cap": _text(self.medical_assistance.yearly_cap),
            },
            "poverty_safety_net": {
                "oop_ceiling_per_stay": str(self.poverty_safety_net.oop_ceiling_per_stay),
                "target_reimbursement_ratio": str(self.poverty_safety_net.target_reimbursement_ratio),
            },
            "class_b": {"self_pay_share": str(self.class_b.self_pay_share)},
        }


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


# --- reading and validating one policy -------------------------------------------------------


def _kind(value: object) -> str:
    """Name of a YAML value's type for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Reader:
    """Reads one policy document, collecting every problem instead of stopping at the first."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        """Record a problem at a field path."""
        self.problems.append(f"{self.source}: {path or '(document)'}: {message}")

    def section(
        self,
        node: object,
        path: str,
        required: Sequence[str],
        optional: Sequence[str] = (),
    ) -> Mapping[str, Any] | None:
        """Check a mapping's keys (missing and unknown); None if it is not a mapping."""
        if not isinstance(node, Mapping):
            self.problem(path, f"must be a mapping, got {_kind(node)}")
            return None
        allowed = (*required, *optional)
        for key in node:
            if key not in allowed:
                self.problem(_join(path, str(key)), f"unknown field (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in node:
                self.problem(_join(path, key), "required field is missing")
        return node

    def _decimal(self, value: object, path: str) -> Decimal | None:
        if isinstance(value, bool):
            self.problem(path, f"must be a decimal string, got {_kind(value)}")
            return None
        if isinstance(value, int):
            return Decimal(value)
        if isinstance(value, Decimal):
            number = value
        elif isinstance(value, float):
            self.problem(
                path,
                f'must be written as a string (e.g. "0.80") so it loads exactly, got the float {value!r}',
            )
            return None
        elif isinstance(value, str):
            try:
                number = Decimal(value.strip())
            except InvalidOperation:
                self.problem(path, f"not a decimal number: {value!r}")
                return None
        else:
            self.problem(path, f"must be a decimal string, got {_kind(value)}")
            return None
        if not number.is_finite():
            self.problem(path, f"must be a finite number, got {value!r}")
            return None
        return number

    def _money_value(self, value: object, path: str) -> Decimal | None:
        number = self._decimal(value, path)
        if number is None:
            return None
        if number < 0:
            self.problem(path, f"amount must not be negative, got {number}")
            return None
        if number % _CENT != 0:
            self.problem(path, f"amount must be whole fen (at most 2 decimals), got {number}")
            return None
        return number

    def _ratio_value(self, value: object, path: str) -> Decimal | None:
        number = self._decimal(value, path)
        if number is None:
            return None
        if not _ZERO <= number <= _ONE:
            self.problem(path, f"ratio must be between 0 and 1, got {number}")
            return None
        return number

    def money(self, parent: Mapping[str, Any] | None, key: str, path: str) -> Decimal:
        """Required non-negative whole-fen amount (yuan); 0 after recording a problem."""
        if parent is None or key not in parent:
            return _ZERO
        if parent[key] is None:
            self.problem(_join(path, key), "must be an amount, got null")
            return _ZERO
        value = self._money_value(parent[key], _join(path, key))
        return _ZERO if value is None else value

    def cap(self, parent: Mapping[str, Any] | None, key: str, path: str) -> Decimal | None:
        """Yearly cap or ceiling: an amount, or null for no cap."""
        if parent is None or key not in parent or parent[key] is None:
            return None
        return self._money_value(parent[key], _join(path, key))

    def ratio(self, parent: Mapping[str, Any] | None, key: str, path: str) -> Decimal:
        """Required exact ratio in [0, 1]; 0 after recording a problem."""
        if parent is None or key not in parent:
            return _ZERO
        value = self._ratio_value(parent[key], _join(path, key))
        return _ZERO if value is None else value

    def text(self, parent: Mapping[str, Any] | None, key: str, path: str, *, allow_int: bool = False) -> str:
        """Required non-empty string (integers too when `allow_int`)."""
        if parent is None or key not in parent:
            return ""
        value = parent[key]
        if allow_int and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not value.strip():
            self.problem(_join(path, key), f"must be a non-empty string, got {_kind(value)}")
            return ""
        return value.strip()

    def date(self, parent: Mapping[str, Any] | None, key: str, path: str) -> dt.date | None:
        """A date (YAML date or ISO string); None when absent or null."""
        if parent is None or key not in parent or parent[key] is None:
            return None
        value = parent[key]
        where = _join(path, key)
        if isinstance(value, dt.datetime):
            self.problem(where, f"must be a date (YYYY-MM-DD), not a date-time: {value.isoformat()}")
            return None
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError:
                pass
        self.problem(where, f"must be a date (YYYY-MM-DD), got {value!r}")
        return None

    def level_table(
        self, parent: Mapping[str, Any] | None, key: str, path: str, *, ratios: bool
    ) -> LevelTable:
        """Mapping from facility level to an amount (or a ratio when `ratios`)."""
        if parent is None or key not in parent:
            return LevelTable()
        where = _join(path, key)
        node = parent[key]
        if not isinstance(node, Mapping):
            self.problem(where, f"must be a mapping from facility level to value, got {_kind(node)}")
            return LevelTable()
        values: dict[str, Decimal] = {}
        for level, raw in node.items():
            at = _join(where, str(level))
            if level not in FACILITY_LEVELS:
                self.problem(at, f"unknown facility level (expected one of {', '.join(FACILITY_LEVELS)})")
                continue
            value = self._ratio_value(raw, at) if ratios else self._money_value(raw, at)
            if value is not None:
                values[str(level)] = value
        return LevelTable(**values)


_TOP_REQUIRED = (
    "id",
    "version",
    "region",
    "valid_from",
    "basic_insurance",
    "critical_illness",
    "medical_assistance",
    "poverty_safety_net",
    "class_b",
)


def _read_policy(reader: _Reader, data: object) -> Policy:
    """Build a Policy from parsed data; problems go to `reader` (the result is then meaningless)."""
    top = reader.section(data, "", _TOP_REQUIRED, ("name", "valid_to"))

    policy_id = reader.text(top, "id", "")
    if policy_id and not _ID_PATTERN.match(policy_id):
        reader.problem("id", f"must be letters, digits, '.', '_' or '-', got {policy_id!r}")
    version = reader.text(top, "version", "", allow_int=True)
    region = reader.text(top, "region", "")
    name = ""
    if top is not None and top.get("name") is not None:
        if isinstance(top["name"], str):
            name = top["name"].strip()
        else:
            reader.problem("name", f"must be a string, got {_kind(top['name'])}")
    valid_from = reader.date(top, "valid_from", "")
    if top is not None and "valid_from" in top and top["valid_from"] is None:
        reader.problem("valid_from", "must be a date (YYYY-MM-DD), got null")
    valid_to = reader.date(top, "valid_to", "")
    if valid_from is not None and valid_to is not None and valid_to < valid_from:
        reader.problem(
            "valid_to",
            f"must not be before valid_from ({valid_from.isoformat()}), got {valid_to.isoformat()}",
        )

    basic = _read_basic(reader, top)
    critical = _read_critical_illness(reader, top)

    ma = _subsection(reader, top, "medical_assistance", "", ("ratio", "yearly_cap"))
    assistance = MedicalAssistance(
        ratio=reader.ratio(ma, "ratio", "medical_assistance"),
        yearly_cap=reader.cap(ma, "yearly_cap", "medical_assistance"),
    )
    sn = _subsection(
        reader,
        top,
        "poverty_safety_net",
        "",
        ("oop_ceiling_per_stay", "target_reimbursement_ratio"),
    )
    safety_net = PovertySafetyNet(
        oop_ceiling_per_stay=reader.money(sn, "oop_ceiling_per_stay", "poverty_safety_net"),
        target_reimbursement_ratio=reader.ratio(sn, "target_reimbursement_ratio", "poverty_safety_net"),
    )
    cb = _subsection(reader, top, "class_b", "", ("self_pay_share",))
    class_b = ClassB(self_pay_share=reader.ratio(cb, "self_pay_share", "class_b"))

    return Policy(
        id=policy_id,
        version=version,
        region=region,
        valid_from=valid_from or dt.date.min,
        valid_to=valid_to,
        basic_insurance=basic,
        critical_illness=critical,
        medical_assistance=assistance,
        poverty_safety_net=safety_net,
        class_b=class_b,
        name=name,
        source=reader.source,
    )


def _subsection(
    reader: _Reader,
    parent: Mapping[str, Any] | None,
    key: str,
    path: str,
    required: Sequence[str],
) -> Mapping[str, Any] | None:
    """A nested section, checked; None when absent (already reported) or malformed."""
    if parent is None or key not in parent:
        return None
    return reader.section(parent[key], _join(path, key), required)


def _read_basic(reader: _Reader, top: Mapping[str, Any] | None) -> BasicInsurance:
    basic = _subsection(
        reader,
        top,
        "basic_insurance",
        "",
        ("inpatient", "outpatient", "unreferred_out_of_county_penalty"),
    )
    path = "basic_insurance"
    inp = _subsection(reader, basic, "inpatient", path, ("deductible", "ratio", "yearly_cap"))
    inp_path = f"{path}.inpatient"
    deductible = reader.level_table(inp, "deductible", inp_path, ratios=False)
    ratio = reader.level_table(inp, "ratio", inp_path, ratios=True)
    if (
        inp is not None
        and isinstance(inp.get("deductible"), Mapping)
        and isinstance(inp.get("ratio"), Mapping)
    ):
        d_levels = {str(k) for k in inp["deductible"] if k in FACILITY_LEVELS}
        r_levels = {str(k) for k in inp["ratio"] if k in FACILITY_LEVELS}
        for level in sorted(d_levels - r_levels, key=FACILITY_LEVELS.index):
            reader.problem(
                f"{inp_path}.ratio.{level}",
                "missing: the level has a deductible, so it needs a ratio too",
            )
        for level in sorted(r_levels - d_levels, key=FACILITY_LEVELS.index):
            reader.problem(
                f"{inp_path}.deductible.{level}",
                "missing: the level has a ratio, so it needs a deductible too",
            )
    inpatient = InpatientBasic(
        deductible=deductible, ratio=ratio, yearly_cap=reader.cap(inp, "yearly_cap", inp_path)
    )
    out = _subsection(reader, basic, "outpatient", path, ("ratio", "yearly_cap"))
    out_path = f"{path}.outpatient"
    outpatient = OutpatientBasic(
        ratio=reader.level_table(out, "ratio", out_path, ratios=True),
        yearly_cap=reader.cap(out, "yearly_cap", out_path),
    )
    return BasicInsurance(
        inpatient=inpatient,
        outpatient=outpatient,
        unreferred_out_of_county_penalty=reader.ratio(basic, "unreferred_out_of_county_penalty", path),
    )


def _read_critical_illness(reader: _Reader, top: Mapping[str, Any] | None) -> CriticalIllness:
    path = "critical_illness"
    ci = _subsection(
        reader,
        top,
        path,
        "",
        ("threshold", "threshold_poor", "bands", "poor_bonus", "yearly_cap", "yearly_cap_poor"),
    )
    poor_bonus = reader.ratio(ci, "poor_bonus", path)
    bands = _read_bands(reader, ci, path, poor_bonus)
    return CriticalIllness(
        threshold=reader.money(ci, "threshold", path),
        threshold_poor=reader.money(ci, "threshold_poor", path),
        bands=bands,
        poor_bonus=poor_bonus,
        yearly_cap=reader.cap(ci, "yearly_cap", path),
        yearly_cap_poor=reader.cap(ci, "yearly_cap_poor", path),
    )


def _read_bands(
    reader: _Reader, ci: Mapping[str, Any] | None, path: str, poor_bonus: Decimal
) -> tuple[Band, ...]:
    """Bands: contiguous from 0, ordered, only the last open-ended (to: null)."""
    if ci is None or "bands" not in ci:
        return ()
    where = f"{path}.bands"
    node = ci["bands"]
    if not isinstance(node, list) or not node:
        reader.problem(where, f"must be a non-empty list of bands, got {_kind(node)}")
        return ()
    bands: list[Band] = []
    previous_upper: Decimal | None = _ZERO
    last = len(node) - 1
    for index, raw in enumerate(node):
        at = f"{where}[{index}]"
        band = reader.section(raw, at, ("from", "to", "ratio"))
        if band is None:
            previous_upper = None
            continue
        lower = reader.money(band, "from", at)
        upper = reader.cap(band, "to", at)
        ratio = reader.ratio(band, "ratio", at)
        if "from" in band and band["from"] is not None and previous_upper is not None:
            if index == 0 and lower != 0:
                reader.problem(f"{at}.from", f"the first band must start at 0, got {lower}")
            elif index > 0 and lower != previous_upper:
                reader.problem(
                    f"{at}.from",
                    f"bands must be contiguous: expected {previous_upper}"
                    f" (the previous band's 'to'), got {lower}",
                )
        if "to" in band:
            if band["to"] is None and index != last:
                reader.problem(f"{at}.to", "only the last band may be open-ended (to: null)")
            elif band["to"] is not None and index == last:
                reader.problem(
                    f"{at}.to", "the last band must be open-ended (to: null) so every amount has a band"
                )
            if upper is not None and upper <= lower:
                reader.problem(f"{at}.to", f"must be greater than 'from' ({lower}), got {upper}")
        if "ratio" in band and ratio + poor_bonus > _ONE:
            reader.problem(
                f"{at}.ratio",
                f"ratio + poor_bonus must not exceed 1, got {ratio} + {poor_bonus}",
            )
        previous_upper = upper
        bands.append(Band(lower=lower, upper=upper, ratio=ratio))
    return tuple(bands)


def parse_policy(data: object, source: str = "<data>") -> Policy:
    """Validate parsed data (from YAML or `Policy.to_dict`); PolicyError lists every problem."""
    reader = _Reader(source)
    policy = _read_policy(reader, data)
    if reader.problems:
        raise PolicyError(reader.problems)
    return policy


def _read_file(path: Path) -> tuple[Policy | None, list[str]]:
    """Parse one policy file: the policy, or None and its problems."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, [f"{path}: (document): not valid UTF-8: {exc.reason}"]
    except OSError as exc:
        return None, [f"{path}: (document): cannot read: {exc.strerror or exc}"]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return None, [f"{path}: (document): not valid YAML{where}: {problem}"]
    reader = _Reader(str(path))
    policy = _read_policy(reader, data)
    return (None, reader.problems) if reader.problems else (policy, [])


def load_policy_file(path: str | Path) -> Policy:
    """Load and validate one policy file; raise PolicyError listing all its problems."""
    policy, problems = _read_file(Path(path))
    if problems or policy is None:
        raise PolicyError(problems)
    return policy


def _overlaps(a: Policy, b: Policy) -> bool:
    a_end = a.valid_to or dt.date.max
    b_end = b.valid_to or dt.date.max
    return a.valid_from <= b_end and b.valid_from <= a_end


def _registry_problems(policies: Sequence[Policy]) -> list[str]:
    """Problems across policies: duplicate id and version, overlapping validity in one region."""
    problems: list[str] = []
    for index, later in enumerate(policies):
        for earlier in policies[:index]:
            if (earlier.id, earlier.version) == (later.id, later.version):
                problems.append(
                    f"{later.source}: id/version: {later.id} version {later.version}"
                    f" is already defined in {earlier.source}"
                )
            if earlier.region.strip() == later.region.strip() and _overlaps(earlier, later):
                problems.append(
                    f"{later.source}: valid_from/valid_to: validity {later.validity()} of"
                    f" {later.id} version {later.version} overlaps {earlier.validity()} of"
                    f" {earlier.id} version {earlier.version} ({earlier.source})"
                    f" for region {later.region}"
                )
    return problems


def _load_files(paths: Iterable[str | Path]) -> tuple[list[Policy], list[str]]:
    policies: list[Policy] = []
    problems: list[str] = []
    for path in paths:
        policy, file_problems = _read_file(Path(path))
        problems.extend(file_problems)
        if policy is not None:
            policies.append(policy)
    problems.extend(_registry_problems(policies))
    return policies, problems


def check_files(paths: Iterable[str | Path]) -> list[str]:
    """Every problem in the given policy files, each and together; empty when all are valid."""
    return _load_files(paths)[1]


def policy_files(directory: str | Path) -> list[Path]:
    """Policy files (*.yaml, *.yml) in a directory, sorted by name."""
    folder = Path(directory)
    return sorted({p for pattern in POLICY_FILE_PATTERNS for p in folder.glob(pattern)})


def load_policy_dir(directory: str | Path) -> PolicyRegistry:
    """Load every policy file of a directory into a registry; raise PolicyError listing all problems."""
    folder = Path(directory)
    if not folder.is_dir():
        raise PolicyError([f"{folder}: (directory): not a directory"])
    paths = policy_files(folder)
    if not paths:
        raise PolicyError([f"{folder}: (directory): no policy files ({', '.join(POLICY_FILE_PATTERNS)})"])
    policies, problems = _load_files(paths)
    if problems:
        raise PolicyError(problems)
    return PolicyRegistry(policies)


class PolicyRegistry:
    """Policies by insured region and validity (参保地政策); `in_force` picks the one that applies."""

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        self._policies = tuple(policies)
        problems = _registry_problems(self._policies)
        if problems:
            raise PolicyError(problems)
        by_region: dict[str, list[Policy]] = {}
        for policy in self._policies:
            by_region.setdefault(policy.region.strip(), []).append(policy)
        self._by_region = {
            region: tuple(sorted(items, key=lambda p: p.valid_from)) for region, items in by_region.items()
        }

    @property
    def policies(self) -> tuple[Policy, ...]:
        """All policies, in load order."""
        return self._policies

    def __iter__(self) -> Iterator[Policy]:
        return iter(self._policies)

    def __len__(self) -> int:
        return len(self._policies)

    def in_force(self, region: str, on_date: dt.date) -> Policy:
        """The policy of `region` in force on `on_date`; NoPolicyError when there is none."""
        if isinstance(on_date, dt.datetime):
            raise TypeError("in_force takes a date (the discharge date in Asia/Shanghai), not a datetime")
        for policy in self._by_region.get(region.strip(), ()):
            if policy.covers(on_date):
                return policy
        raise NoPolicyError(region, on_date, self._by_region)

    def find(self, policy_id: str, version: str) -> Policy | None:
        """The policy with this id and version (to recompute a stored settlement), or None."""
        for policy in self._policies:
            if policy.id == policy_id and policy.version == version:
                return policy
        return None

    @classmethod
    def load_policy_dir(cls, directory: str | Path) -> PolicyRegistry:
        """Same as the module-level `load_policy_dir`."""
        return load_policy_dir(directory)

    @staticmethod
    def check_files(paths: Iterable[str | Path]) -> list[str]:
        """Same as the module-level `check_files`."""
        return check_files(paths)
