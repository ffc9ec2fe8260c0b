"""Export endpoints: settlement files for the insurance office (/exports) and FHIR Bulk Data `$export`.

The settlement exporter lives in `referral_service.exports`, a sibling layer this package may not
import; `create_app` hands it over through `init_app` (and keeps it in `app.extensions` for the web
forms).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol

from flask import Blueprint, Flask, Response, current_app, g, request, send_file, session
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.exceptions import UnsupportedMediaType

from ..domain.actor import Actor
from ..domain.base import new_id
from ..domain.days import DayOutOfRange, parse_day
from ..domain.errors import BadRequest, Forbidden, Gone, NotFound, Problem, Unauthorized
from ..domain.exports import ExportLog, Recipient, may_download_exports, may_receive_full_identity
from ..extensions import csrf, database
from ..fhir import bundle_json
from ..fhir.capability import register_operation
from ..fhir.outcome import operation_outcome
from ..services import bulk_export
from ..services.actors import actor_for
from ..services.ledger_scope import exports_seen
from .fhir import FHIR_MIME_TYPES, base_url, parameters_of, read_json_body
from .guard import current_principal
from .responses import fhir_response

bp = Blueprint("exports", __name__)
csrf.exempt(bp)

EXTENSION_KEY = "settlement_exports"
NDJSON = "application/fhir+ndjson"
BULK_OPERATION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
PATIENT_OPERATION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
MIME_TYPES = {
    ".csv": "text/csv",  # Werkzeug adds "; charset=utf-8" to text types (once)
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".json": "application/json",
}
# The export reads settlement detail (what an ExplanationOfBenefit holds) of patients: a client needs this.
CLIENT_EXPORT_SCOPE = ("ExplanationOfBenefit", "r")
start_bulk_worker = bulk_export.start_worker  # replaced in tests that drive the worker by hand


class SettlementExporter(Protocol):
    """`referral_service.exports.settlements.export_settlements`, as this layer sees it."""

    def __call__(self, session: Session, recipient: Recipient, request: Any, out_dir: Path, *,
                 progress: Callable[[int], None] | None = None, request_id: str | None = None) -> Any: ...


def init_app(
    app: Flask, exporter: SettlementExporter, request_type: type, export_root: Callable[..., Path]
) -> None:
    """Register the blueprint and the `$export` operations; keep the exporter for the handlers."""
    app.extensions[EXTENSION_KEY] = {"export": exporter, "request": request_type, "root": export_root}
    register_operation("", "export", BULK_OPERATION)
    register_operation("Patient", "export", PATIENT_OPERATION)
    app.register_blueprint(bp)


# ------------------------------------------------------------------------------ who may download


def _actor(db: Session) -> Actor:
    principal = current_principal()
    return actor_for(db, name=principal.client_id, kind="client", organization_id=principal.organization_id)


def _web_user() -> Any:
    """The signed-in web user, if any (no session cookie: none, without touching the login loader)."""
    if "_user_id" not in session:
        return None
    user = current_user
    return user if getattr(user, "is_authenticated", False) else None


def export_recipient() -> Recipient:
    """The caller as an export recipient: an `insurer` web user or the insurance bureau's API client."""
    if request.headers.get("Authorization"):
        principal = current_principal()
        if not principal.may(*CLIENT_EXPORT_SCOPE):
            raise Forbidden("the token's scopes do not allow reading settlement detail "
                            "(needs system/ExplanationOfBenefit.r)")
        with database.unit_of_work() as db:
            actor = _actor(db)
        role = "insurer" if actor.is_insurer else None
        if not may_download_exports(role):
            raise Forbidden("settlement exports are for the medical insurance bureau")
        return Recipient(principal.client_id, "client", role, actor.organization_id)
    user = _web_user()
    if user is None:
        raise Unauthorized("sign in as an insurance office user, or send a bearer token")
    role = getattr(user, "role", None)
    if not may_download_exports(role):
        raise Forbidden("settlement exports are for the insurance office (role insurer)")
    return Recipient(str(user.username), "user", role, getattr(user, "organization_id", None))


# -------------------------------------------------------------------------- settlement exports


def _day(name: str) -> date:
    raw = request.args.get(name)
    if not raw:
        raise BadRequest(f"the query parameter {name} (YYYY-MM-DD) is required")
    try:
        return parse_day(raw)
    except DayOutOfRange as exc:
        raise BadRequest(f"{name}: {exc}") from None
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not a date (YYYY-MM-DD)") from None


def _send(path: Path, headers: dict[str, str]) -> Response:
    response = send_file(path, mimetype=MIME_TYPES.get(path.suffix, "application/octet-stream"),
                         as_attachment=True, download_name=path.name, conditional=False)
    response.headers.update(headers)
    return response


