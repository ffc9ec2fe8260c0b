"""NEWS2 early-warning score (Royal College of Physicians, 2017), scored from a data table."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from referral_service.rules.facts import ACVPU, Facts
from referral_service.rules.source import (
    Problems,
    RuleSetError,
    check_keys,
    describe,
    is_number,
    read_data_file,
)

# The Facts field each NEWS2 parameter reads, and how its table row is written.
NUMERIC_PARAMETERS = ("respiration_rate", "spo2", "systolic_bp", "pulse", "temperature")
PARAMETER_KEYS: Mapping[str, tuple[Any, ...]] = {
    "supplemental_oxygen": (True, False),
    "consciousness": ACVPU,
}
PARAMETERS = (
    "respiration_rate",
    "spo2",
    "supplemental_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
)
MAX_PARAMETER_SCORE = 3

Value = int | Decimal | bool | str


@dataclass(frozen=True, slots=True)
class News2Band:
    """One score band: values above the previous band's ``max`` up to ``max`` inclusive."""

    max: Decimal | None  # None: open upwards (the last band)
    score: int


@dataclass(frozen=True, slots=True)
class News2Parameter:
    """One row of the NEWS2 table: numeric bands, or a score per boolean or ACVPU value."""

    name: str
    label_zh: str
    label_en: str
    bands: tuple[News2Band, ...] = ()
    scores: Mapping[Any, int] = field(default_factory=dict, hash=False)

    def score(self, value: Value) -> int:
        """Return the score of one measured value."""
        if self.bands:
            uppers = [band.max for band in self.bands if band.max is not None]
            return self.bands[bisect_left(uppers, value)].score
        return self.scores[value]

    def scorer(self) -> Callable[[Any], int]:
        """Return a fast scoring function for this row (used on every evaluation)."""
        if not self.bands:
            return self.scores.__getitem__
        uppers = tuple(band.max for band in self.bands if band.max is not None)
        scores = tuple(band.score for band in self.bands)

        # bisect_left finds the first band whose inclusive upper bound is >= the value.
        def score(value: Any) -> int:
            return scores[bisect_left(uppers, value)]

        return score


@dataclass(frozen=True, slots=True)
class News2Item:
    """Score of one parameter in a result; ``value`` and ``score`` are None when not measured."""

    parameter: str
    value: Value | None
    score: int | None


