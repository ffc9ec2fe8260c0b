"""Claim operations: POST /fhir/Claim/$submit (one-stop settlement) and /fhir/Claim/{id}/$reverse."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g

from ..domain.errors import BadRequest, Forbidden, Problem
from ..extensions import csrf
from ..fhir.capability import register_operation
from ..fhir.store import instant, now_ms
from ..services import settlement
from .fhir import _check_body, _check_id, base_url, parameters_of, read_json_body, with_actor
from .guard import current_principal
from .responses import fhir_response

REVIEW_NOTE = "computed on accumulators that included the reversed claim: review"
bp = Blueprint("claims", __name__, url_prefix="/fhir")
csrf.exempt(bp)
bp.before_request(_check_body)  # the same 413 / 415 checks as every /fhir route
bp.before_request(_check_id)  # and the same id grammar

register_operation(
    "Claim", "submit", "http://hl7.org/fhir/OperationDefinition/Claim-submit",
    "Settles the claim (one-stop, every payer) and answers the ClaimResponse itself. The body is the "
    "Claim, a Bundle holding the Claim and what it references, or Parameters with one `resource` "
    "parameter holding either.",
)
register_operation(
    "Claim", "reverse", "http://referral-service.example/fhir/OperationDefinition/Claim-reverse",
    "冲销: reverses the Claim's settlement with a `reason` (Parameters). Needs system/Claim.c (what "
    "$submit needs) or system/Claim.u; allowed to the hospital that is the claim's provider, the "
    "insurance office and the county platform.",
)


def submitted_resource(body: dict[str, Any]) -> dict[str, Any]:
    """What `$submit` is given: the body itself, or, in the standard form of an operation's input,
    the one `resource` parameter of a Parameters body (400 naming the parameter otherwise)."""
    if body.get("resourceType") != "Parameters":
        return body
    entries = parameters_of(body)
    for index, entry in enumerate(entries):
        if entry["name"] != "resource":
            where = f"Parameters.parameter[{index}]"
            message = f"{where}: $submit takes one parameter, 'resource' (not {entry['name']!r})"
            raise BadRequest(message, [Problem(message, expression=where, code="not-supported")])
    if len(entries) != 1:
        message = "$submit takes Parameters with exactly one 'resource' parameter (a Claim or a Bundle)"
        raise BadRequest(message, [Problem(message, expression="Parameters.parameter", code="required")])
    resource = entries[0].get("resource")
    if not isinstance(resource, dict):
        where = "Parameters.parameter[0].resource"
        message = f"{where} must hold the Claim (or a Bundle with it)"
        raise BadRequest(message, [Problem(message, expression=where, code="required")])
    return resource


@bp.post("/Claim/$submit")
def submit() -> Response:
    """Settle a Claim (or a Bundle with the Claim and what it references; either may come as the
    `resource` parameter of Parameters); answers the ClaimResponse."""
    body = submitted_resource(read_json_body())

    def work(session: Any, actor: Any) -> settlement.SubmitResult:
        if body.get("resourceType") == "Bundle":
            return settlement.submit_bundle(session, actor, body)
        return settlement.submit_claim(session, actor, body)

    result = with_actor("Claim", "c", work)
    g.settlement_id = result.settlement_id
    return fhir_response(result.claim_response, 200)


def _reverse_permission() -> str:
    """The scope a reversal needs: `c` on Claim, as `$submit`, or `u` (403 with neither).

    DESIGN leaves open who may reverse. A reversal (冲销) is done at the settlement desk of the
    hospital that settled the claim, the same desk that submits, so the permission to submit claims
    is enough to reverse them; `reverse_settlement` then lets only the claim's provider (the
    submitter's own organisation, as for `$submit`), the insurance office or the platform do it.
    """
    principal = current_principal()
    for permission in ("c", "u"):
        if principal.may("Claim", permission):
            return permission
    raise Forbidden("the token's scopes do not allow reversing claims (needs system/Claim.c, as for "
                    "$submit, or system/Claim.u)")


@bp.post("/Claim/<claim_id>/$reverse")
def reverse(claim_id: str) -> Response:
    """冲销: reverse the settlement of a Claim with a reason (Parameters `reason`)."""
    body = read_json_body()
    if body.get("resourceType") != "Parameters":
        raise BadRequest("$reverse takes Parameters with a 'reason' (valueString)")
    reason = ""
    for index, param in enumerate(parameters_of(body)):
        if param["name"] == "reason":
            value = param.get("valueString", "")
            if not isinstance(value, str):
                where = f"Parameters.parameter[{index}].valueString"
                raise BadRequest(f"{where} must be a string",
                                 [Problem(f"{where} must be a string", expression=where, code="structure")])
            reason = value
            break
    result = with_actor(
        "Claim", _reverse_permission(), lambda s, a: settlement.reverse_settlement(s, a, claim_id, reason)
    )
    return fhir_response(
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "claimResponse", "resource": result.claim_response},
                {"name": "reversed", "valueDateTime": instant(now_ms())},
                *(
                    {
                        "name": "laterSettlement",
                        "part": [
                            {"name": "claim", "valueReference": {"reference": f"Claim/{s.claim_id}"}},
                            {
                                "name": "claimResponse",
                                "valueReference": {"reference": f"ClaimResponse/{s.claim_response_id}"},
                            },
                            {"name": "dischargeDate", "valueDate": s.discharge_date.isoformat()},
                            {
                                "name": "note",
                                "valueString": REVIEW_NOTE,
                            },
                        ],
                    }
                    for s in result.later
                ),
            ],
            "meta": {"source": base_url()},
        }
    )
