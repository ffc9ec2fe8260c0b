"""Write-time validation: structure (fhir.resources R4B) then our profiles; all problems at once."""

from __future__ import annotations

import datetime
import decimal
import re
import types
import typing
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ..domain import resident_id
from ..domain.errors import BadRequest, Problem, Unprocessable
from . import codes, profiles
from .resources import RESOURCES


def _path(resource_type: str, loc: tuple[Any, ...]) -> str:
    out = resource_type
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # all but tab, LF and CR


def _holds_control(node: Any) -> bool:
    if isinstance(node, str):
        return _CONTROL.search(node) is not None
    if isinstance(node, dict):
        return any(_holds_control(value) for value in node.values())
    if isinstance(node, list):
        return any(_holds_control(value) for value in node)
    return False


def control_character_problems(node: Any, path: str) -> list[Problem]:
    """FHIR strings may not hold control characters other than tab, CR and LF."""
    if not _holds_control(node):  # the usual case, without building every element's path
        return []
    found: list[Problem] = []
    if isinstance(node, str):
        if _CONTROL.search(node):
            found.append(
                Problem(
                    f"{path}: control characters are not allowed in FHIR strings",
                    expression=path,
                    code="structure",
                )
            )
    elif isinstance(node, dict):
        for key, value in node.items():
            found += control_character_problems(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += control_character_problems(value, f"{path}[{index}]")
    return found


def _known_resource_type(name: str) -> bool:
    try:
        get_fhir_model_class(name)
    except (KeyError, ValueError):
        return False
    return True


def embedded_resource_problems(resource_type: str, body: dict[str, Any]) -> list[Problem]:
    """Resources inside the resource (`contained`, Bundle.entry.resource, Parameters...resource).

    Each `contained` item must be a JSON object naming its resourceType, and every embedded object with
    a resourceType must name a FHIR R4 resource type: fhir.resources fails with a KeyError (no
    ValidationError, no path) on an unknown one, and accepts a contained item without any.
    """
    found: list[Problem] = []

    def problem(path: str, message: str) -> None:
        found.append(Problem(f"{path}: {message}", expression=path, code="structure"))

    def visit(node: Any, path: str, contained: bool) -> None:
        if not isinstance(node, dict):
            if contained:
                problem(path, "a contained resource must be a JSON object with a resourceType")
            elif isinstance(node, list):
                for index, item in enumerate(node):
                    visit(item, f"{path}[{index}]", False)
            return
        kind = node.get("resourceType")
        if contained or "resourceType" in node:
            if not isinstance(kind, str) or not kind:
                problem(path, "a resource needs a resourceType (a FHIR resource type name)")
            elif not _known_resource_type(kind):
                shown = kind.encode("unicode_escape").decode("ascii")[:80]
                problem(path, f"unknown resource type {shown!r}")
        elements(node, path)

    def elements(node: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            if isinstance(value, list):
                for index, item in enumerate(value):
                    visit(item, f"{path}.{key}[{index}]", key == "contained")
            elif isinstance(value, dict):
                visit(value, f"{path}.{key}", False)

    elements(body, resource_type)
    return found


# JSON shape of an element, as FHIR's JSON format fixes it: fhir.resources (pydantic, lax) takes
# "true" and 1 for a boolean, "2" for an integer and null or [] for an absent element, and the store
# would keep and serve them as sent, which is not FHIR JSON.
_JSON_KINDS: dict[type, str] = {bool: "boolean", int: "integer", decimal.Decimal: "decimal"}
_STRING_BASES = (str, bytes, datetime.date, datetime.datetime, datetime.time)


def _kind_of(annotation: Any) -> tuple[str, bool, Any]:
    """(kind, repeats, model class) of a field: kind is boolean, integer, decimal, string, element,
    resource, or '' (not checked)."""
    repeats = False
    while True:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1:
                return "", repeats, None
            annotation = rest[0]
        elif origin is list:
            repeats = True
            annotation = args[0]
        else:
            break
    if annotation in _JSON_KINDS:
        return _JSON_KINDS[annotation], repeats, None
    if isinstance(annotation, type) and issubclass(annotation, _STRING_BASES):
        return "string", repeats, None
    name = getattr(annotation, "__name__", "")
    if name == "ResourceType":
        return "resource", repeats, None
    if name.endswith("Type"):
        try:
            return "element", repeats, get_fhir_model_class(name[: -len("Type")])
        except (KeyError, ValueError):
            return "", repeats, None
    return "", repeats, None


@cache
def _fields_of(model: type) -> dict[str, tuple[str, bool, Any]]:
    fields = getattr(model, "model_fields", {})
    return {
        (f.alias or name): _kind_of(f.annotation) for name, f in fields.items() if name != "fhir_comments"
    }


def _model_of(resource_type: Any) -> type | None:
    if not isinstance(resource_type, str):
        return None
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None


def _value_problem(kind: str, value: Any) -> str | None:
    if kind == "boolean":
        return None if isinstance(value, bool) else "a boolean must be JSON true or false"
    if kind == "integer":
        whole = isinstance(value, int) and not isinstance(value, bool)
        return None if whole else "an integer must be a JSON number without a fraction or exponent"
    if kind == "decimal":
        ok = isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool)
        return None if ok else "a decimal must be a JSON number"
    if kind == "string":
        return None if isinstance(value, str) else "this element must be a JSON string"
    if kind in ("element", "resource"):
        if not isinstance(value, dict):
            return None  # fhir.resources names the wrong type
        return None if value else "an element must not be an empty object"
    return None


def json_shape_problems(resource_type: str, body: dict[str, Any]) -> list[Problem]:
    """FHIR JSON rules fhir.resources lets through: no null values, no empty arrays or objects, and
    booleans, integers, decimals and strings as their JSON types (http://hl7.org/fhir/R4/json.html)."""
    found: list[Problem] = []

    def problem(path: str, message: str) -> None:
        found.append(Problem(f"{path}: {message}", expression=path, code="structure"))

    def visit(node: dict[str, Any], model: type | None, path: str) -> None:
        if model is None:
            return
        fields = _fields_of(model)
        for key, value in node.items():
            if key == "resourceType":
                continue
            where = f"{path}.{key}"
            if value is None:
                problem(where, "null is not allowed in FHIR JSON (leave the element out)")
                continue
            kind, repeats, child = fields.get(key, ("", False, None))
            if isinstance(value, list):
                if not value:
                    problem(where, "an array must not be empty in FHIR JSON (leave the element out)")
                    continue
                if not repeats:
                    continue  # fhir.resources names the wrong cardinality
                # null stands for a missing value only in an array paired with its _element array
                paired = key.startswith("_") or f"_{key}" in node
                for index, item in enumerate(value):
                    check(item, kind, child, f"{where}[{index}]", nullable=paired)
            elif kind:
                check(value, kind, child, where, nullable=False)

    def check(value: Any, kind: str, child: Any, where: str, *, nullable: bool) -> None:
        if value is None:
            if not nullable:
                problem(where, "null is not allowed in FHIR JSON")
            return
        message = _value_problem(kind, value)
        if message:
            problem(where, message)
        elif isinstance(value, dict) and kind == "element":
            visit(value, child, where)
        elif isinstance(value, dict) and kind == "resource":
            visit(value, _model_of(value.get("resourceType")), where)

    visit(body, _model_of(resource_type), resource_type)
    return found


# Targets the interface contract adds to R4's: DESIGN sections 4 and 9 make the referral decision's
# `GuidanceResponse.result` the proposed ServiceRequest (R4 lists CarePlan and RequestGroup only).
CONTRACT_REFERENCE_TARGETS: dict[tuple[str, str], tuple[str, ...]] = {
    ("GuidanceResponse", "result"): ("ServiceRequest",),
}


@cache
def _reference_targets(model: type) -> dict[str, tuple[str, ...]]:
    """Reference elements of a model (by JSON name) -> the resource types they may point at (empty:
    any type), from the element definitions fhir.resources carries (`enum_reference_types`)."""
    found: dict[str, tuple[str, ...]] = {}
    for name, f in getattr(model, "model_fields", {}).items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        targets = extra.get("enum_reference_types")
        if isinstance(targets, list):
            found[f.alias or name] = () if "Resource" in targets else tuple(str(t) for t in targets)
    for (owner, element), extra_targets in CONTRACT_REFERENCE_TARGETS.items():
        if model.__name__ == owner and found.get(element):
            found[element] = (*found[element], *extra_targets)
    return found


# The type named by a relative literal reference (Type/id, Type/id/_history/v) or a conditional one
# (Type?query): FHIR references.html#literal.
_REFERENCE_TYPE = re.compile(r"([A-Za-z][A-Za-z0-9]*)[/?]")


def _target_problems(node: dict[str, Any], allowed: tuple[str, ...], path: str) -> list[Problem]:
    found: list[Problem] = []

    def problem(where: str, message: str) -> None:
        found.append(Problem(f"{where}: {message}", expression=where, code="structure"))

    reference, declared = node.get("reference"), node.get("type")
    named = None
    if isinstance(reference, str) and not reference.startswith(_NOT_RELATIVE):
        m = _REFERENCE_TYPE.match(reference)
        named = m.group(1) if m else None
    shown = " or ".join(allowed)
    for where, kind in ((f"{path}.reference", named), (f"{path}.type", declared)):
        if not isinstance(kind, str):
            continue
        if not _known_resource_type(kind):
            problem(where, f"{kind[:80]!r} is not a FHIR R4 resource type")
        elif allowed and kind not in allowed:
            problem(where, f"{path.split('.', 1)[-1]} may reference {shown}, not {kind}")
    if isinstance(named, str) and isinstance(declared, str) and named != declared and not found:
        problem(f"{path}.type", f"type {declared} differs from the type of the reference ({named})")
    return found


def reference_target_problems(resource_type: str, body: dict[str, Any]) -> list[Problem]:
    """References to a type their element does not allow (Encounter.subject to an Organization), to
    no FHIR resource type at all ("Foo/1", "patient/1"), or whose `type` differs from the reference's:
    structure errors, as a value of the wrong data type is (the element's definition fixes them)."""
    found: list[Problem] = []

    def visit(node: dict[str, Any], model: type | None, path: str) -> None:
        if model is None:
            return
        targets, fields = _reference_targets(model), _fields_of(model)
        for key, value in node.items():
            allowed = targets.get(key)
            kind, _, child = fields.get(key, ("", False, None))
            if allowed is None and kind not in ("element", "resource"):
                continue
            items = enumerate(value) if isinstance(value, list) else ((None, value),)
            for index, item in items:
                if not isinstance(item, dict):
                    continue
                where = f"{path}.{key}" if index is None else f"{path}.{key}[{index}]"
                if allowed is not None:
                    found.extend(_target_problems(item, allowed, where))
                if kind == "element":
                    visit(item, child, where)
                elif kind == "resource":
                    visit(item, _model_of(item.get("resourceType")), where)

    visit(body, _model_of(resource_type), resource_type)
    return found


def structure_problems(resource_type: str, body: dict[str, Any]) -> list[Problem]:
    """Problems fhir.resources finds (types, cardinality, unknown elements, formats)."""
    if "contained" in body:
        embedded = embedded_resource_problems(resource_type, body)
        if embedded:
            return embedded
    try:
        RESOURCES[resource_type].model.model_validate(body)
    except ValidationError as exc:
        return [
            Problem(
                f"{_path(resource_type, tuple(e['loc']))}: {e['msg']}",
                expression=_path(resource_type, tuple(e["loc"])),
                code="structure",
            )
            for e in exc.errors()
        ]
    except (KeyError, TypeError, ValueError) as exc:  # fhir.resources raises these for some malformed input
        embedded = embedded_resource_problems(resource_type, body)  # (KeyError: an unknown resourceType)
        return embedded or [Problem(f"{resource_type}: {exc}", expression=resource_type, code="structure")]
    return []


# A relative literal reference (FHIR references.html#literal): Type/id, or Type/id/_history/vid.
_RELATIVE_REFERENCE = re.compile(r"[A-Za-z]+/[^/\s]+(?:/_history/[^/\s]+)?")
_NOT_RELATIVE = ("#", "urn:", "http://", "https://")
# What a Bundle rewrites to Type/id before it stores an entry (the fullUrl of another entry).
_BUNDLE_LOCAL = ("urn:uuid:", "urn:oid:")


def _contained_ids(resource: dict[str, Any]) -> frozenset[str]:
    contained = resource.get("contained")
    items = contained if isinstance(contained, list) else []
    return frozenset(str(c["id"]) for c in items if isinstance(c, dict) and isinstance(c.get("id"), str))


SUBSETTED_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"


def subsetted_problems(body: dict[str, Any]) -> list[Problem]:
    """A resource tagged SUBSETTED is a part of one (`_summary`, `_elements`): storing it would lose
    what was cut, so a write of it is refused (FHIR search.html#summary)."""
    meta = body.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    if not isinstance(tags, list) or not any(
        isinstance(t, dict) and t.get("code") == "SUBSETTED" and t.get("system") == SUBSETTED_SYSTEM
        for t in tags
    ):
        return []
    message = ("the resource is tagged SUBSETTED: it is a part of a resource (from _summary or "
               "_elements) and cannot be stored; read the whole resource and send that")
    return [Problem(message, expression=f"{body.get('resourceType')}.meta.tag", code="business-rule")]


def reference_problems(node: Any, path: str, contained: frozenset[str] | None = None) -> list[Problem]:
    """Relative references that name no resource, such as "Organization/" or "Patient" (a type
    without an id), each named by its element: 422, as a reference to a resource that does not exist
    is; so is a urn:uuid or urn:oid reference (a Bundle entry's fullUrl, rewritten by the Bundle before
    the entry is stored: left in a resource it names nothing), and a local reference (#x) to no
    resource the root resource contains (FHIR invariant ref-1; "#" alone is the root itself). Other
    urn: and absolute references, and conditional ones (Type?query, resolved by the write), are left
    alone.
    """
    if contained is None:
        contained = _contained_ids(node) if isinstance(node, dict) else frozenset()
    found: list[Problem] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                if value.startswith("#") and value != "#" and value[1:] not in contained:
                    where = f"{path}.reference"
                    found.append(Problem(
                        f"{where}: {value[:80]!r} names no contained resource (ref-1: a local reference "
                        "needs a resource of that id in contained)",
                        expression=where, code="invariant",
                    ))
                elif value.startswith(_BUNDLE_LOCAL):
                    where = f"{path}.reference"
                    found.append(Problem(
                        f"{where}: {value[:80]!r} names a Bundle entry (its fullUrl) and resolves to "
                        "nothing outside a transaction or batch Bundle; give Type/id",
                        expression=where, code="not-found",
                    ))
                elif not (value.startswith(_NOT_RELATIVE) or "?" in value
                          or _RELATIVE_REFERENCE.fullmatch(value)):
                    where = f"{path}.reference"
                    found.append(Problem(
                        f"{where}: {value[:80]!r} is not a valid reference (Type/id: the id is missing "
                        "or the form is wrong)",
                        expression=where, code="value",
                    ))
            elif isinstance(value, dict | list):
                found += reference_problems(value, f"{path}.{key}", contained)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, dict | list):
                found += reference_problems(value, f"{path}[{index}]", contained)
    return found


