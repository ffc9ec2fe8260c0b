"""FHIR REST blueprint: /fhir (thin handlers: parse, call a service, serialise)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy.orm import Session
from werkzeug.exceptions import (
    HTTPException,
    MethodNotAllowed,
    NotAcceptable,
    RequestEntityTooLarge,
    UnsupportedMediaType,
)

from ..domain.actor import Actor
from ..domain.base import int_key
from ..domain.errors import BadRequest, DomainError, Gone, NotFound, Problem
from ..extensions import csrf, database
from ..fhir import bundle_json, conformance, json_patch, jsonio
from ..fhir.capability import capability_statement, register_operation
from ..fhir.capability import smart_configuration as smart_document
from ..fhir.outcome import operation_outcome
from ..fhir.resources import RESOURCES, is_fhir_id
from ..fhir.search import decode_cursor, encode_cursor, is_empty_condition, parse_search
from ..fhir.store import ResourceStore, Stored
from ..fhir.subset import Subset, cut, cut_json, parse_subset
from ..fhir.validation import check_resource, require_update_id
from ..services import audit_events, bundles, everything, history
from ..services import resources as service
from ..services.actors import actor_for
from .guard import current_principal, require
from .responses import (
    accepts_json,
    fhir_response,
    format_is_json,
    http_date,
    is_r4,
    not_modified,
    version_headers,
)

bp = Blueprint("fhir", __name__, url_prefix="/fhir")
csrf.exempt(bp)

FHIR_MIME_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
T = TypeVar("T")


@bp.before_request
def _check_body() -> None:
    """413 before parsing; 415 for a body that is not FHIR JSON; 406 when the caller takes no JSON."""
    req = request._get_current_object()  # type: ignore[attr-defined]  # (once, not per attribute)
    length = req.content_length
    if length is not None and length > current_app.config["MAX_CONTENT_LENGTH"]:
        raise RequestEntityTooLarge()
    if length and req.method in ("POST", "PUT", "PATCH"):
        mimetype = req.mimetype
        if req.method == "POST" and req.path.endswith("/_search"):
            # A search's parameters come as a form (FHIR http.html#search): a JSON body would be
            # ignored, and the search would run without the criteria it holds.
            if mimetype != "application/x-www-form-urlencoded":
                raise UnsupportedMediaType(
                    f"Content-Type {mimetype or '(none)'} is not supported by _search; send the "
                    "parameters as application/x-www-form-urlencoded"
                )
        elif req.method == "PATCH":
            _check_patch_type(mimetype)
        elif mimetype not in FHIR_MIME_TYPES or not is_r4(req.headers.get("Content-Type", "").split(";")[1:]):
            raise UnsupportedMediaType(
                f"Content-Type {req.headers.get('Content-Type') or '(none)'} is not supported; send "
                "application/fhir+json (FHIR R4: no fhirVersion, or fhirVersion=4.0)"
            )
    # The answer's format (FHIR http.html#mime-type): JSON only, so XML, Turtle and others are 406.
    fmt = req.args.get("_format")
    if fmt is not None and not format_is_json(fmt):
        raise NotAcceptable(f"_format={fmt} is not supported; this server answers in JSON only "
                            "(_format=json or application/fhir+json)")
    accept = req.headers.get("Accept")
    if fmt is None and accept and not accepts_json(accept):
        raise NotAcceptable(f"Accept: {accept[:200]} names no format this server answers in; it answers "
                            "in JSON only (application/fhir+json or application/json)")


# What PATCH bodies of other kinds are called in the 415 (FHIR http.html#patch names all three).
_OTHER_PATCH_FORMATS = {
    "application/fhir+json": "FHIRPath Patch (a Parameters resource)",
    "application/json": "FHIRPath Patch (a Parameters resource)",
    "application/json+fhir": "FHIRPath Patch (a Parameters resource)",
    "application/merge-patch+json": "JSON Merge Patch",
    "application/fhir+xml": "XML Patch",
    "application/xml-patch+xml": "XML Patch",
}


def _check_patch_type(mimetype: str) -> None:
    """415 for a PATCH body that is not a JSON Patch, saying which patch format is supported."""
    if mimetype == json_patch.MEDIA_TYPE:
        return
    kind = _OTHER_PATCH_FORMATS.get(mimetype, f"Content-Type {mimetype or '(none)'}")
    raise UnsupportedMediaType(
        f"{kind} is not supported for PATCH; send a JSON Patch (RFC 6902) as {json_patch.MEDIA_TYPE}"
    )


@bp.before_request
def _check_id() -> None:
    """404 for a read or delete of an id FHIR cannot produce; 400 for a write that would create one."""
    args = request.view_args or {}
    for key in ("res_id", "claim_id"):
        value = args.get(key)
        if value is None or is_fhir_id(value):  # (PostgreSQL, for one, refuses a NUL in text)
            continue
        if value.startswith("$"):
            _other_method_of_operation(value)
        shown = value.encode("unicode_escape").decode("ascii")[:80]
        if request.method == "PUT":
            message = f"'{shown}' is not a FHIR id (1-64 of A-Z a-z 0-9 - .)"
            raise BadRequest(message, [Problem(message, expression="id", code="value")])
        raise NotFound(f"no resource has the id '{shown}' (not a FHIR id)")


def _other_method_of_operation(operation: str) -> None:
    """405 naming POST for a GET (PUT, DELETE ...) of a type-level operation that is only POSTed
    (`GET Claim/$submit`), which the instance routes would otherwise take for an id: as any route
    answers a method it does not take. Not an operation we have: back to the id check. Only an
    operation route counts: a POST that reaches another route (the read-only conformance types'
    405, `GET ValueSet/$expand`) does not mean the operation is there to be POSTed."""
    try:
        rule, _ = current_app.url_map.bind("localhost").match(request.path, method="POST", return_rule=True)
    except HTTPException:
        return
    if "$" not in rule.rule:
        return
    raise MethodNotAllowed(valid_methods=["POST"], description=f"{operation} is invoked with POST")


def read_json_body() -> dict[str, Any]:
    """The request body as a JSON object; 400 for anything that is not RFC 8259 JSON in UTF-8."""
    raw = request.get_data(cache=True)
    if not raw:
        raise BadRequest("the request body is empty")
    try:
        body = jsonio.loads_body(raw)
    except jsonio.JsonError as exc:
        if exc.expression is not None:  # valid JSON, but a string no FHIR element may hold
            raise BadRequest(str(exc), [Problem(str(exc), expression=exc.expression, code="value")]) from None
        message = f"the body is not valid JSON: {exc}"
        raise BadRequest(message, [Problem(message, code="structure")]) from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object (a FHIR resource)")
    return body


def read_json_patch() -> list[dict[str, Any]]:
    """The request body as JSON Patch operations: 415 for another content type (an empty body
    passes the before-request check), 400 for a body that is not JSON or no array of well-formed
    operations."""
    _check_patch_type(request.mimetype)
    raw = request.get_data(cache=True)
    if not raw:
        raise BadRequest("the request body is empty: send a JSON Patch (an array of operations)")
    try:
        document = jsonio.loads_body(raw)
    except jsonio.JsonError as exc:
        message = f"the body is not valid JSON: {exc}"
        raise BadRequest(message, [Problem(message, code="structure")]) from None
    return json_patch.parse_patch(document)


def parameters_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `parameter` entries of a Parameters body; 400 naming any entry that is no object with a name.

    ($reverse, $validate: a malformed entry, as in "parameter": "x", was once an AttributeError: a 500).
    """
    entries = body.get("parameter", [])
    if not isinstance(entries, list):
        message = "Parameters.parameter must be an array of parameters"
        raise BadRequest(message, [Problem(message, expression="Parameters.parameter", code="structure")])
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            path = f"Parameters.parameter[{index}]"
            message = f"{path} must be an object with a name (string)"
            raise BadRequest(message, [Problem(message, expression=path, code="structure")])
    return entries


