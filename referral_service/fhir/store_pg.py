"""PostgreSQL: a resource version, its history row and all its index rows written in one statement.

The generic path (`ResourceStore.save`) sends the resource, the version and one INSERT per index
table: five to seven round trips per write, more for an update (old index rows are deleted first).
On PostgreSQL the same rows go in one statement: data-modifying CTEs, the index rows of each table as
parallel arrays expanded with `unnest`. Every sub-statement sees the same snapshot, so an update's
DELETE of the old index rows never touches the rows the same statement inserts.

The same statement may also carry the write's audit row and the writer's access link to the patient
(`patient_access`, ignored when it exists), so that a create or an update is one round trip. And it
may carry several resources (a settlement's Claim, ClaimResponse and ExplanationOfBenefit): each
gets its own CTEs and parameters, suffixed with its place in the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection

from ..domain.audit import AUDIT_COLUMNS, audit_params
from ..domain.kept import driver_rows
from .search_params import IndexRows

# In the fragments of one resource, "@" stands for its suffix: "" when the statement writes one
# resource (its SQL is then exactly the single-resource statement), "_0", "_1"... when it writes several.
_INDEXES = """
    t@ AS (INSERT INTO fhir_idx_token (resource_pk, res_type, param, system, code)
          SELECT k@.pk, %(res_type@)s, x.param, x.system, x.code
          FROM k@, unnest(%(t_param@)s::text[], %(t_system@)s::text[], %(t_code@)s::text[])
               AS x(param, system, code)),
    s@ AS (INSERT INTO fhir_idx_string (resource_pk, res_type, param, value, exact)
          SELECT k@.pk, %(res_type@)s, x.param, x.value, x.exact
          FROM k@, unnest(%(s_param@)s::text[], %(s_value@)s::text[], %(s_exact@)s::text[])
               AS x(param, value, exact)),
    d@ AS (INSERT INTO fhir_idx_date (resource_pk, res_type, param, low, high)
          SELECT k@.pk, %(res_type@)s, x.param, x.low, x.high
          FROM k@, unnest(%(d_param@)s::text[], %(d_low@)s::timestamptz[], %(d_high@)s::timestamptz[])
               AS x(param, low, high)),
    r@ AS (INSERT INTO fhir_idx_reference (resource_pk, res_type, param, target_type, target_id)
          SELECT k@.pk, %(res_type@)s, x.param, x.target_type, x.target_id
          FROM k@, unnest(%(r_param@)s::text[], %(r_type@)s::text[], %(r_id@)s::text[])
               AS x(param, target_type, target_id)),
    q@ AS (INSERT INTO fhir_idx_quantity (resource_pk, res_type, param, system, code, unit, value)
          SELECT k@.pk, %(res_type@)s, x.param, x.system, x.code, x.unit, x.value
          FROM k@, unnest(%(q_param@)s::text[], %(q_system@)s::text[], %(q_code@)s::text[],
                          %(q_unit@)s::text[], %(q_value@)s::numeric[])
               AS x(param, system, code, unit, value)),
    v@ AS (INSERT INTO fhir_resource_version
              (resource_pk, version_id, res_type, last_updated, method, deleted, content)
          SELECT k@.pk, %(version_id@)s, %(res_type@)s, %(last_updated@)s, %(method@)s, false, %(content@)s
          FROM k@)"""

# The statements are composed of the constant fragments below; every value is a bound parameter.
_CREATE_ROW = """
    k@ AS (INSERT INTO fhir_resource
               (res_type, res_id, version_id, last_updated, deleted, content, owner_org_id, patient_id)
           VALUES (%(res_type@)s, %(res_id@)s, %(version_id@)s, %(last_updated@)s, false, %(content@)s,
                   %(owner_org_id@)s, %(patient_id@)s)
           RETURNING pk),"""

_UPDATE_ROW = """
    k@ AS (UPDATE fhir_resource
           SET version_id = %(version_id@)s, last_updated = %(last_updated@)s, deleted = false,
               content = %(content@)s, patient_id = %(patient_id@)s
           WHERE pk = %(pk@)s
           RETURNING pk),
    old_t@ AS (DELETE FROM fhir_idx_token WHERE resource_pk = %(pk@)s),
    old_s@ AS (DELETE FROM fhir_idx_string WHERE resource_pk = %(pk@)s),
    old_d@ AS (DELETE FROM fhir_idx_date WHERE resource_pk = %(pk@)s),
    old_r@ AS (DELETE FROM fhir_idx_reference WHERE resource_pk = %(pk@)s),
    old_q@ AS (DELETE FROM fhir_idx_quantity WHERE resource_pk = %(pk@)s),"""

_GRANT = """,
    g AS (INSERT INTO patient_access (patient_id, org_id, reason)
          VALUES (%(grant_patient)s, %(grant_org)s, %(grant_reason)s)
          ON CONFLICT DO NOTHING)"""

_AUDIT = f""",
    a AS (INSERT INTO audit_record ({", ".join(AUDIT_COLUMNS)})
          VALUES ({", ".join(f"%(audit_{name})s" for name in AUDIT_COLUMNS)}))"""  # noqa: S608 (column names)


# A write that names references checks them in the same statement: `missing` lists the ones that
# point at no live resource, and then nothing of the write happens (the caller answers 422).
_REFS = """
    want AS (SELECT * FROM unnest(%(ref_types)s::text[], %(ref_ids)s::text[]) AS w(res_type, res_id)),
    missing AS (SELECT w.res_type, w.res_id FROM want w
                WHERE NOT EXISTS (SELECT 1 FROM fhir_resource r WHERE r.res_type = w.res_type
                                  AND r.res_id = w.res_id AND NOT r.deleted)),"""

_CREATE_ROW_CHECKED = """
    k@ AS (INSERT INTO fhir_resource
               (res_type, res_id, version_id, last_updated, deleted, content, owner_org_id, patient_id)
           SELECT %(res_type@)s, %(res_id@)s, %(version_id@)s, %(last_updated@)s, false, %(content@)s,
                  %(owner_org_id@)s, %(patient_id@)s
           WHERE NOT EXISTS (SELECT 1 FROM missing)
           RETURNING pk),"""

_UPDATE_ROW_CHECKED = """
    k@ AS (UPDATE fhir_resource
           SET version_id = %(version_id@)s, last_updated = %(last_updated@)s, deleted = false,
               content = %(content@)s, patient_id = %(patient_id@)s
           WHERE pk = %(pk@)s AND NOT EXISTS (SELECT 1 FROM missing)
           RETURNING pk),
    old_t@ AS (DELETE FROM fhir_idx_token WHERE resource_pk IN (SELECT pk FROM k@)),
    old_s@ AS (DELETE FROM fhir_idx_string WHERE resource_pk IN (SELECT pk FROM k@)),
    old_d@ AS (DELETE FROM fhir_idx_date WHERE resource_pk IN (SELECT pk FROM k@)),
    old_r@ AS (DELETE FROM fhir_idx_reference WHERE resource_pk IN (SELECT pk FROM k@)),
    old_q@ AS (DELETE FROM fhir_idx_quantity WHERE resource_pk IN (SELECT pk FROM k@)),"""

_GRANT_CHECKED = """,
    g AS (INSERT INTO patient_access (patient_id, org_id, reason)
          SELECT %(grant_patient)s, %(grant_org)s, %(grant_reason)s FROM k
          ON CONFLICT DO NOTHING)"""

_AUDIT_CHECKED = f""",
    a AS (INSERT INTO audit_record ({", ".join(AUDIT_COLUMNS)})
          SELECT {", ".join(f"%(audit_{name})s" for name in AUDIT_COLUMNS)} FROM k)"""  # noqa: S608


def _suffixes(count: int) -> list[str]:
    return [""] if count == 1 else [f"_{i}" for i in range(count)]


@cache
def checked_statement(*, update: bool, grant: bool, audit: bool, seen: str | None = None) -> str:
    """The write statement of one resource that first checks its references (`%(ref_types)s`,
    `%(ref_ids)s`): it answers the pk (None when nothing was written) and the missing references.

    `seen`: a SQL condition (over `%(seen_patient)s` and the writer's values) that the patient whose
    record this is must meet, the writer's access policy; a patient it may not see is answered as
    missing, exactly as one that does not exist.
    """
    hidden = f"\n                UNION SELECT 'Patient', %(seen_patient)s::text WHERE NOT ({seen})"
    refs = _REFS if seen is None else _REFS.replace("AND NOT r.deleted)),", f"AND NOT r.deleted){hidden}),")
    return "".join((
        "\nWITH", refs,
        ((_UPDATE_ROW_CHECKED if update else _CREATE_ROW_CHECKED) + _INDEXES).replace("@", ""),
        _GRANT_CHECKED if grant else "",
        _AUDIT_CHECKED if audit else "",
        "\nSELECT (SELECT pk FROM k), ARRAY(SELECT res_type || '/' || res_id FROM missing)\n",
    ))


@cache
def statements(updates: tuple[bool, ...], *, grant: bool, audit: bool, also: tuple[str, ...] = ()) -> str:
    """The write statement of one or more resources (each new, or a new version: `updates`), with
    the access link, the audit row and other sub-statements (`also`: their SQL, each a data-modifying
    statement whose parameter names are its own); it answers each resource's pk, in order."""
    suffixes = _suffixes(len(updates))
    parts = [
        ((_UPDATE_ROW if update else _CREATE_ROW) + _INDEXES).replace("@", suffix)
        for update, suffix in zip(updates, suffixes, strict=True)
    ]
    pks = ", ".join(f"k{suffix}.pk" for suffix in suffixes)
    sources = ", ".join(f"k{suffix}" for suffix in suffixes)
    return "".join((
        "\nWITH", ",".join(parts),
        _GRANT if grant else "",
        _AUDIT if audit else "",
        "".join(f",\n    also_{i} AS ({sql})" for i, sql in enumerate(also)),
        f"\nSELECT {pks} FROM {sources}\n",
    ))


class Version(NamedTuple):
    """One resource version to write: the row's values and its index rows (`pk`: None for a new
    resource, else the row to replace)."""

    pk: int | None
    res_type: str
    res_id: str
    version_id: int
    last_updated: datetime
    method: str
    content: bytes
    owner_org_id: str | None
    patient_id: str | None
    rows: IndexRows


def _array(values: Sequence[Any]) -> str:
    """A PostgreSQL array literal of strings, datetimes, decimals or None (NULL), for a
    `%(x)s::text[]`, `::timestamptz[]` or `::numeric[]` parameter: psycopg would otherwise look
    through every list element to choose how to send it, a tenth of a create's CPU."""
    items = []
    for value in values:
        if value is None:
            items.append("NULL")
            continue
        text = value.isoformat() if isinstance(value, datetime) else str(value)
        items.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[str]:
    """Each column of `rows` as an array literal (`_array`)."""
    if not rows:
        return ["{}"] * width
    return [_array(col) for col in zip(*rows, strict=True)]


def _params(version: Version, suffix: str) -> dict[str, Any]:
    rows = version.rows
    t_param, t_system, t_code = _columns(rows.tokens, 3)
    s_param, s_value, s_exact = _columns(rows.strings, 3)
    d_param, d_low, d_high = _columns(rows.dates, 3)
    r_param, r_type, r_id = _columns(rows.references, 3)
    q_param, q_system, q_code, q_unit, q_value = _columns(rows.quantities, 5)
    values = {
        "pk": version.pk, "res_type": version.res_type, "res_id": version.res_id,
        "version_id": version.version_id, "last_updated": version.last_updated,
        "method": version.method, "content": version.content,
        "owner_org_id": version.owner_org_id, "patient_id": version.patient_id,
        "t_param": t_param, "t_system": t_system, "t_code": t_code,
        "s_param": s_param, "s_value": s_value, "s_exact": s_exact,
        "d_param": d_param, "d_low": d_low, "d_high": d_high,
        "r_param": r_param, "r_type": r_type, "r_id": r_id,
        "q_param": q_param, "q_system": q_system, "q_code": q_code, "q_unit": q_unit, "q_value": q_value,
    }  # fmt: skip
    return values if not suffix else {name + suffix: value for name, value in values.items()}


def write_versions(
    connection: Connection,
    versions: Sequence[Version],
    *,
    grant: tuple[str, str, str] | None = None,
    audit: dict[str, Any] | None = None,
    also: Sequence[tuple[str, dict[str, Any]]] = (),
) -> list[int]:
    """Insert or replace each version with its history and index rows, in one statement; their pks.

    `grant`: (patient, organisation, reason) of an access link to record; `audit`: the write's
    audit_record row (every column); `also`: other writes to make in the same statement, as (SQL,
    values) whose parameter names differ from these and from each other's.
    """
    params: dict[str, Any] = {}
    for version, suffix in zip(versions, _suffixes(len(versions)), strict=True):
        params.update(_params(version, suffix))
    if grant is not None:
        params["grant_patient"], params["grant_org"], params["grant_reason"] = grant
    if audit is not None:
        params.update(audit_params(audit))
    for _, values in also:
        params.update(values)
    sql = statements(
        tuple(v.pk is not None for v in versions), grant=grant is not None, audit=audit is not None,
        also=tuple(text for text, _ in also),
    )
    (written,) = driver_rows(connection, sql, params)
    return [int(pk) for pk in written]


def write_checked(
    connection: Connection,
    version: Version,
    refs: Sequence[tuple[str, str]],
    *,
    grant: tuple[str, str, str] | None = None,
    audit: dict[str, Any] | None = None,
    seen: tuple[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Write one version (as `write_versions`) unless one of `refs` (type, id) points at no live
    resource: then nothing is written, and those are answered ("Type/id"), in order.

    `seen`: the access condition on the record's patient (`checked_statement`) and its values."""
    params = _params(version, "")
    if seen is not None:
        params.update(seen[1])
    params["ref_types"] = _array([t for t, _ in refs])
    params["ref_ids"] = _array([i for _, i in refs])
    if grant is not None:
        params["grant_patient"], params["grant_org"], params["grant_reason"] = grant
    if audit is not None:
        params.update(audit_params(audit))
    sql = checked_statement(update=version.pk is not None, grant=grant is not None, audit=audit is not None,
                            seen=seen[0] if seen is not None else None)
    ((pk, missing),) = driver_rows(connection, sql, params)
    return sorted(missing) if pk is None else []