@bp.get("/exports/settlements")
def settlement_export() -> Response:
    """Make a settlement export now and download it (?fund&from&to&hospital&format&identity)."""
    recipient = export_recipient()
    wiring = current_app.extensions[EXTENSION_KEY]
    fmt = request.args.get("format", "csv")
    fund = request.args.get("fund") or None
    export_request = wiring["request"](
        _day("from"), _day("to"), fund=None if fund == "all" else fund,
        hospital_id=request.args.get("hospital") or None, formats=(fmt,),
        identity=request.args.get("identity", "masked"),
    )
    out_dir = wiring["root"](current_app.config) / "downloads" / new_id()
    with database.unit_of_work() as db:
        result = wiring["export"](db, recipient, export_request, out_dir, request_id=g.get("request_id"))
    path = result.files[0]
    info = result.manifest["files"][0]
    return _send(path, {
        "X-Export-Id": result.export_id,
        "X-Content-SHA256": info["sha256"],
        "Link": f'</exports/{result.export_id}/{result.manifest_path.name}>; rel="describedby"',
    })


@bp.get("/exports")
def export_list() -> Response:
    """The latest settlement exports recorded for the caller's organisation (newest first), with their
    files and checksums."""
    recipient = export_recipient()
    with database.unit_of_work() as db:
        rows = db.scalars(
            select(ExportLog)
            .where(ExportLog.kind == "settlements", exports_seen(recipient.organization_id))
            .order_by(ExportLog.created_at.desc())
            .limit(100)
        ).all()
        listing = [
            {"id": r.id, "created": r.created_at.isoformat(), "by": r.actor_name, "parameters": r.parameters,
             "rows": r.row_count, "totals": r.totals, "identity": r.identity,
             "files": [{**f, "url": f"/exports/{r.id}/{f['name']}"} for f in r.files]}
            for r in rows
        ]
    return current_app.response_class(
        current_app.json.dumps({"exports": listing}), mimetype="application/json"
    )


@bp.get("/exports/<export_id>/<name>")
def export_file(export_id: str, name: str) -> Response:
    """Download one file (data or manifest) of a settlement export recorded for the caller's
    organisation (another's answers as unknown, 404); the download is logged."""
    recipient = export_recipient()
    with database.unit_of_work() as db:
        record = db.scalars(select(ExportLog).where(
            ExportLog.id == export_id, exports_seen(recipient.organization_id))).first()
        entry = None
        if record is not None and record.kind == "settlements":
            entry = next((f for f in record.files if f.get("name") == name), None)
        if record is None or entry is None or not record.location:
            raise NotFound(f"no file {name} in export {export_id}")
        if record.identity == "full" and not may_receive_full_identity(recipient.role):
            raise Forbidden("this export carries full identity numbers, which your role may not receive")
        path = Path(record.location) / name
        if not path.is_file():
            raise Gone(f"the file {name} of export {export_id} was removed")
        db.add(ExportLog(
            kind="download", actor_name=recipient.name, actor_kind=recipient.kind, role=recipient.role,
            organization_id=recipient.organization_id, parameters={"export_id": export_id, "file": name},
            identity=record.identity, row_count=int(entry.get("rows") or 0), totals={},
            files=[entry], location=record.location, request_id=g.get("request_id"),
        ))
    headers = {"X-Export-Id": export_id}
    if entry.get("sha256"):
        headers["X-Content-SHA256"] = str(entry["sha256"])
    return _send(path, headers)


# ------------------------------------------------------------------------ FHIR Bulk Data $export


def _bulk_settings() -> bulk_export.BulkSettings:
    return bulk_export.BulkSettings.from_settings(current_app.config)


# The kick-off parameters this server takes (Bulk Data 2.0; _typeFilter, _elements and the rest: 400).
KICK_OFF_PARAMETERS = ("_outputFormat", "_type", "_since")


def _kick_off_arguments() -> list[tuple[str, str]]:
    """The kick-off's parameters: a GET's query; a POST's `Parameters` body (Bulk Data: `valueString`,
    `_since` as `valueInstant`), after its query if it has one."""
    arguments = list(request.args.items(multi=True))
    if request.method != "POST":
        return arguments
    if request.mimetype not in FHIR_MIME_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {request.headers.get('Content-Type') or '(none)'} is not supported; "
            "POST $export takes a Parameters resource as application/fhir+json"
        )
    body = read_json_body()
    if body.get("resourceType") != "Parameters":
        message = f"POST $export takes a Parameters resource, not {body.get('resourceType')!r}"
        raise BadRequest(message, [Problem(message, expression="resourceType", code="structure")])
    for index, entry in enumerate(parameters_of(body)):
        values = [v for k, v in entry.items() if k.startswith("value")]
        if len(values) != 1 or not isinstance(values[0], str):
            path = f"Parameters.parameter[{index}]"
            message = f"{path} ({entry['name']}) must hold one value (valueString, valueInstant)"
            raise BadRequest(message, [Problem(message, expression=path, code="structure")])
        arguments.append((entry["name"], values[0]))
    return arguments


