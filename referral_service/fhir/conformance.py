"""Our conformance resources (StructureDefinition, CodeSystem, ValueSet) as the API serves them.

They ship with the software in `fhir_profiles/`; they are not stored resources. Each has one
version: the served copy carries `meta.versionId` 1 and `meta.lastUpdated` at the `date` it bears,
which the read's ETag and Last-Modified repeat. Searches filter the few dozen of them in memory with
the same rules as stored searches: each parameter once per AND, comma-separated values ORed, an
unknown parameter or modifier is a 400.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

from ..domain.errors import BadRequest, Problem
from . import profiles

TYPES = ("StructureDefinition", "CodeSystem", "ValueSet")
VERSION_ID = "1"

# name -> type, as the CapabilityStatement lists them.
SEARCH_PARAMS: dict[str, str] = {
    "_id": "token",
    "url": "uri",
    "version": "token",
    "name": "string",
    "title": "string",
    "status": "token",
    "identifier": "token",
}
RESULT_PARAMS = frozenset({"_count", "_summary", "_elements", "_total", "_format", "_pretty"})
_STRING_MODIFIERS = (None, "exact", "contains")

Resource = dict[str, Any]


def _bad(message: str, expression: str | None = None) -> BadRequest:
    return BadRequest(message, [Problem(message, expression=expression, code="invalid")])


def last_updated(resource: Resource) -> datetime:
    """The instant the resource was last changed: midnight UTC of its `date`."""
    text = str(resource.get("date") or "2024-01-01")
    try:
        moment = datetime.fromisoformat(text if "T" in text else f"{text[:10]}T00:00:00")
    except ValueError:
        moment = datetime(2024, 1, 1, tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@cache
def _served(resource_type: str) -> tuple[Resource, ...]:
    served = []
    for resource in profiles.all_conformance_resources():
        if resource.get("resourceType") != resource_type:
            continue
        instant = last_updated(resource).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        copy = {"resourceType": resource_type, "id": resource.get("id"),
                "meta": {"versionId": VERSION_ID, "lastUpdated": instant}}
        copy.update((k, v) for k, v in resource.items() if k not in copy)
        served.append(copy)
    return tuple(served)


def read(resource_type: str, res_id: str) -> Resource | None:
    """The served copy of one conformance resource, or None."""
    return next((r for r in _served(resource_type) if r.get("id") == res_id), None)


def _token(value: str) -> tuple[str | None, str]:
    system, bar, code = value.partition("|")
    return (system, code) if bar else (None, value)


def _string_test(modifier: str | None, wanted: str) -> Callable[[Any], bool]:
    folded = wanted.casefold()
    if modifier == "exact":
        return lambda text: isinstance(text, str) and text == wanted
    if modifier == "contains":
        return lambda text: isinstance(text, str) and folded in text.casefold()
    return lambda text: isinstance(text, str) and text.casefold().startswith(folded)


def _matches(resource: Resource, name: str, modifier: str | None, value: str) -> bool:
    if name in ("name", "title"):
        return _string_test(modifier, value)(resource.get(name))
    if name == "url":
        url, bar, version = value.partition("|")
        return resource.get("url") == url and (not bar or resource.get("version") == version)
    if name == "identifier":
        system, code = _token(value)
        return any(
            isinstance(i, dict) and i.get("value") == code and (system is None or i.get("system") == system)
            for i in resource.get("identifier") or []
        )
    field = {"_id": "id"}.get(name, name)
    return resource.get(field) == _token(value)[1]


def search(resource_type: str, args: Sequence[tuple[str, str]]) -> list[Resource]:
    """The served copies matching every parameter; 400 for one we do not support."""
    found = list(_served(resource_type))
    for key, value in args:
        name, _, modifier = key.partition(":")
        if name in RESULT_PARAMS:
            continue
        kind = SEARCH_PARAMS.get(name)
        if kind is None:
            raise _bad(f"unknown search parameter {key!r} for {resource_type}", key)
        if modifier and not (kind == "string" and modifier in _STRING_MODIFIERS):
            raise _bad(f"the modifier :{modifier} is not supported on {name}", key)
        alternatives = [v for v in value.split(",") if v]
        if not alternatives:
            raise _bad(f"{key} needs a value", key)
        found = [r for r in found if any(_matches(r, name, modifier or None, v) for v in alternatives)]
    return found