def profile_problems(body: dict[str, Any]) -> list[Problem]:
    """Problems our profiles find (bindings, identity numbers, plausibility, organisation rules)."""
    return [
        Problem(i.message, expression=i.expression, code=i.code, severity=i.severity)
        for i in profiles.validate(body)
    ]


def _check_type(resource_type: str, body: dict[str, Any]) -> None:
    kind = body.get("resourceType")
    if kind != resource_type:
        raise BadRequest(
            f"the body is a {kind or 'resource without resourceType'}, not a {resource_type}",
            [Problem(f"resourceType must be {resource_type}", expression="resourceType", code="structure")],
        )


def check_structure(resource_type: str, body: dict[str, Any]) -> None:
    """400 unless the body is a structurally valid FHIR R4 resource of the type: the costly part of
    `check_resource`, which needs no database (a transaction Bundle runs it for every entry before it
    takes any lock)."""
    _check_type(resource_type, body)
    structural = (
        control_character_problems(body, resource_type)
        or structure_problems(resource_type, body)
        or json_shape_problems(resource_type, body)
        or reference_target_problems(resource_type, body)
    )
    if structural:
        raise BadRequest(f"{resource_type} is not a valid FHIR R4 resource", structural)


def check_resource(
    resource_type: str, body: dict[str, Any], *, url_id: str | None = None, structure_checked: bool = False
) -> list[Problem]:
    """Validate a resource for a write: 400 for structure, 422 for profile errors; warnings returned.

    `structure_checked`: `check_structure` has passed on this body already (the rest is checked here).
    """
    _check_type(resource_type, body)
    if url_id is not None and body.get("id") not in (None, url_id):
        raise BadRequest(
            f"the body id {body.get('id')!r} differs from the URL id {url_id!r}",
            [Problem("id differs from the URL", expression=f"{resource_type}.id", code="invalid")],
        )
    if not structure_checked:
        check_structure(resource_type, body)
    found = profile_problems(body) + reference_problems(body, resource_type) + subsetted_problems(body)
    errors = [p for p in found if p.severity in ("error", "fatal")]
    if errors:
        raise Unprocessable(f"{resource_type} breaks a profile or business rule", errors)
    if resource_type == "Patient":
        _normalise_resident_ids(body)
    return [p for p in found if p.severity not in ("error", "fatal")]


def _normalise_resident_ids(patient: dict[str, Any]) -> None:
    """Store valid resident identity numbers as the contract says: a check character x upper-case."""
    for identifier in patient.get("identifier") or []:
        if identifier.get("system") == codes.RESIDENT_ID_SYSTEM and isinstance(identifier.get("value"), str):
            identifier["value"] = resident_id.normalise(identifier["value"])


def require_update_id(resource_type: str, body: dict[str, Any], url_id: str) -> None:
    """400 for an update whose body does not carry the URL's id (FHIR http.html#update requires it)."""
    if body.get("id") is None:
        message = f"an update of {resource_type}/{url_id} must carry id {url_id!r} in the body"
        raise BadRequest(message, [Problem(message, expression=f"{resource_type}.id", code="required")])
