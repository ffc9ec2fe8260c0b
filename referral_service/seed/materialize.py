"""Serve registry rows over FHIR: build the stored JSON, versions and search indexes in bulk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, selectinload

from ..domain.fhir_store import (
    DateIndex,
    QuantityIndex,
    ReferenceIndex,
    ResourceVersion,
    StoredResource,
    StringIndex,
    TokenIndex,
)
from ..domain.registry import Coverage, Household, Organization, Patient, Practitioner, PractitionerRole
from ..fhir import jsonio
from ..fhir.mappers import FROM_DOMAIN
from ..fhir.resources import RESOURCES
from ..fhir.search_params import extract
from ..fhir.store import instant, now_ms

MODELS: dict[str, Any] = {
    "Organization": Organization,
    "Practitioner": Practitioner,
    "PractitionerRole": PractitionerRole,
    "Patient": Patient,
    "Coverage": Coverage,
    "Group": Household,
}
ORDER = ("Organization", "Practitioner", "PractitionerRole", "Patient", "Coverage", "Group")


def _missing(session: Session, res_type: str, chunk: int) -> Iterator[list[Any]]:
    """Registry rows of the type that have no stored resource yet, in id order, a chunk at a time."""
    model = MODELS[res_type]
    stored = select(StoredResource.res_id).where(StoredResource.res_type == res_type)
    last = ""
    while True:
        stmt = select(model).where(model.id > last, model.id.not_in(stored)).order_by(model.id).limit(chunk)
        if res_type == "Patient":
            stmt = stmt.options(selectinload(Patient.poverty_registrations))
        elif res_type == "Group":
            stmt = stmt.options(selectinload(Household.members))
        rows = list(session.scalars(stmt))
        if not rows:
            return
        yield rows
        last = rows[-1].id


def _bulk(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert rows fast: COPY on PostgreSQL, a Core executemany elsewhere (no ORM bookkeeping)."""
    if not rows:
        return
    connection = session.connection()
    raw: Any = connection.connection.dbapi_connection
    if connection.dialect.name == "postgresql" and isinstance(raw, psycopg.Connection):
        columns = list(rows[0])
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
        return
    connection.execute(table.insert(), rows)


# What publishing writes (their statistics are refreshed afterwards).
PUBLISHED_TABLES = (
    "fhir_resource", "fhir_resource_version", "fhir_idx_token", "fhir_idx_string", "fhir_idx_date",
    "fhir_idx_reference", "fhir_idx_quantity", "patient_access", "patient", "organization",
)  # fmt: skip


def materialize(
    session: Session,
    types: tuple[str, ...] = ORDER,
    *,
    chunk: int = 5000,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Create version 1 of every registry row not yet stored as FHIR; returns counts per type."""
    counts = dict.fromkeys(types, 0)
    for res_type in types:
        params = list(RESOURCES[res_type].params)
        to_fhir = FROM_DOMAIN[res_type]
        for rows in _missing(session, res_type, chunk):
            ts = now_ms()
            resources = []
            for row in rows:
                resource = to_fhir(row)
                resource["meta"] = {"versionId": "1", "lastUpdated": instant(ts)}
                resources.append(
                    {
                        "resourceType": res_type,
                        "id": row.id,
                        "meta": resource["meta"],
                        **{k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")},
                    }
                )
            rdef = RESOURCES[res_type]
            values = [
                {
                    "res_type": res_type,
                    "res_id": r["id"],
                    "version_id": 1,
                    "last_updated": ts,
                    "deleted": False,
                    "content": jsonio.dumps(r),
                    "owner_org_id": None,
                    "patient_id": rdef.compartment_patient(r),
                }
                for r in resources
            ]
            returning = insert(StoredResource).returning(
                StoredResource.res_id, StoredResource.pk, sort_by_parameter_order=True
            )
            pks = {res_id: pk for res_id, pk in session.execute(returning, values).all()}
            versions = [
                {
                    "resource_pk": pks[v["res_id"]],
                    "version_id": 1,
                    "res_type": res_type,
                    "last_updated": ts,
                    "method": "POST",
                    "deleted": False,
                    "content": v["content"],
                }
                for v in values
            ]
            tokens, strings, dates, refs, quantities = [], [], [], [], []
            for r in resources:
                pk = pks[r["id"]]
                idx = extract(r, params)
                tokens += [
                    {"resource_pk": pk, "res_type": res_type, "param": p, "system": s, "code": c}
                    for p, s, c in idx.tokens
                ]
                strings += [
                    {"resource_pk": pk, "res_type": res_type, "param": p, "value": v, "exact": e}
                    for p, v, e in idx.strings
                ]
                dates += [
                    {"resource_pk": pk, "res_type": res_type, "param": p, "low": lo, "high": hi}
                    for p, lo, hi in idx.dates
                ]
                refs += [
                    {"resource_pk": pk, "res_type": res_type, "param": p, "target_type": t, "target_id": i}
                    for p, t, i in idx.references
                ]
                quantities += [
                    {"resource_pk": pk, "res_type": res_type, "param": p, "system": s, "code": c, "unit": u,
                     "value": v}
                    for p, s, c, u, v in idx.quantities
                ]
            for table, batch in (
                (ResourceVersion, versions),
                (TokenIndex, tokens),
                (StringIndex, strings),
                (DateIndex, dates),
                (ReferenceIndex, refs),
                (QuantityIndex, quantities),
            ):
                _bulk(session, table.__table__, batch)
            counts[res_type] += len(rows)
            if progress:
                progress(res_type, len(rows))
            session.expunge_all()
    return counts