def _kick_off(level: str) -> Response:
    principal = current_principal()
    if "respond-async" not in request.headers.get("Prefer", ""):
        raise BadRequest("$export runs asynchronously: send the header Prefer: respond-async")
    accept = request.headers.get("Accept", "")
    if accept and not any(t in accept for t in ("application/fhir+json", "application/json", "*/*")):
        raise BadRequest("$export answers in application/fhir+json (Accept)")
    arguments = _kick_off_arguments()
    unsupported = sorted({k for k, _ in arguments if k not in KICK_OFF_PARAMETERS})
    if unsupported:
        raise BadRequest(f"$export does not support {', '.join(unsupported)}")
    formats = [v for k, v in arguments if k == "_outputFormat"]
    for fmt in formats:
        if fmt not in bulk_export.OUTPUT_FORMATS:
            raise BadRequest(f"_outputFormat {fmt!r} is not supported; use application/fhir+ndjson")
    types = [t.strip() for k, v in arguments if k == "_type" for t in v.split(",") if t.strip()] or None
    sinces = [v for k, v in arguments if k == "_since"]
    if len(sinces) > 1:
        raise BadRequest("_since is given more than once")
    since = bundle_json.parse_since(sinces[0] if sinces else None)
    settings = _bulk_settings()
    with database.unit_of_work() as db:
        actor = _actor(db)
        job = bulk_export.kick_off(
            db, actor, level=level, types=types, since=since, request_url=request.url,
            may_read=lambda t: principal.may(t, "r"), request_id=g.get("request_id"),
        )
        job_id = job.id
    start_bulk_worker(database.unit_of_work, job_id, settings)
    outcome = operation_outcome([Problem(f"export {job_id} accepted", code="informational",
                                         severity="information")])
    return fhir_response(outcome, 202, {"Content-Location": f"{base_url()}/$export-status/{job_id}"})


@bp.route("/fhir/$export", methods=["GET", "POST"])
def system_export() -> Response:
    """Kick off a system-level export (async: 202 + Content-Location)."""
    return _kick_off("system")


@bp.route("/fhir/Patient/$export", methods=["GET", "POST"])
def patient_export() -> Response:
    """Kick off a Patient-level export (resources of the patients the client may see)."""
    return _kick_off("patient")


def _file_url(job_id: str, name: str) -> str:
    return f"{base_url()}/$export-file/{job_id}/{name}"


@bp.get("/fhir/$export-status/<job_id>")
def export_status(job_id: str) -> Response:
    """202 with X-Progress while running; 200 with the manifest when done; 500 when it failed."""
    principal = current_principal()
    settings = _bulk_settings()
    with database.unit_of_work() as db:
        job = bulk_export.poll(db, principal.client_id, job_id, settings)
        status, progress, error = job.status, job.progress, job.error
        resume = bulk_export.needs_worker(job, settings)
        body = bulk_export.manifest(job, _file_url) if status == "completed" else None
        expires = job.expires_at
    if status == "expired":
        raise Gone(f"export job {job_id} expired; its files were deleted")
    if resume:
        start_bulk_worker(database.unit_of_work, job_id, settings)
    if status in ("accepted", "in-progress"):
        return Response(status=202, headers={"X-Progress": progress or "queued", "Retry-After": "2"})
    if status == "failed":
        outcome = operation_outcome([Problem(error or "the export failed", code="exception")])
        return fhir_response(outcome, 500)
    headers = {"Expires": format_datetime(expires, usegmt=True)} if expires else {}
    response = current_app.response_class(
        current_app.json.dumps(body), status=200, mimetype="application/json"
    )
    response.headers.update(headers)
    return response


@bp.delete("/fhir/$export-status/<job_id>")
def export_cancel(job_id: str) -> Response:
    """Cancel a running export or delete a finished one's files (202); later polls answer 404."""
    principal = current_principal()
    settings = _bulk_settings()
    with database.unit_of_work() as db:
        bulk_export.cancel(db, principal.client_id, job_id, settings)
    return Response(status=202)


@bp.get("/fhir/$export-file/<job_id>/<name>")
def export_output(job_id: str, name: str) -> Response:
    """One NDJSON output file, for the client that asked for the export (same bearer token rules)."""
    principal = current_principal()
    settings = _bulk_settings()
    with database.unit_of_work() as db:
        actor = _actor(db)
        path = bulk_export.output_file(db, principal.client_id, job_id, name, settings, actor,
                                       request_id=g.get("request_id"))
    return send_file(path, mimetype=NDJSON, conditional=False, download_name=name)