def base_url() -> str:
    """The FHIR base URL callers should use in links."""
    configured = current_app.config.get("FHIR_BASE_URL")
    return str(configured).rstrip("/") if configured else request.url_root.rstrip("/") + "/fhir"


def _known_type(resource_type: str) -> None:
    if resource_type not in RESOURCES:
        raise NotFound(
            f"unknown resource type {resource_type!r}",
            [Problem(f"unknown resource type {resource_type!r}", code="not-supported")],
        )


def with_actor(resource_type: str, permission: str, work: Callable[[Session, Actor], T]) -> T:
    """Check token and scope, then run the work in one unit of work as the caller's Actor."""
    principal = require(resource_type, permission)
    with database.unit_of_work(read_only=permission in ("r", "s")) as session:
        actor = actor_for(
            session, name=principal.client_id, kind="client", organization_id=principal.organization_id
        )
        g.actor = actor
        return work(session, actor)


def _headers(stored: Stored, *, location: bool = False) -> dict[str, str]:
    headers = version_headers(stored)
    if location:
        headers["Location"] = f"{base_url()}/{stored.res_type}/{stored.res_id}/_history/{stored.version_id}"
        headers["Content-Location"] = headers["Location"]
    return headers


def _write_response(result: service.WriteResult) -> Response:
    status = 201 if result.created else 200
    headers = _headers(result.stored, location=True)
    prefer = request.headers.get("Prefer", "")
    if "return=minimal" in prefer:
        return Response(status=status, headers=headers)
    if "return=OperationOutcome" in prefer:
        issues = result.warnings or [Problem("stored", code="informational", severity="information")]
        return fhir_response(operation_outcome(issues), status, headers)
    return fhir_response(result.stored.content, status, headers)


