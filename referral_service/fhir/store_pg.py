"""PostgreSQL: a resource version, its history row and all its index rows written in one statement.

The generic path (`ResourceStore.save`) sends the resource, the version and one INSERT per index
table: five to seven round trips per write, more for an update (old index rows are deleted first).
On PostgreSQL the same rows go in one statement: data-modifying CTEs, the index rows of each table as
parallel arrays expanded with `unnest`. Every sub-statement sees the same snapshot, so an update's
DELETE of the old index rows never touches the rows the same statement inserts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from .search_params import IndexRows

_INDEXES = """
    t AS (INSERT INTO fhir_idx_token (resource_pk, res_type, param, system, code)
          SELECT k.pk, %(res_type)s, x.param, x.system, x.code
          FROM k, unnest(%(t_param)s::text[], %(t_system)s::text[], %(t_code)s::text[])
               AS x(param, system, code)),
    s AS (INSERT INTO fhir_idx_string (resource_pk, res_type, param, value, exact)
          SELECT k.pk, %(res_type)s, x.param, x.value, x.exact
          FROM k, unnest(%(s_param)s::text[], %(s_value)s::text[], %(s_exact)s::text[])
               AS x(param, value, exact)),
    d AS (INSERT INTO fhir_idx_date (resource_pk, res_type, param, low, high)
          SELECT k.pk, %(res_type)s, x.param, x.low, x.high
          FROM k, unnest(%(d_param)s::text[], %(d_low)s::timestamptz[], %(d_high)s::timestamptz[])
               AS x(param, low, high)),
    r AS (INSERT INTO fhir_idx_reference (resource_pk, res_type, param, target_type, target_id)
          SELECT k.pk, %(res_type)s, x.param, x.target_type, x.target_id
          FROM k, unnest(%(r_param)s::text[], %(r_type)s::text[], %(r_id)s::text[])
               AS x(param, target_type, target_id)),
    v AS (INSERT INTO fhir_resource_version
              (resource_pk, version_id, res_type, last_updated, method, deleted, content)
          SELECT k.pk, %(version_id)s, %(res_type)s, %(last_updated)s, %(method)s, false, %(content)s
          FROM k)
"""

# Both statements are composed of the constant fragments above; every value is a bound parameter.
CREATE = f"""
WITH k AS (INSERT INTO fhir_resource
               (res_type, res_id, version_id, last_updated, deleted, content, owner_org_id, patient_id)
           VALUES (%(res_type)s, %(res_id)s, %(version_id)s, %(last_updated)s, false, %(content)s,
                   %(owner_org_id)s, %(patient_id)s)
           RETURNING pk),
{_INDEXES}
SELECT pk FROM k
"""  # noqa: S608

UPDATE = f"""
WITH k AS (UPDATE fhir_resource
           SET version_id = %(version_id)s, last_updated = %(last_updated)s, deleted = false,
               content = %(content)s, patient_id = %(patient_id)s
           WHERE pk = %(pk)s
           RETURNING pk),
    old_t AS (DELETE FROM fhir_idx_token WHERE resource_pk = %(pk)s),
    old_s AS (DELETE FROM fhir_idx_string WHERE resource_pk = %(pk)s),
    old_d AS (DELETE FROM fhir_idx_date WHERE resource_pk = %(pk)s),
    old_r AS (DELETE FROM fhir_idx_reference WHERE resource_pk = %(pk)s),
{_INDEXES}
SELECT pk FROM k
"""  # noqa: S608


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def write_version(
    connection: Connection,
    *,
    pk: int | None,
    res_type: str,
    res_id: str,
    version_id: int,
    last_updated: datetime,
    method: str,
    content: bytes,
    owner_org_id: str | None,
    patient_id: str | None,
    rows: IndexRows,
) -> int:
    """Insert (pk None) or replace the current version with its history and index rows; its pk."""
    t_param, t_system, t_code = _columns(rows.tokens, 3)
    s_param, s_value, s_exact = _columns(rows.strings, 3)
    d_param, d_low, d_high = _columns(rows.dates, 3)
    r_param, r_type, r_id = _columns(rows.references, 3)
    params = {
        "pk": pk, "res_type": res_type, "res_id": res_id, "version_id": version_id,
        "last_updated": last_updated, "method": method, "content": content,
        "owner_org_id": owner_org_id, "patient_id": patient_id,
        "t_param": t_param, "t_system": t_system, "t_code": t_code,
        "s_param": s_param, "s_value": s_value, "s_exact": s_exact,
        "d_param": d_param, "d_low": d_low, "d_high": d_high,
        "r_param": r_param, "r_type": r_type, "r_id": r_id,
    }  # fmt: skip
    written = connection.exec_driver_sql(CREATE if pk is None else UPDATE, params).scalar_one()
    return int(written)
