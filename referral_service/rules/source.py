"""Reading rule and NEWS2 data files, and collecting every problem found in them."""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml


class RuleSetError(Exception):
    """Rule or NEWS2 files are invalid; ``problems`` lists every problem, not just the first."""

    def __init__(self, problems: Iterable[str]) -> None:
        """Keep the problems and build one message that lists them all."""
        self.problems: tuple[str, ...] = tuple(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in rule files:\n{lines}")


class Problems:
    """Collects problems for one file; each names the file, the rule (when known) and the field."""

    def __init__(self, file: str) -> None:
        """Start an empty list for ``file``."""
        self.file = file
        self.items: list[str] = []

    def add(
        self,
        message: str,
        *,
        field: str | None = None,
        rule: str | None = None,
        parameter: str | None = None,
    ) -> None:
        """Record one problem."""
        parts = [self.file]
        if rule is not None:
            parts.append(f"rule {rule!r}")
        if parameter is not None:
            parts.append(f"parameter {parameter!r}")
        if field:
            parts.append(f"field {field!r}")
        parts.append(message)
        self.items.append(": ".join(parts))

    def __bool__(self) -> bool:
        """True when something is wrong."""
        return bool(self.items)


class _DecimalSafeLoader(yaml.SafeLoader):
    """Safe YAML loader that reads decimals exactly and refuses duplicate keys."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    # Thresholds such as 38.0 and 91.5 must compare exactly, so never go through binary floats.
    text = str(loader.construct_scalar(node)).replace("_", "").lower()
    specials = {".inf": "Infinity", "+.inf": "Infinity", "-.inf": "-Infinity", ".nan": "NaN"}
    try:
        return Decimal(specials.get(text, text))
    except InvalidOperation:
        return Decimal(str(loader.construct_yaml_float(node)))


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Hashable, Any]:
    # PyYAML keeps the last of two equal keys silently; a repeated 'ge:' must be an error instead.
    loader.flatten_mapping(node)
    mapping: dict[Hashable, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "unhashable key",
                key_node.start_mark,
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_DecimalSafeLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)
_DecimalSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_text(text: str, *, json_file: bool = False) -> Any:
    """Parse YAML (or JSON) text with exact decimals; raise ValueError on bad syntax."""
    if json_file:
        try:
            return json.loads(text, parse_float=Decimal, object_pairs_hook=_json_object)
        except ValueError as exc:
            raise ValueError(f"bad JSON: {exc}") from None
    try:
        return yaml.load(text, Loader=_DecimalSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(f"bad YAML: {' '.join(str(exc).split())}") from None


def read_data_file(path: str | Path, problems: Problems) -> Any:
    """Read and parse one data file; on failure record the problem and return None."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(f"cannot read file: {exc}")
        return None
    try:
        return parse_text(text, json_file=path.suffix.lower() == ".json")
    except ValueError as exc:
        problems.add(str(exc))
        return None


def is_number(value: object) -> bool:
    """Tell whether a parsed value is a finite number (bool is not a number here)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, Decimal):
        return value.is_finite()
    return isinstance(value, int)


def describe(value: object) -> str:
    """Name the type of a parsed value the way a rule author would say it."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value!r}"
    if isinstance(value, int | Decimal):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def check_keys(
    data: dict[Any, Any],
    allowed: Iterable[str],
    problems: Problems,
    *,
    prefix: str = "",
    rule: str | None = None,
    parameter: str | None = None,
) -> None:
    """Report keys that are not among ``allowed`` (typos such as 'explaination')."""
    allowed_set = set(allowed)
    for key in data:
        if key not in allowed_set:
            problems.add(
                f"unknown field; expected one of {sorted(allowed_set)}",
                field=f"{prefix}{key}",
                rule=rule,
                parameter=parameter,
            )