# ------------------------------------------------------------------ capability and conformance


@bp.get("/metadata")
def metadata() -> Response:
    """The CapabilityStatement (no token needed)."""
    return fhir_response(capability_statement(base_url()))


@bp.get("/.well-known/smart-configuration")
def smart_configuration() -> Response:
    """SMART discovery: where to get a token and which scopes there are (no token needed)."""
    response = jsonify(smart_document(base_url()))
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.route("/metadata", methods=["POST", "PUT", "PATCH", "DELETE"])
def metadata_write() -> Response:
    """405: without this route the type-level routes (conditional update, delete, patch) would take
    `metadata` for a resource type and answer 404."""
    raise MethodNotAllowed(valid_methods=["GET"], description="the CapabilityStatement is read-only")


CONFORMANCE = "/<any(StructureDefinition,CodeSystem,ValueSet):resource_type>"


@bp.get(CONFORMANCE)
def conformance_search(resource_type: str) -> Response:
    """Our profiles, code systems and value sets (see `fhir.conformance` for the parameters)."""
    return _conformance_search(resource_type, list(request.args.items(multi=True)))


@bp.post(f"{CONFORMANCE}/_search")
def conformance_search_post(resource_type: str) -> Response:
    """The same search with its parameters in a form body (and the query string)."""
    args = [*request.args.items(multi=True), *request.form.items(multi=True)]
    return _conformance_search(resource_type, args)


def _conformance_search(resource_type: str, args: list[tuple[str, str]]) -> Response:
    require(resource_type, "s")
    found = conformance.search(resource_type, args)
    subset = parse_subset(args, search=True)
    total = len(found)
    shown = [] if dict(args).get("_summary") == "count" else found[: _count_arg()]
    if subset is not None:
        shown = [cut(resource, subset) for resource in shown]
    bundle = bundle_json.searchset_from_dicts(base_url(), resource_type, shown, request.full_path)
    bundle["total"] = total
    return fhir_response(bundle)


@bp.route(CONFORMANCE, methods=["POST", "PUT", "PATCH", "DELETE"])
@bp.route(f"{CONFORMANCE}/<res_id>", methods=["POST", "PUT", "PATCH", "DELETE"])
def conformance_write(resource_type: str, res_id: str | None = None) -> Response:
    """They ship with the software: read and search only (405, not the 404 of an unknown type)."""
    raise MethodNotAllowed(valid_methods=["GET"], description=f"{resource_type} resources are read-only here")


@bp.get(f"{CONFORMANCE}/<res_id>/_history/<vid>")
def conformance_vread(resource_type: str, res_id: str, vid: str) -> Response:
    """Version 1, the only one, of a conformance resource."""
    if vid != conformance.VERSION_ID:
        require(resource_type, "r")
        raise NotFound(f"{resource_type}/{res_id}/_history/{vid} is not known")
    return conformance_read(resource_type, res_id)


