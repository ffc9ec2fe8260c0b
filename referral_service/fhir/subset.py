"""`_summary` and `_elements`: parts of resources, as FHIR search.html#summary and #elements define.

A read, vread, search or history asked for `_summary=true|text|data` or `_elements=a,b` answers each
resource cut down to the elements asked for, plus those every resource keeps (`resourceType`, `id`,
`meta`) and the resource type's mandatory elements, and tags it `SUBSETTED` (FHIR: a subset must
never be mistaken for the whole resource, nor stored back as one). The cut is made on top-level
elements, which is what the parameters name; the elements kept are whole. `_summary=true` keeps the
elements the R4 specification marks as summary (`isSummary`, from fhir.resources' models).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class

from ..domain.errors import BadRequest, Problem
from .validation import SUBSETTED_SYSTEM

SUBSETTED = {
    "system": SUBSETTED_SYSTEM,
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
SUMMARY_MODES = ("true", "text", "data")
ALWAYS = ("resourceType", "id", "meta")
_ELEMENT = re.compile(r"(?:[A-Z][A-Za-z]*\.)?[a-z][A-Za-z0-9]*")


@dataclass(frozen=True)
class Subset:
    """What part of each resource to answer: a `_summary` mode, or the `_elements` named (by
    resource type: None for names without a type, which apply to the resources searched for)."""

    summary: str | None = None
    elements: frozenset[tuple[str | None, str]] | None = None


def parse_subset(args: Iterable[tuple[str, str]], *, search: bool) -> Subset | None:
    """The subset asked for by `_summary` and `_elements` (None: whole resources); 400 for a mode
    that is not FHIR's, an element name that is not one, or both parameters at once (FHIR: they
    SHALL NOT be used together). `_summary=count` is a search's (see `fhir.search`)."""
    summary: str | None = None
    elements: set[tuple[str | None, str]] | None = None
    for key, value in args:
        if key == "_summary":
            allowed = (*SUMMARY_MODES, "false", *(("count",) if search else ()))
            if value not in allowed:
                message = f"_summary={value!r} is not supported ({', '.join(allowed)})"
                raise BadRequest(message, [Problem(message, expression="_summary", code="invalid")])
            summary = value if value in SUMMARY_MODES else None
        elif key == "_elements":
            elements = set() if elements is None else elements
            for name in (n.strip() for n in value.split(",")):
                if not _ELEMENT.fullmatch(name):
                    message = f"_elements: {name!r} is not an element name (name, or Type.name)"
                    raise BadRequest(message, [Problem(message, expression="_elements", code="invalid")])
                res_type, _, element = name.rpartition(".")
                elements.add((res_type or None, element))
    if summary is not None and elements is not None:
        message = "_summary and _elements cannot be used together"
        raise BadRequest(message, [Problem(message, expression="_elements", code="invalid")])
    if summary is None and elements is None:
        return None
    return Subset(summary, frozenset(elements) if elements is not None else None)


@cache
def _summary_elements(res_type: str) -> frozenset[str]:
    return frozenset(get_fhir_model_class(res_type).summary_elements_sequence())


@cache
def mandatory_elements(res_type: str) -> frozenset[str]:
    """The top-level elements a resource of the type must have (cardinality 1..)."""
    model = get_fhir_model_class(res_type)
    return frozenset(
        info.alias or name
        for name, info in model.model_fields.items()
        if info.is_required() or (info.json_schema_extra or {}).get("element_required")  # type: ignore[union-attr]
    )


def _kept(res_type: str, subset: Subset, searched: str) -> frozenset[str] | None:
    """The top-level elements kept (None: everything but `text`, for `_summary=data`)."""
    if subset.summary == "data":
        return None
    if subset.summary == "true":
        named = _summary_elements(res_type)
    elif subset.summary == "text":
        named = frozenset({"text"})
    else:
        assert subset.elements is not None
        named = frozenset(
            element for of_type, element in subset.elements if (of_type or searched) == res_type
        )
    return named | mandatory_elements(res_type)


def cut(resource: dict[str, Any], subset: Subset, searched: str | None = None) -> dict[str, Any]:
    """The resource with only the elements the subset keeps, tagged SUBSETTED. `searched`: the
    type a search was for (`_elements` without a type name that type's elements)."""
    res_type = str(resource.get("resourceType"))
    kept = _kept(res_type, subset, searched or res_type)
    out: dict[str, Any] = {}
    for key, value in resource.items():
        name = key[1:] if key.startswith("_") else key  # `_status`: the extensions of `status`
        if key in ALWAYS or (name != "text" if kept is None else name in kept):
            out[key] = value
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if t.get("code") != SUBSETTED["code"]]
    meta["tag"] = [*tags, SUBSETTED]
    return {**{k: out[k] for k in ("resourceType", "id") if k in out}, "meta": meta,
            **{k: v for k, v in out.items() if k not in ALWAYS}}


def cut_json(
    content: bytes, subset: Subset, searched: str | None = None, *, included: str | None = None
) -> bytes:
    """`cut` on a resource's JSON. `included`: the type of a resource a search included, which
    `_elements` cuts only when it names elements of that type (`Organization.name`)."""
    if (included is not None and subset.elements is not None
            and not any(of_type == included for of_type, _ in subset.elements)):
        return content
    return orjson.dumps(cut(orjson.loads(content), subset, searched))