@dataclass(frozen=True, slots=True)
class News2Result:
    """NEWS2 for one visit: partial total, highest single score, breakdown and what is missing."""

    total: int
    max_single: int
    items: tuple[News2Item, ...]
    missing: tuple[str, ...]
    message_zh: str
    message_en: str

    @property
    def complete(self) -> bool:
        """True when every parameter was measured."""
        return not self.missing

    def score_of(self, parameter: str) -> int | None:
        """Return the score of one parameter (None when missing)."""
        for item in self.items:
            if item.parameter == parameter:
                return item.score
        raise KeyError(parameter)

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-ready data."""
        return {
            "total": self.total,
            "max_single": self.max_single,
            "complete": self.complete,
            "missing": list(self.missing),
            "message": {"zh": self.message_zh, "en": self.message_en},
            "parameters": [
                {"parameter": item.parameter, "value": json_value(item.value), "score": item.score}
                for item in self.items
            ],
        }


def json_value(value: Value | None) -> int | float | bool | str | None:
    """Return a vital-sign value as JSON data (a decimal becomes a JSON number)."""
    if isinstance(value, Decimal):
        # Vital signs have few significant digits, so the float's repr is the decimal as written.
        return int(value) if value == value.to_integral_value() else float(value)
    return value


@dataclass(frozen=True)
class News2Table:
    """The NEWS2 scoring table loaded from ``config/rules/news2.yaml``."""

    id: str
    version: str
    parameters: tuple[News2Parameter, ...]
    _scorers: tuple[tuple[str, Callable[[Any], int]], ...] = field(init=False, repr=False, compare=False)
    _messages: dict[tuple[str, ...], tuple[str, str]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        """Prepare one scoring function per parameter."""
        scorers = tuple((p.name, p.scorer()) for p in self.parameters)
        object.__setattr__(self, "_scorers", scorers)

    def score(self, facts: Facts) -> News2Result:
        """Score the vital signs of ``facts``; missing ones score nothing and are listed."""
        items: list[News2Item] = []
        missing: list[str] = []
        total = 0
        highest = 0
        for name, scorer in self._scorers:
            value = getattr(facts, name)
            if value is None:
                missing.append(name)
                items.append(News2Item(name, None, None))
                continue
            points = scorer(value)
            total += points
            if points > highest:
                highest = points
            items.append(News2Item(name, value, points))
        missing_names = tuple(missing)
        message_zh, message_en = self._message(missing_names)
        return News2Result(total, highest, tuple(items), missing_names, message_zh, message_en)

    def _message(self, missing: tuple[str, ...]) -> tuple[str, str]:
        # At most 2**7 combinations, so caching the text keeps string building off the hot path.
        cached = self._messages.get(missing)
        if cached is not None:
            return cached
        if not missing:
            message = ("NEWS2 完整", "NEWS2 complete")
        else:
            labels = {p.name: p for p in self.parameters}
            zh = "、".join(labels[name].label_zh for name in missing)
            en = ", ".join(labels[name].label_en for name in missing)
            message = (f"NEWS2 不完整：缺少{zh}", f"NEWS2 incomplete: no {en}")
        self._messages[missing] = message
        return message


def parse_news2_table(data: Any, problems: Problems) -> News2Table | None:
    """Validate parsed NEWS2 data, recording every problem; return the table when valid."""
    if not isinstance(data, dict):
        problems.add(f"the file must hold a mapping, got {describe(data)}")
        return None
    check_keys(data, ("kind", "id", "version", "title", "source", "parameters"), problems)
    if data.get("kind") != "news2":
        problems.add(f"expected 'news2', got {describe(data.get('kind'))}", field="kind")
    table_id, version = data.get("id"), data.get("version")
    if not isinstance(table_id, str) or not table_id.strip():
        problems.add(f"expected a non-empty string, got {describe(table_id)}", field="id")
    if not isinstance(version, str) or not version.strip():
        problems.add(
            f"expected a non-empty string (quote numbers), got {describe(version)}",
            field="version",
        )
    rows = data.get("parameters")
    if not isinstance(rows, list):
        problems.add(f"expected a list of parameters, got {describe(rows)}", field="parameters")
        return None
    parameters: list[News2Parameter] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        parameter = _parse_parameter(row, index, seen, problems)
        if parameter is not None:
            parameters.append(parameter)
    for name in PARAMETERS:
        if name not in seen:
            problems.add("NEWS2 parameter missing from the table", parameter=name, field="parameters")
    if problems:
        return None
    assert isinstance(table_id, str)
    assert isinstance(version, str)
    return News2Table(table_id, version, tuple(parameters))


def _parse_parameter(row: Any, index: int, seen: set[str], problems: Problems) -> News2Parameter | None:
    where = f"parameters[{index}]"
    if not isinstance(row, dict):
        problems.add(f"expected a mapping, got {describe(row)}", field=where)
        return None
    name = row.get("parameter")
    if name not in PARAMETERS:
        problems.add(
            f"unknown NEWS2 parameter {name!r}; expected one of {list(PARAMETERS)}",
            field=f"{where}.parameter",
        )
        return None
    if name in seen:
        problems.add("parameter listed twice", parameter=name, field=f"{where}.parameter")
        return None
    seen.add(name)
    check_keys(row, ("parameter", "label", "bands", "scores"), problems, parameter=name)
    label = row.get("label")
    labels: dict[str, str] = {}
    for language in ("zh", "en"):
        text = label.get(language) if isinstance(label, dict) else None
        if not isinstance(text, str) or not text.strip():
            problems.add("missing or empty label", parameter=name, field=f"label.{language}")
        else:
            labels[language] = text
    bands: tuple[News2Band, ...] = ()
    scores: dict[Any, int] = {}
    if name in NUMERIC_PARAMETERS:
        if "scores" in row:
            problems.add("a numeric parameter takes 'bands', not 'scores'", parameter=name, field="scores")
        bands = _parse_bands(row.get("bands"), name, problems)
    else:
        if "bands" in row:
            problems.add("this parameter takes 'scores', not 'bands'", parameter=name, field="bands")
        scores = _parse_scores(row.get("scores"), name, problems)
    if len(labels) != 2:
        return None
    return News2Parameter(name, labels["zh"], labels["en"], bands, scores)


def _valid_score(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (0 <= value <= MAX_PARAMETER_SCORE)


def _parse_bands(raw: Any, name: str, problems: Problems) -> tuple[News2Band, ...]:
    if not isinstance(raw, list) or not raw:
        problems.add(
            f"expected a non-empty list of bands, got {describe(raw)}",
            parameter=name,
            field="bands",
        )
        return ()
    bands: list[News2Band] = []
    previous: Decimal | None = None
    for index, band in enumerate(raw):
        where = f"bands[{index}]"
        last = index == len(raw) - 1
        if not isinstance(band, dict):
            problems.add(f"expected a mapping, got {describe(band)}", parameter=name, field=where)
            continue
        check_keys(band, ("max", "score"), problems, prefix=f"{where}.", parameter=name)
        score = band.get("score")
        score_ok = _valid_score(score)
        if not score_ok:
            problems.add(
                f"expected an integer 0-3, got {describe(score)}",
                parameter=name,
                field=f"{where}.score",
            )
        raw_upper = band.get("max")
        upper: Decimal | None = None
        if last:
            if raw_upper is not None:
                # Without an open last band some measured values would have no score at all.
                problems.add(
                    "the last band must have no 'max' (it is open upwards)",
                    parameter=name,
                    field=f"{where}.max",
                )
        elif not is_number(raw_upper):
            problems.add(
                f"expected a number, got {describe(raw_upper)}",
                parameter=name,
                field=f"{where}.max",
            )
        else:
            upper = Decimal(str(raw_upper))  # exact: raw_upper is an int or a Decimal
            if previous is not None and upper <= previous:
                problems.add(
                    f"band upper bounds must increase; {upper} follows {previous}",
                    parameter=name,
                    field=f"{where}.max",
                )
            previous = upper
        if score_ok and isinstance(score, int):
            bands.append(News2Band(upper, score))
    return tuple(bands)


def _parse_scores(raw: Any, name: str, problems: Problems) -> dict[Any, int]:
    expected = PARAMETER_KEYS[name]
    if not isinstance(raw, dict):
        problems.add(
            f"expected a mapping of {list(expected)} to scores, got {describe(raw)}",
            parameter=name,
            field="scores",
        )
        return {}
    scores: dict[Any, int] = {}
    for key, score in raw.items():
        if key not in expected or type(key) is not type(expected[0]):
            problems.add(
                f"unknown value {key!r}; expected {list(expected)}",
                parameter=name,
                field=f"scores.{key}",
            )
        elif not _valid_score(score):
            problems.add(
                f"expected an integer 0-3, got {describe(score)}",
                parameter=name,
                field=f"scores.{key}",
            )
        else:
            scores[key] = score
    for key in expected:
        if key not in raw:
            problems.add("no score given", parameter=name, field=f"scores.{key}")
    return scores


def load_news2_table(path: str | Path) -> News2Table:
    """Load and validate a NEWS2 table file; raise RuleSetError listing every problem."""
    problems = Problems(str(path))
    data = read_data_file(path, problems)
    table = None if problems else parse_news2_table(data, problems)
    if table is None:
        raise RuleSetError(problems.items)
    return table