@bp.get(f"{CONFORMANCE}/<res_id>/_history")
def conformance_history(resource_type: str, res_id: str) -> Response:
    """The history of a conformance resource: its one version."""
    require(resource_type, "r")
    resource = conformance.read(resource_type, res_id)
    if resource is None:
        raise NotFound(f"{resource_type}/{res_id} is not known")
    return fhir_response({
        "resourceType": "Bundle", "type": "history", "total": 1,
        "link": [{"relation": "self", "url": f"{base_url()}/{resource_type}/{res_id}/_history"}],
        "entry": [{
            "fullUrl": f"{base_url()}/{resource_type}/{res_id}", "resource": resource,
            "request": {"method": "POST", "url": resource_type},
            "response": {"status": "201", "etag": f'W/"{conformance.VERSION_ID}"',
                         "lastModified": resource["meta"]["lastUpdated"]},
        }],
    })


@bp.get(f"{CONFORMANCE}/<res_id>")
def conformance_read(resource_type: str, res_id: str) -> Response:
    """One conformance resource by id, with its ETag and Last-Modified."""
    require(resource_type, "r")
    resource = conformance.read(resource_type, res_id)
    if resource is None:
        raise NotFound(f"{resource_type}/{res_id} is not known")
    headers = {
        "ETag": f'W/"{conformance.VERSION_ID}"',
        "Last-Modified": http_date(conformance.last_updated(resource)),
    }
    return fhir_response(resource, headers=headers)


# ------------------------------------------------------------------------- instance level


@bp.get("/AuditEvent/<res_id>")
def audit_event_read(res_id: str) -> Response:
    """read an AuditEvent (from the audit log)."""
    event = with_actor("AuditEvent", "r", lambda s, a: audit_events.read_audit_event(s, a, res_id))
    return fhir_response(event)


@bp.get("/AuditEvent")
def audit_event_search() -> Response:
    """search the audit log, newest first."""
    args = list(request.args.items(multi=True))
    count = _count_arg()
    events, nxt, total = with_actor("AuditEvent", "s", lambda s, a: audit_events.search_audit_events(
        s, a, [(k, v) for k, v in args if k != "_count"], count=count))
    links = [{"relation": "self", "url": request.url}]
    if nxt is not None:
        kept = [(k, v) for k, v in args if k != "_cursor"]
        links.append({"relation": "next",
                      "url": f"{base_url()}/AuditEvent?{urlencode([*kept, ('_cursor', str(nxt))])}"})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if events:  # (a FHIR array is never empty)
        bundle["entry"] = [{"fullUrl": f"{base_url()}/AuditEvent/{e['id']}", "resource": e,
                            "search": {"mode": "match"}} for e in events]
    return fhir_response(bundle)


@bp.get("/<resource_type>/<res_id>")
def read(resource_type: str, res_id: str) -> Response:
    """read: the current version, served from the stored JSON."""
    _known_type(resource_type)
    subset = parse_subset(request.args.items(multi=True), search=False)
    stored = with_actor(
        resource_type,
        "r",
        lambda s, a: service.read(s, a, resource_type, res_id, request_id=g.get("request_id")),
    )
    return _read_answer(stored, subset)


@bp.get("/<resource_type>/<res_id>/_history/<vid>")
def vread(resource_type: str, res_id: str, vid: str) -> Response:
    """vread: one version."""
    _known_type(resource_type)
    version = int_key(vid)
    if version is None:
        raise NotFound(f"{resource_type}/{res_id}/_history/{vid} is not known")
    subset = parse_subset(request.args.items(multi=True), search=False)
    stored = with_actor(
        resource_type,
        "r",
        lambda s, a: service.read(
            s, a, resource_type, res_id, version_id=version, request_id=g.get("request_id")
        ),
    )
    return _read_answer(stored, subset)


