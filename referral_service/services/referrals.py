"""The referral workflow (基层首诊、疑难上转、康复回家): decide, refer up, admit, discharge, refer down."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..domain.actor import SYSTEM, Actor
from ..domain.errors import Conflict, Forbidden, NotFound, Problem, Unprocessable
from ..domain.fhir_store import StoredResource
from ..domain.registry import Organization
from ..fhir import codes, jsonio, profiles
from ..fhir.mappers import referral as shapes
from ..fhir.search_params import SHANGHAI, parse_date_range, shanghai_date
from ..fhir.store import ResourceStore, Stored, instant, now_ms
from ..rules import Decision, DefaultRuleSets, MatchedRule, evaluate, load_default_rule_sets
from . import resources as service
from .visit_facts import encounter_start, facts_of, load_visit, ref_id

log = logging.getLogger(__name__)

FINAL_TASK_STATES = frozenset({"completed", "rejected", "cancelled", "failed"})
# Who may move a Task where: the owner (receiving organisation) or the requester (referring one).
OWNER_MOVES: dict[str, frozenset[str]] = {
    "requested": frozenset({"received", "accepted", "rejected"}),
    "received": frozenset({"accepted", "rejected"}),
    "accepted": frozenset({"in-progress", "rejected"}),
    "in-progress": frozenset({"completed", "failed"}),
}
REQUESTER_MOVES: dict[str, frozenset[str]] = {
    "draft": frozenset({"requested", "cancelled"}),
    "requested": frozenset({"cancelled"}),
    "received": frozenset({"cancelled"}),
    "accepted": frozenset({"cancelled"}),
}
MOVED_BY_URL = f"{codes.BASE}/StructureDefinition/moved-by"
OVERRIDE_URL = f"{codes.BASE}/StructureDefinition/referral-override-reason"

# Notes the workflow adds to a decision, (zh, en): GuidanceResponse.note carries both, as for rules.
NO_COUNTY_HOSPITAL = (
    "本县未登记县级医院：无法提出上转目标医院",
    "no county hospital is registered for this county",
)
# Why a down-referral the rules chose is not made (DESIGN section 4: "the GuidanceResponse says why").
NO_TOWNSHIP_CLINIC = MatchedRule(
    codes.ReferralRule.DOWN_REFERRAL_NO_CLINIC.value,
    "none",
    None,
    None,
    "未找到患者所属的乡镇卫生院（本次上转不是乡镇卫生院发起，签约机构不是乡镇卫生院，"
    "也没有在乡镇卫生院的门诊记录）：不下转",
    "No township clinic was found for the patient (the episode's up-referral did not come from a "
    "township clinic, the general practitioner is not a township clinic, and there is no outpatient "
    "visit at a township clinic): no down-referral",
)


@dataclass
class _Rules:
    sets: DefaultRuleSets | None = None
    directory: Path | None = None


_rules = _Rules()
REFERRAL_KINDS = ("up-referral", "down-referral")  # codes of {base}/CodeSystem/referral-type


def configure(rules_dir: Path) -> None:
    """Load (and validate) the rule sets once; hooks into the generic FHIR writes."""
    if _rules.directory != rules_dir or _rules.sets is None:
        _rules.sets = load_default_rule_sets(rules_dir)
        _rules.directory = rules_dir
    service.on_write("Encounter", _encounter_written)
    service.on_before_write("Task", _check_task_move)
    service.on_before_write("ServiceRequest", _check_referral_change)
    service.on_write("ServiceRequest", _referral_written)
    service.on_before_delete("Encounter", _drop_decision)


def _drop_decision(session: Session, actor: Actor, encounter_id: str) -> None:
    """A deleted visit's decision (gr-<encounter id>) goes with it: the service derived it from the
    visit, and HIS tokens may only read decisions, so it would otherwise keep the visit from ever
    being deleted (`service.ensure_unreferenced`). A referral made on the visit still does."""
    gr_id = f"gr-{encounter_id}"
    row = ResourceStore(session).current("GuidanceResponse", gr_id)
    if row is not None and not row.deleted:
        service.delete(session, SYSTEM, "GuidanceResponse", gr_id)


def rule_sets() -> DefaultRuleSets:
    """The loaded rule sets."""
    if _rules.sets is None:
        raise RuntimeError("referral rules are not configured")
    return _rules.sets


# ------------------------------------------------------------------------------------ helpers


def _load(session: Session, res_type: str, res_id: str) -> dict[str, Any] | None:
    return ResourceStore(session).load(res_type, res_id)


def _same(a: dict[str, Any] | None, b: dict[str, Any], ignore: tuple[str, ...]) -> bool:
    if a is None:
        return False
    strip = ("meta", *ignore)
    return {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}


def _put(session: Session, body: dict[str, Any], *, ignore: tuple[str, ...] = ()) -> None:
    """Write a workflow resource under its deterministic id, unless nothing changed (no duplicates).

    Built here, so not validated on every write (the workflow tests validate every one written).
    """
    row = ResourceStore(session).current(body["resourceType"], body["id"])
    current = None if row is None or row.deleted else dict(jsonio.loads(row.content))
    if _same(current, body, ignore):
        return
    service.update(
        session, SYSTEM, body["resourceType"], body["id"], body, hooks=False, validate=False,
        seen_absent=row is None,
    )


def _put_guidance(
    session: Session,
    decision: Decision,
    patient_id: str,
    encounter_id: str,
    *,
    when: str,
    result_id: str | None,
    notes: Sequence[tuple[str, str]] = (),
) -> None:
    """Store the rules' decision on a visit as its GuidanceResponse (gr-<encounter id>), unless only its
    time changed."""
    gr = shapes.guidance_response(
        f"gr-{encounter_id}",
        decision,
        patient_id=patient_id,
        encounter_id=encounter_id,
        when=when,
        result_id=result_id,
        notes=notes,
    )
    _put(session, gr, ignore=("occurrenceDateTime",))


def _now() -> str:
    return instant(now_ms())


def _visit_time(encounter: dict[str, Any], keys: tuple[str, ...], fallback: str) -> str:
    """When a visit-derived referral was made: the first of the visit's `period` `keys` given to the day.

    A referral the workflow derives from a visit is authored when the visit was (the first visit's
    end, the discharge), not when the server processed it: a visit entered days later must still
    settle with its referral (authoredOn <= discharge date, DESIGN section 5). Processing time stays
    in meta.lastUpdated. A zone-less time is Asia/Shanghai and gets that offset; without a usable
    period the processing time `fallback` is used.
    """
    period = encounter.get("period") or {}
    for key in keys:
        value = period.get(key)
        if not isinstance(value, str) or len(value) < 10:
            continue
        try:
            shanghai_date(value)
        except ValueError:
            continue
        if "T" in value and not (value.endswith("Z") or value[-6] in "+-"):
            return parse_date_range(value)[0].astimezone(SHANGHAI).isoformat()
        return value
    return fallback


def _code(resource: dict[str, Any], system: str) -> str | None:
    for coding in (resource.get("code") or {}).get("coding", []):
        if coding.get("system") == system:
            return coding.get("code")
    return None


@dataclass(frozen=True)
class HospitalChoice:
    """The proposed target hospital and the notes (zh, en) the decision should carry about it."""

    hospital: Organization | None
    notes: tuple[tuple[str, str], ...] = ()


def _designation_chain(session: Session, clinic: Organization | None) -> list[str]:
    """The clinic's parents (Organization.partOf), nearest first: a township health centre belongs to
    the county hospital leading its medical community (医共体), a village clinic to its township."""
    chain: list[str] = []
    current = clinic
    while current is not None and current.parent_id and current.parent_id not in chain and len(chain) < 10:
        chain.append(current.parent_id)
        current = session.get(Organization, current.parent_id)
    return chain


def _capability_name(capability: str, language: str) -> str:
    return profiles.display(codes.CAPABILITY_SYSTEM, capability, language) or capability


def choose_hospital(
    session: Session, clinic: Organization | None, capability: str | None
) -> HospitalChoice:
    """The target hospital of an up-referral (DESIGN section 4), the same for the same data.

    Candidates are the active county-level hospitals in the clinic's county (district equal after
    trimming white space). Among them, the one that has the deciding rule's capability; otherwise,
    or when none has it, the general one; when no county hospital there is general, any of them.
    Ties are broken by a documented, stable order: first the hospital the clinic belongs to
    (its partOf chain, the county hospital leading the medical community), then registration order
    (when its Organization resource was first stored; rows without one last), then id. So a
    hospital registered later does not take over the referrals of the county's existing one.

    Only when the county has no active county-level hospital at all is one outside the county
    proposed (same order), with a note saying so: a referral out of the county changes
    reimbursement (section 5), and the clinician confirms or overrides the proposal. The notes
    also say when no hospital in the county has the capability the rules asked for.
    """
    district = (clinic.district if clinic else "").strip()
    rows = session.execute(
        select(Organization, StoredResource.pk)
        .outerjoin(
            StoredResource,
            (StoredResource.res_type == "Organization") & (StoredResource.res_id == Organization.id),
        )
        .where(Organization.facility_level == "county", Organization.active.is_(True))
    ).all()
    chain = _designation_chain(session, clinic)

    def order(row: Any) -> tuple[int, int, int, str]:
        org, pk = row
        designated = chain.index(org.id) if org.id in chain else len(chain)
        return (designated, pk is None, pk or 0, org.id)

    ranked = [org for org, _ in sorted(rows, key=order)]
    local = [h for h in ranked if (h.district or "").strip() == district]
    pool = local or ranked
    if not pool:
        return HospitalChoice(None, (NO_COUNTY_HOSPITAL,))
    chosen = None
    notes: list[tuple[str, str]] = []
    if capability:
        chosen = next((h for h in pool if capability in (h.capabilities or [])), None)
        if chosen is None:
            notes.append((
                f"本县县级医院均无{_capability_name(capability, 'zh-CN')}服务能力：建议转往综合县医院",
                f"no county hospital in the county has {_capability_name(capability, 'en').lower()}: "
                "proposed the general county hospital",
            ))
    if chosen is None:
        chosen = next((h for h in pool if "general" in (h.capabilities or [])), pool[0])
    if not local:
        where = (chosen.district or "").strip()
        notes.append((
            f"本县（{district or '未知'}）未登记县级医院：建议转往县外的{chosen.name}（{where}），"
            "请临床医生确认；县外转诊影响医保报销",
            f"no county hospital is registered in the clinic's county ({district or 'unknown'}): proposed "
            f"{chosen.name} ({where}) outside the county, for the clinician to confirm; a referral out of "
            "the county changes reimbursement",
        ))
    return HospitalChoice(chosen, tuple(notes))


# ----------------------------------------------------------------------- first visit: refer up


def evaluate_visit(session: Session, actor: Actor, encounter_id: str) -> Decision:
    """Decide on a finished first visit; store the GuidanceResponse and a draft referral + Task."""
    ctx = load_visit(session, encounter_id)
    decision = evaluate(rule_sets().up, facts_of(ctx), rule_sets().news2)
    patient_id = str(ctx.patient["id"])
    sr_id, task_id = f"ref-up-{encounter_id}", f"task-ref-up-{encounter_id}"
    existing_sr = _load(session, "ServiceRequest", sr_id)
    when = _now()
    authored = _visit_time(ctx.encounter, ("end", "start"), when)
    result_id = None
    notes: list[tuple[str, str]] = []
    if decision.refers and ctx.provider is not None:
        if existing_sr is not None and existing_sr.get("status") != "draft":
            result_id = sr_id  # already confirmed: the clinician's choice stands
        else:
            choice = choose_hospital(session, ctx.provider, decision.capability)
            notes.extend(choice.notes)
            hospital = choice.hospital
            if hospital is not None:
                sr = shapes.service_request(
                    sr_id,
                    kind="up-referral",
                    status="draft",
                    priority=decision.priority or "routine",
                    patient_id=patient_id,
                    encounter_id=encounter_id,
                    requester_id=ctx.provider.id,
                    performer_id=hospital.id,
                    authored=authored,
                    reasons=[str(c["id"]) for c in ctx.conditions],
                    supporting=[shapes.ref("Observation", str(o["id"])) for o in ctx.observations],
                    note="; ".join(m.explanation_zh for m in decision.matched_rules),
                )
                result_id = sr_id
                _put(session, sr)
                _put(
                    session,
                    shapes.task(
                        task_id,
                        status="draft",
                        sr_id=sr_id,
                        patient_id=patient_id,
                        owner_id=hospital.id,
                        requester_id=ctx.provider.id,
                        priority=sr["priority"],
                        when=when,
                    ),
                    ignore=("authoredOn", "lastModified"),
                )
                ResourceStore(session).grant_access(patient_id, hospital.id, "referred")
    elif existing_sr is not None and existing_sr.get("status") == "draft":
        # A re-evaluation no longer refers: withdraw the unconfirmed proposal.
        _put(session, existing_sr | {"status": "revoked", "note": [{"text": "superseded by re-evaluation"}]})
        old_task = _load(session, "Task", task_id)
        if old_task is not None and old_task.get("status") == "draft":
            _put(session, old_task | {"status": "cancelled", "lastModified": when})
    _put_guidance(session, decision, patient_id, encounter_id, when=when, result_id=result_id, notes=notes)
    return decision


# ------------------------------------------------------------------- confirm, override, tasks


def _org_of(actor: Actor) -> str | None:
    return None if actor.sees_everything else actor.organization_id


def _check_parties(sr: dict[str, Any]) -> None:
    """An active up- or down-referral names the Organization that refers (`requester`) and the one it
    goes to (`performer`, the first): its Task is requested by the one and owned by the other (422
    naming the element otherwise; a draft may lack them until it is sent)."""
    if sr.get("status") != "active" or _code(sr, codes.REFERRAL_TYPE_SYSTEM) not in REFERRAL_KINDS:
        return
    first_performer = (sr.get("performer") or [None])[0]
    for element, value in (("requester", sr.get("requester")), ("performer", first_performer)):
        reference = value.get("reference") if isinstance(value, dict) else None
        if not isinstance(reference, str) or not reference.startswith("Organization/"):
            where = f"ServiceRequest.{element}"
            role = "referring" if element == "requester" else "target"
            raise Unprocessable(
                f"{where} must name the {role} Organization of an active referral",
                [Problem(f"{where} must be a reference to the {role} Organization (Organization/id)",
                         expression=where, code="required")],
            )


def _check_referral_change(
    session: Session, actor: Actor, new: dict[str, Any], previous: dict[str, Any] | None
) -> None:
    """Only the requester changes a proposal, confirms it (draft -> active) or overrides it (revoke, other
    target or urgency), and an override needs a reason; a revoked referral stays revoked. A referral
    sent (`active`) names its referring and target organisations (`_check_parties`)."""
    _check_parties(new)
    if previous is None:
        return
    if previous.get("status") == "revoked" and new.get("status") != "revoked":
        raise Conflict(
            "a revoked referral cannot be sent again; make a new one",
            [Problem("ServiceRequest.status cannot leave revoked", expression="ServiceRequest.status",
                     code="business-rule")],
        )
    if _org_of(actor) is None:
        return
    requester = ref_id(previous.get("requester"))
    performers = {ref_id(p) for p in previous.get("performer") or []}
    if actor.organization_id != requester and actor.organization_id not in performers:
        raise Forbidden("only the referring or receiving organisation may change this referral")
    confirming = previous.get("status") == "draft" and new.get("status") == "active"
    if confirming and actor.organization_id != requester:
        raise Forbidden("only the referring organisation confirms its proposed referral")
    changed_target = {ref_id(p) for p in new.get("performer") or []} != performers
    overriding = (
        new.get("status") == "revoked" or changed_target or new.get("priority") != previous.get("priority")
    )
    if overriding:
        if actor.organization_id != requester:
            raise Forbidden("only the referring clinic may override its referral")
        reason = _override_reason(new, previous)
        if not reason:
            raise Unprocessable(
                "an override needs a reason",
                [
                    Problem(
                        "give the reason in ServiceRequest.note or the referral-override-reason extension",
                        expression="ServiceRequest.note",
                        code="required",
                    )
                ],
            )


def _override_reason(sr: dict[str, Any], previous: dict[str, Any] | None = None) -> str | None:
    """The reason extension, or a note the override added (notes already there do not count)."""
    for ext in sr.get("extension") or []:
        if ext.get("url") == OVERRIDE_URL and ext.get("valueString"):
            return str(ext["valueString"])
    before = {n.get("text") for n in (previous or {}).get("note") or []}
    notes = [n.get("text") for n in sr.get("note") or [] if n.get("text") and n.get("text") not in before]
    return notes[-1] if notes else None


def _tasks_for(session: Session, sr_id: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(StoredResource.content).where(
            StoredResource.res_type == "Task",
            StoredResource.deleted.is_(False),
            StoredResource.res_id.like(f"task-{sr_id}%"),
        )
    ).scalars()
    return sorted((dict(jsonio.loads(r)) for r in rows), key=lambda t: t["id"])


def _active_task(session: Session, sr_id: str) -> dict[str, Any] | None:
    tasks = [t for t in _tasks_for(session, sr_id) if t.get("status") not in FINAL_TASK_STATES]
    return tasks[-1] if tasks else None


def _on_behalf(actor: Actor) -> Actor:
    """Who a workflow step writes as: the user or client whose action set it off, with the workflow's
    authority (the service decided the step; the caller's own rights were checked on its action).

    So the step is recorded as that actor's, exactly as its own FHIR writes are: the Task's moved-by
    extension and the audit trail of the version (AuditEvent agent) name it, not "system".
    """
    return actor if actor.sees_everything else replace(actor, is_platform=True)


def _move_task(
    session: Session, actor: Actor, task_: dict[str, Any], status: str, *, reason: str | None = None
) -> None:
    """A workflow move of a Task, recorded as made by `actor` (see `_on_behalf`)."""
    body = task_ | {"status": status, "lastModified": _now()}
    body["extension"] = [e for e in body.get("extension") or [] if e.get("url") != MOVED_BY_URL]
    body["extension"].append({"url": MOVED_BY_URL, "valueString": actor.name})
    if reason:
        body["statusReason"] = {"text": reason}
    service.update(session, _on_behalf(actor), "Task", body["id"], body, hooks=False)


def _sync_priority(
    session: Session, actor: Actor, task_: dict[str, Any], priority: str
) -> dict[str, Any]:
    """The open Task of a referral takes the referral's priority (recorded as `actor`'s update).

    The hospital's inbox order and the acceptance deadline of the timeout indicator (urgent and
    stat 2 h, routine 24 h) read Task.priority, so a changed urgency must reach the Task.
    """
    body = task_ | {"priority": priority, "lastModified": _now()}
    service.update(session, _on_behalf(actor), "Task", body["id"], body, hooks=False)
    return _load(session, "Task", str(body["id"])) or body


def _follow_referral(session: Session, actor: Actor, sr: dict[str, Any]) -> None:
    """A down-referral's follow-up plan (CarePlan cp-<referral>) follows the referral.

    Proposed `draft` with it at discharge; `active` when the referral is confirmed (sent), `revoked`
    with its scheduled visits `cancelled` when the referral is revoked; a referral re-targeted to
    another clinic takes its plan there (author and performers). Written as `actor`'s update.
    """
    plan = _load(session, "CarePlan", f"cp-{sr['id']}")
    if plan is None or plan.get("status") not in ("draft", "active"):
        return
    body = _r4_plan(plan)
    performer = ref_id((sr.get("performer") or [None])[0])
    if performer and ref_id(plan.get("author")) != performer:
        body["author"] = shapes.ref("Organization", performer)
        body["activity"] = [
            a | {"detail": (a.get("detail") or {}) | {"performer": [shapes.ref("Organization", performer)]}}
            for a in plan.get("activity") or []
        ]
    status = sr.get("status")
    if status == "active" and plan.get("status") == "draft":
        body["status"] = "active"
    elif status == "revoked":
        body["status"] = "revoked"
        body["activity"] = [
            a | {"detail": (a.get("detail") or {}) | {"status": "cancelled"}}
            if (a.get("detail") or {}).get("status") == "scheduled"
            else a
            for a in body.get("activity") or []
        ]
    if _same(plan, body, ()):
        return
    service.update(session, _on_behalf(actor), "CarePlan", str(body["id"]), body, hooks=False)


def _r4_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """A follow-up plan as written now: plans stored before it named their down-referral in
    `basedOn` (R4 allows a CarePlan only there) and name it in `supportingInfo` once rewritten."""
    body = dict(plan)
    referrals = body.pop("basedOn", None) or []
    if referrals:
        body["supportingInfo"] = [*referrals, *(body.get("supportingInfo") or [])]
    return body


def _referral_written(session: Session, actor: Actor, stored: Stored, result: service.WriteResult) -> None:
    """Confirming (draft -> active) sends the Task; revoking cancels it; a new target gets a new Task;
    a new urgency (ServiceRequest.priority) becomes the open Task's priority. A down-referral's
    follow-up plan is activated, revoked or re-addressed with it (`_follow_referral`)."""
    sr = stored.as_dict()
    previous = result.previous or {}
    sr_id = str(sr["id"])
    kind = _code(sr, codes.REFERRAL_TYPE_SYSTEM)
    task_ = _active_task(session, sr_id)
    performer = ref_id((sr.get("performer") or [None])[0])
    if sr.get("status") == "revoked":
        if task_ is not None:
            _move_task(session, actor, task_, "cancelled", reason=_override_reason(sr, previous))
        if kind == "down-referral":
            _follow_referral(session, actor, sr)
        return
    if kind == "down-referral":
        _follow_referral(session, actor, sr)
    priority = sr.get("priority")
    if (
        task_ is not None
        and priority
        and task_.get("priority") != priority
        and ref_id(task_.get("owner")) == performer
    ):
        task_ = _sync_priority(session, actor, task_, str(priority))
    if sr.get("status") != "active" or kind not in REFERRAL_KINDS:
        return
    patient_id = ref_id(sr.get("subject")) or ""
    requester = ref_id(sr.get("requester")) or ""
    if task_ is None or ref_id(task_.get("owner")) != performer:
        # No open Task (a HIS posted its own referral, or the last one was rejected): make one.
        count = len(_tasks_for(session, sr_id))
        new_id = f"task-{sr_id}" if count == 0 else f"task-{sr_id}-{count + 1}"
        if task_ is not None:
            _move_task(session, actor, task_, "cancelled", reason="re-targeted")
        task_ = shapes.task(
            new_id,
            status="draft",
            sr_id=sr_id,
            patient_id=patient_id,
            owner_id=performer or "",
            requester_id=requester,
            priority=sr.get("priority", "routine"),
            when=_now(),
        )
        service.update(session, SYSTEM, "Task", new_id, task_, hooks=False)
    if task_.get("status") == "draft":
        _move_task(session, actor, task_, "requested")
    if performer:
        ResourceStore(session).grant_access(patient_id, performer, "referred")
    _join_episode(session, sr, organization_id=requester)


def _episode_root(session: Session, sr: dict[str, Any]) -> dict[str, Any]:
    seen = set()
    current = sr
    while True:
        parent = ref_id((current.get("basedOn") or [None])[0])
        if parent is None or parent in seen:
            return current
        seen.add(parent)
        loaded = _load(session, "ServiceRequest", parent)
        if loaded is None:
            return current
        current = loaded


def _join_episode(
    session: Session, sr: dict[str, Any], *, organization_id: str, start: str | None = None
) -> None:
    """The referral joins its episode (DESIGN 5): a root referral (no `basedOn` referral) opens one,
    `eoc-<root>`; every referral `basedOn` one of it, up or down, sent by the rules or posted by a
    HIS, is added to its `referralRequest` in the order they come."""
    root = _episode_root(session, sr)
    eoc_id = f"eoc-{root['id']}"
    eoc = _load(session, "EpisodeOfCare", eoc_id)
    if eoc is None:
        _put(
            session,
            shapes.episode_of_care(
                eoc_id,
                patient_id=ref_id(sr.get("subject")) or "",
                organization_id=organization_id,
                referrals=list(dict.fromkeys([str(root["id"]), str(sr["id"])])),
                start=str(root.get("authoredOn") or start or _now()),
                status="active",
            ),
        )
        return
    if str(sr["id"]) not in [ref_id(r) for r in eoc.get("referralRequest") or []]:
        eoc["referralRequest"] = [
            *(eoc.get("referralRequest") or []), shapes.ref("ServiceRequest", str(sr["id"]))
        ]
        _put(session, eoc)


def _check_task_move(
    session: Session, actor: Actor, new: dict[str, Any], previous: dict[str, Any] | None
) -> None:
    """Only the owner moves a Task forward, only the requester cancels or sends it; reasons where due."""
    if previous is None:
        return
    old, wanted = previous.get("status"), new.get("status")
    if old == wanted:
        return
    org = _org_of(actor)
    owner, requester = ref_id(previous.get("owner")), ref_id(previous.get("requester"))
    owner_moves = OWNER_MOVES.get(str(old), frozenset())
    requester_moves = REQUESTER_MOVES.get(str(old), frozenset())
    if org is not None and wanted in owner_moves and org != owner:
        raise Forbidden(f"only the Task owner (Organization/{owner}) may move this Task to {wanted}")
    if org is not None and wanted in requester_moves - owner_moves and org != requester:
        raise Forbidden(f"only the requester (Organization/{requester}) may move this Task to {wanted}")
    if org is not None and org not in (owner, requester):
        raise Forbidden(f"only the Task owner (Organization/{owner}) may move this Task")
    allowed: set[str] = set()
    if org is None or org == owner:
        allowed |= owner_moves
    if org is None or org == requester:
        allowed |= requester_moves
    if wanted not in allowed:
        nxt = ", ".join(sorted(allowed)) or (
            "none (final state)" if old in FINAL_TASK_STATES
            else f"none for Organization/{org} (the requester sends a draft Task by confirming its "
            "ServiceRequest)" if old == "draft"
            else f"none for Organization/{org}"
        )
        raise Conflict(
            f"Task cannot move from {old} to {wanted}; allowed next states: {nxt}",
            [
                Problem(
                    f"Task cannot move from {old} to {wanted}; allowed next states: {nxt}",
                    expression="Task.status",
                    code="business-rule",
                )
            ],
        )
    if wanted == "rejected" and not (
        (new.get("statusReason") or {}).get("text") or (new.get("statusReason") or {}).get("coding")
    ):
        raise Unprocessable(
            "a rejection needs a reason (Task.statusReason)",
            [
                Problem(
                    "Task.statusReason is required when rejecting",
                    expression="Task.statusReason",
                    code="required",
                )
            ],
        )
    new["lastModified"] = _now()
    new["extension"] = [e for e in new.get("extension") or [] if e.get("url") != MOVED_BY_URL]
    new["extension"].append({"url": MOVED_BY_URL, "valueString": actor.name})


def confirm_referral(session: Session, actor: Actor, sr_id: str) -> None:
    """The clinician confirms a proposed referral: it becomes active and its Task requested."""
    sr = _load(session, "ServiceRequest", sr_id)
    if sr is None:
        raise NotFound(f"ServiceRequest/{sr_id} is not known")
    if sr.get("status") != "draft":
        raise Conflict(f"ServiceRequest/{sr_id} is {sr.get('status')}, not draft")
    service.update(session, actor, "ServiceRequest", sr_id, sr | {"status": "active"})


def override_referral(
    session: Session,
    actor: Actor,
    sr_id: str,
    *,
    reason: str,
    refer: bool,
    target_id: str | None = None,
    priority: str | None = None,
) -> None:
    """Override the proposal with a reason: no referral, or another target hospital or urgency."""
    sr = _load(session, "ServiceRequest", sr_id)
    if sr is None:
        raise NotFound(f"ServiceRequest/{sr_id} is not known")
    if not reason.strip():
        raise Unprocessable("an override needs a reason")
    body = dict(sr)
    body["extension"] = [e for e in sr.get("extension") or [] if e.get("url") != OVERRIDE_URL]
    body["extension"].append({"url": OVERRIDE_URL, "valueString": reason.strip()})
    body["note"] = [*(sr.get("note") or []), {"text": reason.strip()}]
    if not refer:
        body["status"] = "revoked"
    else:
        if target_id:
            body["performer"] = [shapes.ref("Organization", target_id)]
        if priority:
            body["priority"] = priority
        body["status"] = "active"
    service.update(session, actor, "ServiceRequest", sr_id, body)


def move_task(session: Session, actor: Actor, task_id: str, status: str, reason: str | None = None) -> None:
    """Move a referral Task (owner: received, accepted, rejected ...; requester: cancelled)."""
    current = _load(session, "Task", task_id)
    if current is None:
        raise NotFound(f"Task/{task_id} is not known")
    body = current | {"status": status}
    if reason:
        body["statusReason"] = {"text": reason}
    service.update(session, actor, "Task", task_id, body)


# --------------------------------------------------------------- admission, discharge, follow-up


def _encounter_written(session: Session, actor: Actor, stored: Stored, result: service.WriteResult) -> None:
    enc = stored.as_dict()
    klass = (enc.get("class") or {}).get("code")
    status = enc.get("status")
    if klass == "AMB" and status == "finished":
        provider = session.get(Organization, ref_id(enc.get("serviceProvider")) or "")
        if provider is not None and provider.facility_level in ("township", "village"):
            evaluate_visit(session, actor, str(enc["id"]))
        _record_follow_up(session, actor, enc)
    elif klass == "IMP" and status in ("arrived", "in-progress"):
        _admit(session, actor, enc)
    elif klass == "IMP" and status == "finished":
        _admit(session, actor, enc)
        discharge(session, actor, str(enc["id"]))


def _basis(session: Session, enc: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for based in enc.get("basedOn") or []:
        sr = _load(session, "ServiceRequest", ref_id(based) or "")
        if sr is not None and _code(sr, codes.REFERRAL_TYPE_SYSTEM) == kind:
            return sr
    return None


def _admit(session: Session, actor: Actor, enc: dict[str, Any]) -> None:
    """Admission on an up-referral: its Task goes in-progress (accepting it first if still open)."""
    sr = _basis(session, enc, "up-referral")
    if sr is None:
        return
    task_ = _active_task(session, str(sr["id"]))
    if task_ is None or ref_id(task_.get("owner")) != ref_id(enc.get("serviceProvider")):
        return
    for step in ("accepted", "in-progress"):
        if (
            (task_["status"] in ("requested", "received")
            and step == "accepted")
            or (task_["status"] == "accepted" and step == "in-progress")
        ):
            _move_task(session, actor, task_, step)
            task_ = _load(session, "Task", str(task_["id"])) or task_


def _township_clinic(
    session: Session, patient: dict[str, Any], up: dict[str, Any] | None
) -> Organization | None:
    """The patient's township clinic (DESIGN 4): the township clinic that made this episode's
    up-referral (along the `basedOn` chain from the referral of the stay: a county hospital's onward
    referral is not made by one), the GP, or that of the latest AMB visit by its start."""
    candidates: list[str | None] = []
    referral, seen = up, set()
    while referral is not None and str(referral["id"]) not in seen:
        seen.add(str(referral["id"]))
        if _code(referral, codes.REFERRAL_TYPE_SYSTEM) == "up-referral":
            candidates.append(ref_id(referral.get("requester")))
        parent = ref_id((referral.get("basedOn") or [None])[0])
        referral = _load(session, "ServiceRequest", parent) if parent else None
    candidates += [ref_id(g) for g in patient.get("generalPractitioner") or []]
    for cid in candidates:
        org = session.get(Organization, cid or "")
        if org is not None and org.facility_level == "township":
            return org
    rows = session.execute(
        select(StoredResource.content)
        .where(
            StoredResource.res_type == "Encounter",
            StoredResource.patient_id == str(patient["id"]),
            StoredResource.deleted.is_(False),
        )
        .order_by(StoredResource.last_updated.desc())
    ).scalars()
    latest: tuple[datetime, Organization] | None = None
    for raw in rows:
        enc = jsonio.loads(raw)
        if (enc.get("class") or {}).get("code") != "AMB":
            continue
        org = session.get(Organization, ref_id(enc.get("serviceProvider")) or "")
        if org is None or org.facility_level != "township":
            continue
        try:
            start = encounter_start(enc)
        except ValueError:
            continue
        if latest is None or start > latest[0]:
            latest = (start, org)
    return latest[1] if latest else None


def _discharge_day(encounter: dict[str, Any], start: datetime) -> date:
    """The day follow-ups count from: the discharge (period.end) as a date in Asia/Shanghai.

    An instant is the day it falls on in Asia/Shanghai (18:00Z is 02:00 the next day there); a
    date-only or zone-less value is read as Asia/Shanghai. Without a usable end, the day of the start.
    """
    end = (encounter.get("period") or {}).get("end")
    if isinstance(end, str):
        try:
            return shanghai_date(end)
        except ValueError:
            pass
    return start.astimezone(SHANGHAI).date()


def _no_clinic(decision: Decision) -> Decision:
    """The decision when the rules chose a down-referral but the patient has no township clinic.

    There is no down-referral then (DESIGN section 4), so the outcome is `none`, without follow-up
    days; the rules that fired stay listed and `down-referral-no-clinic` (a code of the
    referral-rule CodeSystem) is added with its reason in Chinese and English.
    """
    return replace(
        decision,
        outcome="none",
        followup_days=(),
        matched_rules=(*decision.matched_rules, NO_TOWNSHIP_CLINIC),
    )


def discharge(session: Session, actor: Actor, encounter_id: str) -> Decision:
    """At the end of a stay: complete the up-referral, run the down-referral rules, propose follow-ups.

    A down-referral the rules choose is proposed, as an up-referral is at triage (DESIGN sections 2
    and 9): a `draft` ServiceRequest, its `draft` Task owned by the township clinic and a `draft`
    CarePlan with the follow-ups. The hospital confirms it (ServiceRequest `active`: the Task is
    `requested`, the CarePlan `active`) or overrides it with a reason (see `_referral_written`).
    """
    ctx = load_visit(session, encounter_id)
    up = _basis(session, ctx.encounter, "up-referral")
    if up is not None:
        task_ = _active_task(session, str(up["id"]))
        if task_ is not None and task_.get("status") == "in-progress":
            _move_task(session, actor, task_, "completed")
        if up.get("status") == "active":
            _put(session, up | {"status": "completed"})
    decision = evaluate(rule_sets().down, facts_of(ctx), rule_sets().news2)
    patient_id = str(ctx.patient["id"])
    when = _now()
    result_id = None
    if decision.outcome == "down-referral":
        clinic = _township_clinic(session, ctx.patient, up)
        hospital_id = ref_id(ctx.encounter.get("serviceProvider")) or ""
        if clinic is None:
            decision = _no_clinic(decision)
        else:
            sr_id = f"ref-down-{encounter_id}"
            result_id = sr_id
            sr = shapes.service_request(
                sr_id,
                kind="down-referral",
                status="draft",
                priority="routine",
                patient_id=patient_id,
                encounter_id=encounter_id,
                requester_id=hospital_id,
                performer_id=clinic.id,
                authored=_visit_time(ctx.encounter, ("end",), when),
                based_on=str(up["id"]) if up else None,
                reasons=[str(c["id"]) for c in ctx.conditions],
                note="; ".join(m.explanation_zh for m in decision.matched_rules),
            )
            if _load(session, "ServiceRequest", sr_id) is None:
                _put(session, sr)
                task_id = f"task-{sr_id}"
                _put(
                    session,
                    shapes.task(
                        task_id,
                        status="draft",
                        sr_id=sr_id,
                        patient_id=patient_id,
                        owner_id=clinic.id,
                        requester_id=hospital_id,
                        priority="routine",
                        when=when,
                    ),
                )
                start = _discharge_day(ctx.encounter, ctx.start)
                _put(
                    session,
                    shapes.care_plan(
                        f"cp-{sr_id}",
                        patient_id=patient_id,
                        sr_id=sr_id,
                        clinic_id=clinic.id,
                        start=start,
                        days=list(decision.followup_days) or [7, 30, 90],
                        when=when,
                        status="draft",
                    ),
                )
                ResourceStore(session).grant_access(patient_id, clinic.id, "referred")
                _join_episode(session, sr, organization_id=clinic.id, start=when)
    _put_guidance(session, decision, patient_id, encounter_id, when=when, result_id=result_id)
    return decision


def _record_follow_up(session: Session, actor: Actor, enc: dict[str, Any]) -> None:
    """A finished visit based on a confirmed (active) down-referral completes the next scheduled CarePlan
    activity."""
    sr = _basis(session, enc, "down-referral")
    if sr is None or sr.get("status") != "active":
        return  # a proposal not yet confirmed (draft), or a revoked one, has no follow-ups to record
    record_follow_up(session, actor, f"cp-{sr['id']}", str(enc["id"]))


def record_follow_up(session: Session, actor: Actor, care_plan_id: str, encounter_id: str) -> int:
    """Mark the next scheduled follow-up done; returns how many remain scheduled."""
    plan = _load(session, "CarePlan", care_plan_id)
    if plan is None:
        raise NotFound(f"CarePlan/{care_plan_id} is not known")
    activities = plan.get("activity") or []
    done_by = {ref_id(o) for a in activities for o in a.get("outcomeReference") or []}
    if encounter_id in done_by:
        return sum(1 for a in activities if a["detail"]["status"] == "scheduled")
    for activity in activities:
        if activity["detail"]["status"] == "scheduled":
            activity["detail"]["status"] = "completed"
            activity["outcomeReference"] = [shapes.ref("Encounter", encounter_id)]
            break
    else:
        raise Conflict(f"CarePlan/{care_plan_id} has no scheduled follow-up left")
    remaining = sum(1 for a in activities if a["detail"]["status"] == "scheduled")
    plan["activity"] = activities
    if remaining == 0:
        plan["status"] = "completed"
    # A clinic that records a follow-up has the patient: its Task is accepted and under way (so the
    # timeout indicator no longer counts it as waiting), and done with the last follow-up.
    sr_id = care_plan_id.removeprefix("cp-")
    task_ = _active_task(session, sr_id)
    if task_ is not None:
        steps = ("accepted", "in-progress") + (("completed",) if remaining == 0 else ())
        for step in steps:
            if step in OWNER_MOVES.get(task_["status"], frozenset()):
                _move_task(session, actor, task_, step)
                task_ = _load(session, "Task", str(task_["id"])) or task_
    _put(session, plan)
    return remaining


def _shown(value: Any) -> str:
    """A NEWS2 input as `flask rules explain` prints it (booleans as in FHIR: true, false)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def explain_visit(session: Session, encounter_id: str) -> str:
    """A readable account of the decision for a stored visit (for `flask rules explain`)."""
    ctx = load_visit(session, encounter_id)
    klass = (ctx.encounter.get("class") or {}).get("code")
    rule_set = rule_sets().down if klass == "IMP" else rule_sets().up
    decision = evaluate(rule_set, facts_of(ctx), rule_sets().news2)
    n = decision.news2
    lines = [
        f"Encounter/{encounter_id}: rule set {decision.rule_set_id} version {decision.rule_set_version}",
        f"outcome: {decision.outcome}"
        + (f", urgency {decision.urgency} (priority {decision.priority})" if decision.urgency else "")
        + (f", capability {decision.capability}" if decision.capability else ""),
        f"NEWS2 total {n.total}, highest single parameter {n.max_single}"
        + ("" if n.complete else f" — {n.message_en}"),
    ]
    lines += [f"  {i.parameter}: {_shown(i.value)} -> "
              f"{i.score if i.score is not None else 'missing'}" for i in n.items]
    lines.append("matched rules:")
    lines += [f"  {m.id}: {m.explanation_en} / {m.explanation_zh}" for m in decision.matched_rules]
    if decision.followup_days:
        lines.append("follow-up days: " + ", ".join(str(d) for d in decision.followup_days))
    return "\n".join(lines)