def _read_answer(stored: Stored, subset: Subset | None) -> Response:
    """200 with the resource (`subset`: the part asked for by `_summary` or `_elements`); 304 Not
    Modified, with the ETag and no body, when If-None-Match names the version served or is `*`, or
    (without If-None-Match) If-Modified-Since is not before it (RFC 9110 13.1.2-13.1.3, FHIR
    http.html#cread). Access was checked and the read audited as for a 200: the caller learns the
    version it already holds is current."""
    headers = _headers(stored)
    if not_modified(request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since"), stored):
        return Response(status=304, headers=headers)
    content = stored.content if subset is None else cut_json(stored.content, subset)
    return fhir_response(content, 200, headers)


@bp.put("/<resource_type>/<res_id>")
def update(resource_type: str, res_id: str) -> Response:
    """update (and update-as-create with the client's id); If-Match guards against lost updates."""
    _known_type(resource_type)
    body = read_json_body()
    require_update_id(resource_type, body, res_id)
    result = with_actor(
        resource_type,
        "u",
        lambda s, a: service.update(
            s,
            a,
            resource_type,
            res_id,
            body,
            if_match=request.headers.get("If-Match"),
            request_id=g.get("request_id"),
        ),
    )
    return _write_response(result)


@bp.patch("/<resource_type>/<res_id>")
def patch(resource_type: str, res_id: str) -> Response:
    """patch (JSON Patch): applied to the current version, stored as an update of it would be."""
    _known_type(resource_type)
    operations = read_json_patch()
    result = with_actor(
        resource_type,
        "u",
        lambda s, a: service.patch(
            s, a, resource_type, res_id, operations, if_match=request.headers.get("If-Match"),
            request_id=g.get("request_id"),
        ),
    )
    return _write_response(result)


@bp.delete("/<resource_type>/<res_id>")
def delete(resource_type: str, res_id: str) -> Response:
    """delete: later reads answer 410."""
    _known_type(resource_type)
    with_actor(
        resource_type,
        "d",
        lambda s, a: service.delete(s, a, resource_type, res_id, request_id=g.get("request_id")),
    )
    return Response(status=204)  # (no Content-Type: `responses.no_type_without_body`)


@bp.get("/<resource_type>/<res_id>/_history")
def instance_history(resource_type: str, res_id: str) -> Response:
    """Every version of one resource, newest first."""
    _known_type(resource_type)
    return _history(resource_type, res_id)


register_operation(
    "Patient", "everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    "GET Patient/{id}/$everything: the patient's record that the client may see (the Patient, then "
    "every resource of hers of the types its scopes let it read), in pages of `_count`, with the "
    "organisations and practitioners they refer to as includes; `_type` narrows the types, `_since` "
    "keeps what changed since. `start` and `end` are not supported (400).",
)
_EVERYTHING_ARGS = frozenset({"_count", "_type", "_since", "_cursor", "_format", "_pretty"})


@bp.get("/Patient/<res_id>/$everything")
def patient_everything(res_id: str) -> Response:
    """The patient's whole record, paged in storage order (the cursor is the last row's position)."""
    unknown = sorted({k for k in request.args if k not in _EVERYTHING_ARGS})
    if unknown:
        detail = "start and end (care dates) are not supported" if {"start", "end"} & set(unknown) else ""
        message = f"$everything does not take {', '.join(unknown)}" + (f": {detail}" if detail else "")
        raise BadRequest(message, [Problem(message, expression=unknown[0], code="not-supported")])
    count = _count_arg()
    since = bundle_json.parse_since(request.args.get("_since"))
    after = 0
    if cursor := request.args.get("_cursor"):
        position = decode_cursor(cursor).get("pk")
        if not isinstance(position, int) or not 0 <= position < 2**63:
            raise BadRequest("the paging cursor is not valid")
        after = position
    principal = current_principal()
    types = everything.compartment_types(
        request.args.get("_type"), [t for t in everything.COMPARTMENT if principal.may(t, "r")]
    )

    def work(session: Session, actor: Actor) -> bytes:
        page = everything.everything(
            session, actor, res_id, types, count=count, after=after, since=since,
            request_id=g.get("request_id"),
        )
        nxt = None if page.next_after is None else encode_cursor({"pk": page.next_after})
        total = len(page.matches) if page.next_after is None and not after and count else None
        return bundle_json.compartment_set(
            base_url(), request.path, list(request.args.items(multi=True)), page.matches, page.included,
            nxt, total=total,
        )

    return fhir_response(with_actor("Patient", "r", work))


@bp.get("/<resource_type>/_history")
def type_history(resource_type: str) -> Response:
    """Every version of every resource of the type, newest first."""
    _known_type(resource_type)
    return _history(resource_type, None)


def _history(resource_type: str, res_id: str | None) -> Response:
    count = _count_arg()
    since = bundle_json.parse_since(request.args.get("_since"))
    at = bundle_json.parse_at(request.args.get("_at"))
    cursor = bundle_json.parse_history_cursor(request.args.get("_cursor"))
    subset = parse_subset(request.args.items(multi=True), search=False)

    def work(session: Session, actor: Actor) -> bytes:
        total: int | None = None
        if res_id is not None:
            with suppress(Gone):  # a deleted resource keeps its history, its deletion first
                service.read(session, actor, resource_type, res_id)  # 404 when unknown or hidden
            # One resource's versions are few and share its visibility: their count is exact and cheap.
            total = history.instance_total(session, resource_type, res_id, since=since, at=at)
        page, nxt = ResourceStore(session).history(
            resource_type, res_id, actor, count=count, since=since, at=at, before=cursor
        ) if count else ([], None)  # _count=0: no entries
        if total is None and cursor is None and nxt is None and count:
            total = len(page)  # a type's whole history on its first page: exact without counting
        return bundle_json.history_bundle(
            base_url(), request.path, dict(request.args), page, nxt, total=total, subset=subset
        )

    return fhir_response(with_actor(resource_type, "r", work))


# ----------------------------------------------------------------------------- type level


def _count_arg() -> int:
    """The page size asked for: the default when absent, at most the maximum; 0 asks for no entries."""
    raw = request.args.get("_count")
    default, maximum = current_app.config["FHIR_DEFAULT_COUNT"], current_app.config["FHIR_MAX_COUNT"]
    if raw is None:
        return int(default)
    if not (raw.isascii() and raw.isdigit()):
        message = f"_count must be a whole number, not {raw[:50]!r}"
        raise BadRequest(message, [Problem(message, expression="_count")])
    # (int() refuses more than 4,300 digits; a number of more than 9 is beyond any maximum anyway)
    return min(int(raw), int(maximum)) if len(raw) <= 9 else int(maximum)


@bp.get("/<resource_type>")
def search(resource_type: str) -> Response:
    """search by GET."""
    _known_type(resource_type)
    query_text = request.query_string.decode("utf-8", "replace")
    return _search(resource_type, list(request.args.items(multi=True)), query_text)


@bp.post("/<resource_type>/_search")
def search_post(resource_type: str) -> Response:
    """search by POST (form body plus any query string)."""
    _known_type(resource_type)
    args = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return _search(resource_type, args, urlencode(args))


def _search(resource_type: str, args: list[tuple[str, str]], query_text: str) -> Response:
    """One page; `query_text` (the parameters as sent) goes into the audit row."""
    cfg = current_app.config
    query = parse_search(resource_type, args, cfg["FHIR_DEFAULT_COUNT"], cfg["FHIR_MAX_COUNT"],
                         lenient=_prefers_lenient())
    service.authorise_includes(query, current_principal().may)  # included types need their own scopes
    page = with_actor(
        resource_type,
        "s",
        lambda s, a: service.search(s, a, query, query_text=query_text, request_id=g.get("request_id")),
    )
    return fhir_response(bundle_json.searchset(base_url(), resource_type, query, page))


def _prefers_lenient() -> bool:
    """`Prefer: handling=lenient` (RFC 7240, FHIR search.html#errors): ignore unknown parameters."""
    prefer = ",".join(request.headers.getlist("Prefer"))
    return any(p.strip().replace(" ", "").lower() == "handling=lenient"
               for part in prefer.split(",") for p in part.split(";"))


@bp.post("/<resource_type>")
def create(resource_type: str) -> Response:
    """create, or conditional create with If-None-Exist."""
    _known_type(resource_type)
    condition = request.headers.get("If-None-Exist")
    if condition is not None and is_empty_condition(condition):
        message = ("If-None-Exist names no search criteria (it would match every resource): send a "
                   "query such as identifier=system|value, or no header")
        raise BadRequest(message, [Problem(message, expression="If-None-Exist", code="invalid")])
    body = read_json_body()
    result = with_actor(
        resource_type,
        "c",
        lambda s, a: service.create(
            s,
            a,
            resource_type,
            body,
            if_none_exist=condition,
            request_id=g.get("request_id"),
        ),
    )
    return _write_response(result)


def _url_criteria() -> str:
    """The search criteria of a conditional update, delete or patch: the query string without the
    parameters that shape the answer (`_format`, `_pretty`). Whether they name any criteria is
    checked by the service (400 when not)."""
    kept = [(k, v) for k, v in request.args.items(multi=True) if k not in ("_format", "_pretty")]
    return urlencode(kept)


@bp.put("/<resource_type>")
def conditional_update(resource_type: str) -> Response:
    """conditional update (PUT Type?criteria): the one match is updated, none: created, several: 412."""
    _known_type(resource_type)
    criteria = _url_criteria()
    body = read_json_body()
    result = with_actor(
        resource_type,
        "u",
        lambda s, a: service.conditional_update(
            s, a, resource_type, criteria, body, if_match=request.headers.get("If-Match"),
            request_id=g.get("request_id"),
        ),
    )
    return _write_response(result)


@bp.delete("/<resource_type>")
def conditional_delete(resource_type: str) -> Response:
    """conditional delete (DELETE Type?criteria), single mode: the one match is deleted; none: 204
    with nothing deleted; several: 412."""
    _known_type(resource_type)
    criteria = _url_criteria()
    request_id = g.get("request_id")
    with_actor(
        resource_type,
        "d",
        lambda s, a: service.conditional_delete(s, a, resource_type, criteria, request_id=request_id),
    )
    return Response(status=204)


@bp.patch("/<resource_type>")
def conditional_patch(resource_type: str) -> Response:
    """conditional patch (PATCH Type?criteria): the one match the client sees is patched; none: 404;
    several: 412 (FHIR http.html#patch, as for conditional update)."""
    _known_type(resource_type)
    criteria = _url_criteria()
    operations = read_json_patch()

    def work(session: Session, actor: Actor) -> service.WriteResult:
        target = service.visible_match(session, actor, resource_type, criteria)
        if target is None:
            raise NotFound(f"no {resource_type} this client sees matches the criteria")
        return service.patch(session, actor, resource_type, target, operations,
                             if_match=request.headers.get("If-Match"), request_id=g.get("request_id"))

    return _write_response(with_actor(resource_type, "u", work))


@bp.post("/<resource_type>/$validate")
@bp.post("/<resource_type>/<res_id>/$validate")
def validate(resource_type: str, res_id: str | None = None) -> Response:
    """$validate: every problem at once, as an OperationOutcome (200 even when invalid)."""
    _known_type(resource_type)
    require(resource_type, "r")
    body = read_json_body()
    if body.get("resourceType") == "Parameters":
        inner = next((p.get("resource") for p in parameters_of(body) if p["name"] == "resource"), None)
        if not isinstance(inner, dict):
            raise BadRequest("Parameters must hold the resource to validate in parameter 'resource'")
        body = inner
    try:
        warnings = check_resource(resource_type, body, url_id=res_id)
    except DomainError as exc:
        return fhir_response(operation_outcome(exc.problems))
    issues = warnings or [Problem("no problems found", code="informational", severity="information")]
    return fhir_response(operation_outcome(issues))


# ----------------------------------------------------------------------------- system level


@bp.post("")
@bp.post("/")
def transaction() -> Response:
    """transaction and batch Bundles (scopes are checked per entry)."""
    body = read_json_body()
    principal = current_principal()
    with database.unit_of_work() as session:
        actor = actor_for(
            session, name=principal.client_id, kind="client", organization_id=principal.organization_id
        )
    response_bundle, status = bundles.process(body, principal.may, actor, base_url(), database)
    if "return=minimal" in request.headers.get("Prefer", ""):
        _without_written_resources(body, response_bundle)
    return fhir_response(response_bundle, status)


def _without_written_resources(asked: dict[str, Any], answer: dict[str, Any]) -> None:
    """`Prefer: return=minimal` (FHIR http.html#ops): the entries of writes answer their status,
    location and ETag, not the resource stored (a read or search entry keeps what it asked for)."""
    requests = asked.get("entry")
    for entry, raw in zip(answer.get("entry") or [], requests if isinstance(requests, list) else [],
                          strict=False):
        req = raw.get("request") if isinstance(raw, dict) else None  # (a batch answers malformed ones)
        if isinstance(req, dict) and req.get("method") in ("POST", "PUT", "PATCH"):
            entry.pop("resource", None)
