"""Persistence of FHIR resources: versions, search indexes, access-filtered searches (SQL only)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    cast,
    delete,
    distinct,
    event,
    false,
    func,
    insert,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import NullType

from ..domain.actor import Actor
from ..domain.audit import AUDIT_BINDS, AUDIT_COLUMNS, audit_params, queue_audit_row
from ..domain.base import UTCDateTime, new_id
from ..domain.errors import Gone, NotFound, Problem, Unprocessable
from ..domain.fhir_store import (
    DateIndex,
    PatientAccess,
    QuantityIndex,
    ReferenceIndex,
    ResourceVersion,
    StoredResource,
    StringIndex,
    TokenIndex,
)
from ..domain.kept import driver_rows, kept_many, kept_rows
from ..domain.registry import AuditRecord, Patient
from . import jsonio, store_pg
from .resources import RESOURCES, ResourceDef
from .search import Clause, Include, SearchQuery, encode_cursor, sort_kind
from .search_params import MAX_INSTANT, MIN_INSTANT, TEXT_SUFFIX, IndexRows, extract, normalise


@dataclass(frozen=True)
class Stored:
    """One stored version as served: its JSON bytes and the header values."""

    res_type: str
    res_id: str
    version_id: int
    last_updated: datetime
    content: bytes
    deleted: bool = False
    patient_id: str | None = None  # whose record it is (set by reads of the current version)

    @property
    def etag(self) -> str:
        """The weak ETag of this version."""
        return f'W/"{self.version_id}"'

    def as_dict(self) -> dict[str, Any]:
        """The resource as a dict (parses the stored JSON)."""
        return dict(jsonio.loads(self.content))


REVINCLUDE_LIMIT = 1000  # resources brought in by one _revinclude of one page (per round)
MAX_INCLUDE_ROUNDS = 4  # how deep :iterate follows references from included resources


@dataclass
class SearchPage:
    """One page of matches plus included resources."""

    matches: list[Stored]
    included: list[Stored]
    total: int | None
    next_cursor: str | None
    warnings: list[str] = field(default_factory=list)  # told to the client in an outcome entry


def instant(ts: datetime) -> str:
    """FHIR instant text (UTC, milliseconds)."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> datetime:
    """Now in UTC truncated to milliseconds, so meta.lastUpdated and the database agree."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# The columns a served row needs (current version).
SERVED = (
    StoredResource.res_type,
    StoredResource.res_id,
    StoredResource.version_id,
    StoredResource.last_updated,
    StoredResource.content,
    StoredResource.deleted,
)


# The current row of a resource by type and id, and the same locked (`ResourceStore.current`).
_CURRENT = select(StoredResource).where(
    StoredResource.res_type == bindparam("res_type"), StoredResource.res_id == bindparam("res_id")
)
_CURRENT_FOR_UPDATE = _CURRENT.with_for_update()

# The content of a live resource by type and id (`ResourceStore.load`).
_LOAD = select(StoredResource.content).where(
    StoredResource.res_type == bindparam("res_type"),
    StoredResource.res_id == bindparam("res_id"),
    StoredResource.deleted.is_(False),
)


def _insert(model: Any, *names: str) -> Any:
    """INSERT of the named columns, each value a bound parameter of the column's name."""
    return insert(model).values({name: bindparam(name) for name in names})


# Write statements of the generic path (SQLite), built once and run as kept statements (`kept_rows`,
# `kept_many`): the values come as parameters.
_INSERT_RESOURCE = _insert(
    StoredResource, "res_type", "res_id", "version_id", "last_updated", "deleted", "content", "owner_org_id",
    "patient_id",
).returning(StoredResource.pk)
_INSERT_VERSION = _insert(
    ResourceVersion, "resource_pk", "version_id", "res_type", "last_updated", "method", "deleted", "content"
)
_INDEX_COLUMNS = ("resource_pk", "res_type", "param")
_INSERT_INDEX = {
    "token": _insert(TokenIndex, *_INDEX_COLUMNS, "system", "code"),
    "string": _insert(StringIndex, *_INDEX_COLUMNS, "value", "exact"),
    "date": _insert(DateIndex, *_INDEX_COLUMNS, "low", "high"),
    "reference": _insert(ReferenceIndex, *_INDEX_COLUMNS, "target_type", "target_id"),
    "quantity": _insert(QuantityIndex, *_INDEX_COLUMNS, "system", "code", "unit", "value"),
}


_ACCESS_VALUES: dict[str, Any] = {name: bindparam(name) for name in ("patient_id", "org_id", "reason")}
_GRANT_ACCESS = {
    "postgresql": pg_insert(PatientAccess).values(_ACCESS_VALUES).on_conflict_do_nothing(),
    "sqlite": sqlite_insert(PatientAccess).values(_ACCESS_VALUES).on_conflict_do_nothing(),
}


_GRANTED = "granted_access"  # session.info: (patient, org) links granted in the open transaction


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_soft_rollback")
def _forget_granted(session: Session, *_: Any) -> None:
    session.info.pop(_GRANTED, None)


def _stored(row: Any) -> Stored:
    return Stored(row.res_type, row.res_id, row.version_id, row.last_updated, row.content, row.deleted)


def audits_inline(connection: Connection) -> bool:
    """Whether a read on this connection can write its audit row in its own statement (PostgreSQL)."""
    return connection.dialect.name == "postgresql"


def read_current(
    connection: Connection, res_type: str, res_id: str, actor: Actor, *, audit: dict[str, Any] | None = None
) -> Stored:
    """The current version, read on a connection (no session needed); 404 unknown or not visible, 410.

    `audit` (only where `audits_inline`): the audit row, written by the read statement itself when
    the read finds a row, with that row's patient.
    """
    rdef = RESOURCES[res_type]
    shape = policy_shape(actor, rdef)
    params = {"res_type": res_type, "res_id": res_id, **policy_params(actor)}
    if audit is not None:
        if not audits_inline(connection):
            raise ValueError(f"{connection.dialect.name} cannot write the audit row with the read")
        stmt = _audited_read_statement(shape, bool(rdef.patient_paths))
        params.update(audit_params(audit))
    else:
        stmt = _read_statement(shape)
    found = kept_rows(connection, stmt, params)
    row = found[0] if found else None
    if row is None:
        raise NotFound(f"{res_type}/{res_id} is not known")
    if row.deleted:
        raise Gone(f"{res_type}/{res_id} was deleted")
    return Stored(row.res_type, row.res_id, row.version_id, row.last_updated, row.content, False,
                  row.patient_id)


class ResourceStore:
    """Reads and writes resources of every registered type inside the caller's transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _sql(self) -> Connection:
        """The session's connection, for column queries and Core writes (no ORM machinery per call).

        Pending ORM changes (registry rows of this transaction) are flushed first, as a query through
        the session would.
        """
        if self.session.new or self.session.dirty or self.session.deleted:
            self.session.flush()
        return self.session.connection()

    def connection(self) -> Connection:
        """The session's connection for a use case's own kept statements (`kept_rows`), pending ORM
        changes flushed first."""
        return self._sql()

    # ----------------------------------------------------------------- reads

    def current(self, res_type: str, res_id: str, *, for_update: bool = False) -> StoredResource | None:
        """The current row (deleted or not), optionally locked for the rest of the transaction."""
        stmt = _CURRENT_FOR_UPDATE if for_update else _CURRENT
        return self.session.scalars(stmt, {"res_type": res_type, "res_id": res_id}).first()

    def load(self, res_type: str, res_id: str) -> dict[str, Any] | None:
        """The current JSON of a live resource, for use cases (no access check: callers decide)."""
        rows = kept_rows(self._sql(), _LOAD, {"res_type": res_type, "res_id": res_id})
        return dict(jsonio.loads(rows[0].content)) if rows else None

    def read(
        self, res_type: str, res_id: str, actor: Actor, *, audit: dict[str, Any] | None = None
    ) -> Stored:
        """The current version; 404 when unknown or not visible to the actor, 410 when deleted.

        `audit`: the audit row of this access, recorded only when the read succeeds, with the patient
        of the row read. On PostgreSQL the read statement writes it (one round trip, one implicit
        transaction); elsewhere it is queued for the commit.
        """
        connection = self._sql()
        if audit is None or audits_inline(connection):
            return read_current(connection, res_type, res_id, actor, audit=audit)
        stored = read_current(connection, res_type, res_id, actor)
        patient = stored.patient_id if RESOURCES[res_type].patient_paths else None
        queue_audit_row(self.session, {**audit, "patient_id": patient})
        return stored

    def vread(self, res_type: str, res_id: str, version_id: int, actor: Actor) -> Stored:
        """One version; 404 when unknown, 410 when that version is a deletion."""
        rdef = RESOURCES[res_type]
        stmt = (
            select(
                ResourceVersion.version_id,
                ResourceVersion.last_updated,
                ResourceVersion.content,
                ResourceVersion.deleted,
            )
            .join(StoredResource, StoredResource.pk == ResourceVersion.resource_pk)
            .where(
                StoredResource.res_type == res_type,
                StoredResource.res_id == res_id,
                ResourceVersion.version_id == version_id,
                visible(actor, rdef),
            )
        )
        row = self._sql().execute(stmt).first()
        if row is None:
            raise NotFound(f"{res_type}/{res_id}/_history/{version_id} is not known")
        if row.deleted:
            raise Gone(f"{res_type}/{res_id} version {version_id} is a deletion")
        return Stored(res_type, res_id, row.version_id, row.last_updated, row.content, row.deleted)

    def history(
        self,
        res_type: str | None,
        res_id: str | None,
        actor: Actor,
        *,
        count: int,
        since: datetime | None = None,
        at: tuple[datetime, datetime] | None = None,
        before: tuple[datetime, int, int] | None = None,
    ) -> tuple[list[Stored], tuple[datetime, int, int] | None]:
        """Versions newest first (instance, type or system level), keyset-paged; `since` and `at`:
        see `version_window`."""
        stmt = select(
            StoredResource.res_type,
            StoredResource.res_id,
            ResourceVersion.version_id,
            ResourceVersion.last_updated,
            ResourceVersion.content,
            ResourceVersion.deleted,
            ResourceVersion.resource_pk,
        ).join(StoredResource, StoredResource.pk == ResourceVersion.resource_pk)
        if res_type is not None:
            stmt = stmt.where(ResourceVersion.res_type == res_type, visible(actor, RESOURCES[res_type]))
        if res_id is not None:
            stmt = stmt.where(StoredResource.res_id == res_id)
        stmt = stmt.where(*version_window(since, at))
        if before is not None:
            ts, pk, vid = before
            stmt = stmt.where(
                or_(
                    ResourceVersion.last_updated < ts,
                    and_(ResourceVersion.last_updated == ts, ResourceVersion.resource_pk < pk),
                    and_(
                        ResourceVersion.last_updated == ts,
                        ResourceVersion.resource_pk == pk,
                        ResourceVersion.version_id < vid,
                    ),
                )
            )
        stmt = stmt.order_by(
            ResourceVersion.last_updated.desc(),
            ResourceVersion.resource_pk.desc(),
            ResourceVersion.version_id.desc(),
        ).limit(count + 1)
        rows = self._sql().execute(stmt).all()
        page = [
            Stored(r.res_type, r.res_id, r.version_id, r.last_updated, r.content, r.deleted)
            for r in rows[:count]
        ]
        nxt = None
        if len(rows) > count and page:
            last = rows[count - 1]
            nxt = (last.last_updated, last.resource_pk, last.version_id)
        return page, nxt

    # ---------------------------------------------------------------- writes

    def save(
        self,
        res_type: str,
        resource: dict[str, Any],
        *,
        method: str,
        owner_org_id: str | None,
        existing: StoredResource | None = None,
        index_rows: IndexRows | None = None,
        grant: tuple[str, str, str] | None = None,
        audit: dict[str, Any] | None = None,
        check_refs: Sequence[tuple[str, str]] = (),
        also: Sequence[tuple[str, dict[str, Any]]] = (),
        seen_by: Actor | None = None,
    ) -> Stored:
        """Store a new version (creating the resource when `existing` is None) with its indexes.

        `grant`: (patient, organisation, reason) of an access link to record with it (`grant_access`);
        `audit`: the write's audit row. On PostgreSQL both ride in the one write statement; elsewhere
        the link is inserted next and the row queued for the commit. `check_refs`: (type, id) pairs
        that must name live resources, else 422 and nothing is written (PostgreSQL: checked by the
        write statement itself). `seen_by`: the writer, who must be allowed to see the patient of
        `grant` (else 422 as for a reference to nothing: a write never opens a record to its writer).
        """
        version = self.prepare(
            res_type, resource, method=method, owner_org_id=owner_org_id, existing=existing,
            index_rows=index_rows,
        )
        return self.write([version], grant=grant, audit=audit, check_refs=check_refs, also=also,
                          seen_by=seen_by)[0]

    def prepare(
        self,
        res_type: str,
        resource: dict[str, Any],
        *,
        method: str,
        owner_org_id: str | None,
        existing: StoredResource | None = None,
        index_rows: IndexRows | None = None,
    ) -> store_pg.Version:
        """The next version of a resource (its id, meta, JSON and index rows), not yet written."""
        rdef = RESOURCES[res_type]
        ts = now_ms()
        if existing is None:
            res_id = str(resource.get("id") or new_id())
            version = 1
        else:
            res_id = existing.res_id
            version = existing.version_id + 1
        resource = dict(resource)
        resource["id"] = res_id
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = instant(ts)
        resource["meta"] = meta
        content = jsonio.dumps(_ordered(resource))
        if index_rows is None:
            index_rows = extract(resource, list(rdef.params))
        return store_pg.Version(
            existing.pk if existing is not None else None, res_type, res_id, version, ts, method,
            content, owner_org_id, rdef.compartment_patient(resource), index_rows,
        )

    def write(
        self,
        versions: list[store_pg.Version],
        *,
        grant: tuple[str, str, str] | None = None,
        audit: dict[str, Any] | None = None,
        also: Sequence[tuple[str, dict[str, Any]]] = (),
        check_refs: Sequence[tuple[str, str]] = (),
        seen_by: Actor | None = None,
    ) -> list[Stored]:
        """Write prepared versions, with the access link and the audit row of the write.

        On PostgreSQL they all go in one statement, with the other writes of `also` (SQL and values,
        see `store_pg.write_versions`) or, for one version, the check of `check_refs` (see
        `store_pg.write_checked`: 422 and nothing written when one names no live resource); both are
        PostgreSQL's. Elsewhere the versions go one after the other, the link inserted next and the
        audit row queued for the commit.
        """
        connection = self._sql()
        if grant is not None and self._already_granted(grant[0], grant[1]):
            grant = None
        seen = None
        if grant is not None and seen_by is not None and not seen_by.sees_everything:
            seen = (_patient_seen_sql(), _patient_seen_values(seen_by, grant[0]))
            if not (check_refs and connection.dialect.name == "postgresql"):
                if not patient_seen(connection, seen_by, grant[0]):
                    raise missing_references(versions[0].res_type, [("Patient", grant[0])])
                seen = None
        if connection.dialect.name == "postgresql":
            if check_refs:
                (version,) = versions
                if also:
                    raise ValueError("`also` sub-statements and `check_refs` do not go together")
                missing = store_pg.write_checked(
                    connection, version, sorted(check_refs), grant=grant, audit=audit, seen=seen
                )
                if missing:
                    raise missing_references(version.res_type, [m.split("/", 1) for m in missing])
            else:
                store_pg.write_versions(connection, versions, grant=grant, audit=audit, also=also)
            if grant is not None:
                self._granted().add((grant[0], grant[1]))
        else:
            if also or check_refs:
                raise ValueError("`also` and `check_refs` are PostgreSQL's")
            for v in versions:
                self._write_version(connection, v)
            if grant is not None:
                self.grant_access(*grant)
            if audit is not None:
                queue_audit_row(self.session, audit)
        if any(v.pk is not None for v in versions):
            self._expire_rows()
        return [Stored(v.res_type, v.res_id, v.version_id, v.last_updated, v.content) for v in versions]

    def _write_version(self, connection: Connection, v: store_pg.Version) -> None:
        """The generic write: resource, history row, then one INSERT per index table."""
        if v.pk is None:
            ((pk,),) = kept_rows(
                connection,
                _INSERT_RESOURCE,
                {
                    "res_type": v.res_type,
                    "res_id": v.res_id,
                    "version_id": v.version_id,
                    "last_updated": v.last_updated,
                    "deleted": False,
                    "content": v.content,
                    "owner_org_id": v.owner_org_id,
                    "patient_id": v.patient_id,
                },
            )
        else:
            pk = v.pk
            connection.execute(
                update(StoredResource)
                .where(StoredResource.pk == pk)
                .values(
                    version_id=v.version_id, last_updated=v.last_updated, deleted=False, content=v.content,
                    patient_id=v.patient_id,
                )
            )
            self._drop_indexes(pk)
        kept_rows(
            connection,
            _INSERT_VERSION,
            {
                "resource_pk": pk,
                "version_id": v.version_id,
                "res_type": v.res_type,
                "last_updated": v.last_updated,
                "method": v.method,
                "deleted": False,
                "content": v.content,
            },
        )
        self._write_indexes(pk, v.res_type, v.rows)

    def delete(self, existing: StoredResource) -> Stored:
        """Mark a resource deleted (a new version with no content); its indexes go."""
        ts = now_ms()
        version = existing.version_id + 1
        self._sql().execute(
            update(StoredResource)
            .where(StoredResource.pk == existing.pk)
            .values(version_id=version, last_updated=ts, deleted=True)
        )
        self._sql().execute(
            insert(ResourceVersion).values(
                resource_pk=existing.pk,
                version_id=version,
                res_type=existing.res_type,
                last_updated=ts,
                method="DELETE",
                deleted=True,
                content=b"{}",
            )
        )
        self._drop_indexes(existing.pk)
        self._expire_rows()
        return Stored(existing.res_type, existing.res_id, version, ts, b"{}", deleted=True)

    def grant_access(self, patient_id: str, org_id: str, reason: str) -> None:
        """Record that an organisation treated, referred or received the patient.

        Concurrent requests may grant the same link: the insert ignores an existing row instead of
        failing on the primary key. A link already granted in this transaction is not sent again.
        """
        if self._already_granted(patient_id, org_id):
            return
        connection = self._sql()
        statement = _GRANT_ACCESS.get(connection.dialect.name)
        values = {"patient_id": patient_id, "org_id": org_id, "reason": reason}
        if statement is not None:
            kept_rows(connection, statement, values)
        elif self.session.get(PatientAccess, (patient_id, org_id)) is None:
            self.session.add(PatientAccess(**values))
            self.session.flush()
        self._granted().add((patient_id, org_id))

    def _granted(self) -> set[tuple[str, str]]:
        granted: set[tuple[str, str]] = self.session.info.setdefault(_GRANTED, set())
        return granted

    def _already_granted(self, patient_id: str, org_id: str) -> bool:
        """Whether the link was granted in the open transaction (no need to send it again)."""
        return (patient_id, org_id) in self.session.info.get(_GRANTED, ())

    def _expire_rows(self) -> None:
        """Forget loaded StoredResource rows (changed behind the ORM's back by Core statements).

        Only those: expiring everything would make the caller's other objects (a settlement, the
        accumulators) reload attribute by attribute.
        """
        for obj in list(self.session.identity_map.values()):
            if isinstance(obj, StoredResource):
                self.session.expire(obj)

    def reindex(self, after_pk: int, batch: int) -> int | None:
        """Extract again the index rows of up to `batch` live resources after `after_pk` (in pk
        order), replacing their old ones: after a search parameter or what it indexes changed
        (`flask fhir-reindex`). The last pk done, or None when none was left."""
        rows = self._sql().execute(
            select(StoredResource.pk, StoredResource.res_type, StoredResource.content)
            .where(StoredResource.pk > after_pk, StoredResource.deleted == false())
            .order_by(StoredResource.pk)
            .limit(batch)
        ).all()
        for pk, res_type, content in rows:
            rdef = RESOURCES.get(res_type)
            if rdef is None or rdef.audit_log:
                continue
            self._drop_indexes(pk)
            self._write_indexes(pk, res_type, extract(jsonio.loads(content), list(rdef.params)))
        return rows[-1].pk if rows else None

    def _drop_indexes(self, pk: int) -> None:
        for table in (TokenIndex, StringIndex, DateIndex, ReferenceIndex, QuantityIndex):
            self._sql().execute(delete(table).where(table.resource_pk == pk))

    def _write_indexes(self, pk: int, res_type: str, rows: IndexRows) -> None:
        """One multi-row INSERT per index table that has rows."""
        connection = self._sql()
        base = {"resource_pk": pk, "res_type": res_type}
        if rows.tokens:
            kept_many(
                connection,
                _INSERT_INDEX["token"],
                [{**base, "param": p, "system": s, "code": c} for p, s, c in rows.tokens],
            )
        if rows.strings:
            kept_many(
                connection,
                _INSERT_INDEX["string"],
                [{**base, "param": p, "value": v, "exact": e} for p, v, e in rows.strings],
            )
        if rows.dates:
            kept_many(
                connection,
                _INSERT_INDEX["date"],
                [{**base, "param": p, "low": lo, "high": hi} for p, lo, hi in rows.dates],
            )
        if rows.references:
            kept_many(
                connection,
                _INSERT_INDEX["reference"],
                [{**base, "param": p, "target_type": t, "target_id": i} for p, t, i in rows.references],
            )
        if rows.quantities:
            kept_many(
                connection,
                _INSERT_INDEX["quantity"],
                [{**base, "param": p, "system": s, "code": c, "unit": u, "value": v}
                 for p, s, c, u, v in rows.quantities],
            )

    # ---------------------------------------------------------------- search

    def search(self, query: SearchQuery, actor: Actor, *, audit: dict[str, Any] | None = None) -> SearchPage:
        """One page of matches in SQL (filters, access policy, keyset paging), plus includes.

        `audit`: the audit row of this search; on PostgreSQL the first statement writes it, elsewhere
        it is queued for the commit.
        """
        connection = self._sql()
        count_only = query.summary_count or query.count == 0
        counts = query.summary_count or query.total != "none"
        inline = (
            audit is not None and connection.dialect.name == "postgresql" and (counts or not count_only)
        )
        if audit is not None and not inline:
            queue_audit_row(self.session, audit)
        extra = audit_params(audit) if inline and audit is not None else None
        if count_only:
            return SearchPage([], [], self._count(query, actor, audit_values=extra) if counts else None, None)
        stmt, params = _search_statement("page", query, actor, audited=extra is not None)
        rows = kept_rows(connection, stmt, {**params, **extra} if extra else params)
        page_rows = rows[: query.count]
        next_cursor = None
        if len(rows) > query.count:
            last = page_rows[-1]
            values: list[str] | None = None
            if query.sort != _INSERTION_ORDER:
                values = [_cursor_value(getattr(last, f"sort_{i}")) for i in range(len(query.sort))]
            next_cursor = encode_cursor({"s": query.sort_name, "v": values, "pk": last.pk})
        total = None
        if query.total != "none":
            # A first page that holds every match is its own count; otherwise count in SQL.
            complete = query.cursor is None and next_cursor is None
            total = len(page_rows) if complete else self._count(query, actor)
        matches = [_stored(r) for r in page_rows]
        warnings: list[str] = []
        included = self._included(query, [r.pk for r in page_rows], matches, actor, warnings)
        return SearchPage(matches, included, total, next_cursor, warnings)

    def _count(
        self, query: SearchQuery, actor: Actor, *, audit_values: dict[str, Any] | None = None
    ) -> int:
        """COUNT(*) of the matches; `audit_values` (from `audit_params`): the statement also writes
        the search's audit row (PostgreSQL)."""
        stmt, params = _search_statement("count", query, actor, audited=audit_values is not None)
        values = {**params, **audit_values} if audit_values else params
        rows = kept_rows(self._sql(), stmt, values)
        return int(rows[0][0] or 0) if rows else 0

    def _included(
        self, query: SearchQuery, pks: list[int], matches: list[Stored], actor: Actor, warnings: list[str]
    ) -> list[Stored]:
        """The resources `_include`d and `_revinclude`d by a page: from the matches, then (for those
        marked :iterate) from what was included, round after round until nothing new comes in or
        after MAX_INCLUDE_ROUNDS; at most REVINCLUDE_LIMIT per `_revinclude` and round, with a
        warning in `warnings` when there were more."""
        if not pks or not (query.includes or query.revincludes):
            return []
        seen = {(m.res_type, m.res_id) for m in matches}
        out: list[Stored] = []
        # The resources the next round follows references from (and to): pk by (type, id).
        frontier: dict[tuple[str, str], int] = {
            (m.res_type, m.res_id): pk for m, pk in zip(matches, pks, strict=True)
        }
        for round_ in range(MAX_INCLUDE_ROUNDS):
            found: list[tuple[int, Stored]] = []
            for inc in query.includes:
                if inc.iterate or round_ == 0:
                    found += self._forward(inc, frontier, actor, seen)
            for inc in query.revincludes:
                if inc.iterate or round_ == 0:
                    found += self._reverse(inc, frontier, actor, seen, warnings)
            out += [stored for _, stored in found]
            frontier = {(s.res_type, s.res_id): pk for pk, s in found}
            if not frontier or not any(i.iterate for i in (*query.includes, *query.revincludes)):
                break
        else:
            if frontier:
                warnings.append(f"_include:iterate and _revinclude:iterate were followed "
                                f"{MAX_INCLUDE_ROUNDS} levels deep; what lies further was not included")
        return out

    def _forward(
        self, inc: Include, frontier: dict[tuple[str, str], int], actor: Actor, seen: set[tuple[str, str]]
    ) -> list[tuple[int, Stored]]:
        """What the frontier's resources of `inc.source` refer to by `inc.param` (`_include`)."""
        pks = [pk for (res_type, _), pk in frontier.items() if res_type == inc.source]
        if not pks:
            return []
        targets = [inc.target] if inc.target is not None else list(RESOURCES)
        refs = self._sql().execute(
            select(ReferenceIndex.target_type, ReferenceIndex.target_id)
            .where(
                ReferenceIndex.resource_pk.in_(pks),
                ReferenceIndex.res_type == inc.source,
                ReferenceIndex.param == inc.param,
                ReferenceIndex.target_type.in_(targets),
            )
            .distinct()
        ).all()
        by_type: dict[str, set[str]] = {}
        for t, i in refs:
            by_type.setdefault(t, set()).add(i)
        out: list[tuple[int, Stored]] = []
        for t, ids in sorted(by_type.items()):
            out += self._fetch(t, ids, actor, seen)
        return out

    def _reverse(
        self,
        inc: Include,
        frontier: dict[tuple[str, str], int],
        actor: Actor,
        seen: set[tuple[str, str]],
        warnings: list[str],
    ) -> list[tuple[int, Stored]]:
        """The resources of `inc.source` whose `inc.param` refers to one of the frontier's
        (`_revinclude`), at most REVINCLUDE_LIMIT."""
        by_type: dict[str, list[str]] = {}
        for res_type, res_id in frontier:
            if inc.target is None or res_type == inc.target:
                by_type.setdefault(res_type, []).append(res_id)
        out: list[tuple[int, Stored]] = []
        for target_type, ids in sorted(by_type.items()):
            stmt = (
                select(StoredResource.pk, *SERVED)
                .join(ReferenceIndex, ReferenceIndex.resource_pk == StoredResource.pk)
                .where(
                    ReferenceIndex.res_type == inc.source,
                    ReferenceIndex.param == inc.param,
                    ReferenceIndex.target_type == target_type,
                    ReferenceIndex.target_id.in_(ids),
                    StoredResource.deleted == false(),
                    visible(actor, RESOURCES[inc.source]),
                )
                .order_by(StoredResource.pk)
                .limit(REVINCLUDE_LIMIT + 1)
            )
            rows = self._sql().execute(stmt).all()
            if len(rows) > REVINCLUDE_LIMIT:
                rows = rows[:REVINCLUDE_LIMIT]
                warnings.append(
                    f"_revinclude={inc.source}:{inc.param} matched more than {REVINCLUDE_LIMIT} "
                    f"resources; the first {REVINCLUDE_LIMIT} are included (ask for fewer matches "
                    f"with _count, or search {inc.source} directly)"
                )
            for row in rows:
                if (row.res_type, row.res_id) not in seen:
                    seen.add((row.res_type, row.res_id))
                    out.append((row.pk, _stored(row)))
        return out

    def _fetch(
        self, res_type: str, ids: set[str], actor: Actor, seen: set[tuple[str, str]]
    ) -> list[tuple[int, Stored]]:
        stmt = select(StoredResource.pk, *SERVED).where(
            StoredResource.res_type == res_type,
            StoredResource.res_id.in_(ids),
            StoredResource.deleted == false(),
            visible(actor, RESOURCES[res_type]),
        )
        out = []
        for row in self._sql().execute(stmt).all():
            if (row.res_type, row.res_id) not in seen:
                seen.add((row.res_type, row.res_id))
                out.append((row.pk, _stored(row)))
        return out

    def find_ids(self, query: SearchQuery, actor: Actor, limit: int = 2) -> list[str]:
        """Ids of matches (for conditional create/update), at most `limit`."""
        stmt, params = _search_statement("ids", query, actor)
        return list(self._sql().scalars(stmt, {**params, "row_limit": limit}))

    def compartment(
        self,
        patient_id: str,
        actor: Actor,
        types: Sequence[str],
        *,
        count: int,
        after: int = 0,
        since: datetime | None = None,
    ) -> tuple[list[tuple[int, Stored]], bool]:
        """The live resources of a patient's record (the Patient included) of `types` that the actor
        may see, in storage order after pk `after`: a page of (pk, resource), and whether more follow.
        One index range (`ix_fhir_resource_patient`) with the access condition of each type."""
        if not types or count <= 0:
            return [], False
        seen_by_type = [and_(StoredResource.res_type == t, visible(actor, RESOURCES[t])) for t in types]
        stmt = select(StoredResource.pk, *SERVED).where(
            StoredResource.patient_id == patient_id,
            StoredResource.deleted == false(),
            StoredResource.pk > after,
            or_(*seen_by_type),
        )
        if since is not None:
            stmt = stmt.where(StoredResource.last_updated >= since)
        rows = self._sql().execute(stmt.order_by(StoredResource.pk).limit(count + 1)).all()
        return [(row.pk, _stored(row)) for row in rows[:count]], len(rows) > count

    def directory_of(self, pks: Sequence[int], actor: Actor, seen: set[tuple[str, str]]) -> list[Stored]:
        """The live directory resources (organisations, practitioners, their roles: visible to all)
        that the resources `pks` refer to, except those in `seen` (which this adds them to)."""
        directory = sorted(t for t, d in RESOURCES.items() if d.directory)
        if not pks:
            return []
        targets = self._sql().execute(
            select(ReferenceIndex.target_type, ReferenceIndex.target_id)
            .where(ReferenceIndex.resource_pk.in_(pks), ReferenceIndex.target_type.in_(directory))
            .distinct()
        ).all()
        wanted: dict[str, set[str]] = {}
        for target_type, target_id in targets:
            if (target_type, target_id) not in seen:
                wanted.setdefault(target_type, set()).add(target_id)
        out: list[Stored] = []
        for res_type in sorted(wanted):
            out += [row for _, row in self._fetch(res_type, wanted[res_type], actor, seen)]
        return out

    def referrers(self, res_type: str, res_id: str, actor: Actor, *, named: int = 3) -> Referrers:
        """The live resources whose indexed references point at `res_type/res_id` (a deleted
        resource's index rows are gone): the first few the actor may see, each with the parameter
        that refers, how many it may see, and whether there are others it may not."""
        ref = ReferenceIndex
        target = (ref.target_type == res_type, ref.target_id == res_id)
        connection = self._sql()
        sources = sorted(connection.scalars(select(ref.res_type).where(*target).distinct()).all())
        if not sources:
            return Referrers((), 0, hidden=False)
        seen = or_(*(and_(StoredResource.res_type == s, visible(actor, RESOURCES[s])) for s in sources))
        on = StoredResource.pk == ref.resource_pk
        total = connection.scalar(select(func.count(distinct(ref.resource_pk))).where(*target)) or 0
        in_sight = connection.scalar(
            select(func.count(distinct(ref.resource_pk))).select_from(ref).join(StoredResource, on)
            .where(*target, seen)
        ) or 0
        first = connection.execute(
            select(StoredResource.pk, StoredResource.res_type, StoredResource.res_id, func.min(ref.param))
            .select_from(ref)
            .join(StoredResource, on)
            .where(*target, seen)
            .group_by(StoredResource.pk, StoredResource.res_type, StoredResource.res_id)
            .order_by(StoredResource.pk)
            .limit(named)
        ).all()
        return Referrers(
            tuple(f"{t}/{i} ({param})" for _, t, i, param in first), in_sight, hidden=total > in_sight
        )

    def lock_key(self, key: str) -> None:
        """Serialise writers on a key until the transaction ends (PostgreSQL advisory lock).

        SQLite already serialises every write transaction (BEGIN IMMEDIATE).
        """
        if self.session.get_bind().dialect.name == "postgresql":
            driver_rows(self._sql(), "SELECT pg_advisory_xact_lock(%(k)s)", {"k": lock_digest(key)})


@dataclass(frozen=True)
class Referrers:
    """`ResourceStore.referrers`: a few of the live resources that refer to one and that the actor may
    see (`Type/id (param)`), how many it may see, and whether others it may not see refer to it too
    (not how many: that would say more about records out of sight than the refusal must)."""

    named: tuple[str, ...]
    visible: int
    hidden: bool

    @property
    def any(self) -> bool:
        """Whether anything refers to the resource at all."""
        return bool(self.visible or self.hidden)


def version_window(since: datetime | None, at: tuple[datetime, datetime] | None) -> list[ColumnElement[bool]]:
    """The conditions on `ResourceVersion` of a history's `_since` (versions written at or after it)
    and `_at` (versions that were current at some point of the period, FHIR http.html#history: the
    version began before the period ended, and the next one, if any, began after it started)."""
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(ResourceVersion.last_updated >= since)
    if at is not None:
        low, high = at
        following = aliased(ResourceVersion)
        replaced_before = (
            select(following.version_id)
            .where(
                following.resource_pk == ResourceVersion.resource_pk,
                following.version_id == ResourceVersion.version_id + 1,
                following.last_updated <= low,
            )
            .exists()
        )
        where += [ResourceVersion.last_updated <= high, not_(replaced_before)]
    return where


def missing_references(resource_type: str, missing: Sequence[Sequence[str]]) -> Unprocessable:
    """422 naming each reference (type, id) that points at no live resource."""
    problems = [
        Problem(
            f"{resource_type} references {t}/{i}, which does not exist",
            expression=resource_type,
            code="not-found",
        )
        for t, i in missing
    ]
    return Unprocessable(problems[0].message, problems)


def lock_digest(key: str) -> int:
    """The signed 64-bit advisory lock number of a key (`ResourceStore.lock_key`)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


def _ordered(resource: dict[str, Any]) -> dict[str, Any]:
    """resourceType, id and meta first: the order people expect to read."""
    head: dict[str, Any] = {k: resource[k] for k in ("resourceType", "id", "meta") if k in resource}
    head.update((k, v) for k, v in resource.items() if k not in head)
    return head


_INSERTION_ORDER = (("_pk", False),)


def _cursor_value(value: Any) -> str:
    """A sort value as a paging cursor holds it (an instant in ISO 8601, a text as it is)."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _after_cursor(sorts: Sequence[tuple[Any, bool]], pk_desc: bool) -> ColumnElement[bool]:
    """Rows after the cursor's position in the sort order: the sort values compared in order, ties
    broken by pk (values as parameters `cursor_v{i}` and `cursor_pk`)."""
    pk: Any = bindparam("cursor_pk")
    options: list[ColumnElement[bool]] = []
    equal: list[ColumnElement[bool]] = []
    for i, (column, desc) in enumerate(sorts):
        value: Any = bindparam(f"cursor_v{i}")
        options.append(and_(*equal, column < value if desc else column > value))
        equal.append(column == value)
    options.append(and_(*equal, StoredResource.pk < pk if pk_desc else StoredResource.pk > pk))
    return or_(*options)


class binary_text(FunctionElement[str]):
    """A text compared by its code points, on every database (PostgreSQL: `COLLATE "C"`; SQLite's
    own comparison already is), so sort order and paging do not depend on the database's locale."""

    type = String()
    inherit_cache = True


@compiles(binary_text)
def _binary_text(element: binary_text, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(binary_text, "postgresql")
def _binary_text_pg(element: binary_text, compiler: Any, **kw: Any) -> str:
    return f'({compiler.process(element.clauses, **kw)}) COLLATE "C"'


# Search statements by shape: built once, then run with new values (building SQLAlchemy statements
# costs more than running them). Bounded: a client sending ever-new shapes only refills it.
_SEARCH_STATEMENTS: dict[tuple[Any, ...], Any] = {}
_SEARCH_STATEMENTS_MAX = 512
_SORT_COLUMNS: dict[str, Any] = {
    "_pk": StoredResource.pk,
    "_id": StoredResource.res_id,
    "_lastUpdated": StoredResource.last_updated,
}


# Where a resource without a value of the parameter sorted by goes: last, either way.
_NO_DATE_ASCENDING = datetime(9999, 12, 31, tzinfo=UTC)  # after MAX_INSTANT (an open end)
_NO_DATE_DESCENDING = datetime(1, 1, 1, tzinfo=UTC)  # before MIN_INSTANT (an open start)
_NO_TEXT_ASCENDING = "\U0010ffff"  # after every text (by code point)
_NO_TEXT_DESCENDING = ""  # before every text
# The index column a parameter type sorts by: ascending by its least value, descending by its
# greatest (FHIR search.html#_sort: for a resource with several values, the one that comes first).
_SORT_INDEX: dict[str, tuple[Any, Any]] = {
    "string": (StringIndex, StringIndex.value),  # normalised: case and accents ignored
    "token": (TokenIndex, TokenIndex.code),
    "reference": (ReferenceIndex, ReferenceIndex.target_id),
}


def _param_sort(res_type: str, param: str, kind: str, desc: bool, missing: str) -> Any:
    """The sort key of a search parameter: ascending, the least of a resource's values (a date: the
    earliest instant its values cover); descending, the greatest; a resource without one last (the
    value of the parameter `missing`)."""
    if kind == "date":
        table: Any = DateIndex
        bound = func.max(DateIndex.high) if desc else func.min(DateIndex.low)
        missing_value: Any = bindparam(missing, type_=UTCDateTime())
    else:
        table, column = _SORT_INDEX[kind]
        bound = func.max(binary_text(column)) if desc else func.min(binary_text(column))
        missing_value = bindparam(missing, type_=String())
    found = (
        select(bound)
        .where(table.resource_pk == StoredResource.pk, table.res_type == res_type, table.param == param)
        .scalar_subquery()
    )
    key = func.coalesce(found, missing_value)
    return key if kind == "date" else binary_text(key)


def _search_statement(
    kind: str, query: SearchQuery, actor: Actor, *, audited: bool = False
) -> tuple[Any, dict[str, Any]]:
    """The statement (`page`, `count` or `ids`) for the query's shape, and this query's values.

    `audited`: the statement also writes an audit row (PostgreSQL; values from `audit_params`).
    """
    rdef = query.rdef
    shape = policy_shape(actor, rdef)
    paged = kind == "page" and query.cursor is not None
    looked_through = tuple(  # the access policy of every type a chain or `_has` looks through
        policy_shape(actor, RESOURCES[t]) for c in query.clauses for t in _looked_through(c)
    )
    cache_key = (
        kind, rdef.type, shape, tuple(_clause_shape(c) for c in query.clauses), query.sort, paged, audited,
        looked_through,
    )
    values = [v for c in query.clauses for v in _clause_values(c)]
    params: dict[str, Any] = {f"v{i}": v for i, v in enumerate(values)}
    params.update(policy_params(actor), page_limit=query.count + 1)
    if paged:
        assert query.cursor is not None
        params["cursor_pk"] = query.cursor["pk"]
        params.update((f"cursor_v{i}", v) for i, v in enumerate(query.cursor["v"]))
    if kind == "page":
        for i, (key, desc) in enumerate(query.sort):
            sort = sort_kind(rdef, key)
            if sort == "date":
                params[f"sort_missing_{i}"] = _NO_DATE_DESCENDING if desc else _NO_DATE_ASCENDING
            elif sort in _SORT_INDEX:
                params[f"sort_missing_{i}"] = _NO_TEXT_DESCENDING if desc else _NO_TEXT_ASCENDING
    stmt = _SEARCH_STATEMENTS.get(cache_key)
    if stmt is not None:
        return stmt, params
    bind = _Binder(actor)
    where = [
        StoredResource.res_type == rdef.type,
        StoredResource.deleted == false(),
        _policy(shape, bindparam(_ORG), bindparam(_DISTRICT)),
        *[_clause_sql(rdef.type, c, bind) for c in query.clauses],
    ]
    assert bind.values == values, "_clause_values and _clause_sql disagree"
    if kind == "count":
        stmt = select(func.count()).select_from(StoredResource).where(*where)
    elif kind == "ids":
        stmt = select(StoredResource.res_id).where(*where).limit(bindparam("row_limit", type_=Integer))
    elif query.sort == _INSERTION_ORDER:
        if paged:
            where.append(StoredResource.pk > bindparam("cursor_pk"))
        stmt = (
            select(StoredResource.pk, *SERVED)
            .where(*where)
            .order_by(StoredResource.pk)
            .limit(bindparam("page_limit", type_=Integer))
        )
    else:
        sorts: list[tuple[Any, bool]] = [
            (_SORT_COLUMNS[key] if key in _SORT_COLUMNS
             else _param_sort(rdef.type, key, str(sort_kind(rdef, key)), desc, f"sort_missing_{i}"), desc)
            for i, (key, desc) in enumerate(query.sort)
        ]
        pk_desc = query.sort[0][1]  # ties: in the first key's direction
        if paged:
            where.append(_after_cursor(sorts, pk_desc))
        order = [column.desc() if desc else column.asc() for column, desc in sorts]
        order.append(StoredResource.pk.desc() if pk_desc else StoredResource.pk.asc())
        stmt = (
            select(StoredResource.pk, *SERVED, *[c.label(f"sort_{i}") for i, (c, _) in enumerate(sorts)])
            .where(*where)
            .order_by(*order)
            .limit(bindparam("page_limit", type_=Integer))
        )
    if audited:
        stmt = stmt.add_cte(insert(AuditRecord).values(_AUDIT_VALUES).cte("recorded"))
    if len(_SEARCH_STATEMENTS) >= _SEARCH_STATEMENTS_MAX:
        _SEARCH_STATEMENTS.clear()
    _SEARCH_STATEMENTS[cache_key] = stmt
    return stmt, params


def _in_index(table: Any, res_type: str, param: str, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    sub = select(table.resource_pk).where(table.res_type == res_type, table.param == param, condition)
    return StoredResource.pk.in_(sub)


class _Binder:
    """Names a statement's search values v0, v1, ... in the order `_clause_values` lists them."""

    def __init__(self, actor: Actor | None = None) -> None:
        self.values: list[Any] = []
        self.actor = actor  # whose search (the access policy of `_has` sources)

    def __call__(self, value: Any, *, expanding: bool = False) -> Any:
        self.values.append(value)
        # No type of its own: the bound value takes the type of the column it is compared with.
        return bindparam(f"v{len(self.values) - 1}", value, expanding=expanding, type_=NullType())


def _like(value: str, *, anywhere: bool) -> str:
    """A LIKE pattern (escape character '/') matching the value as a prefix, or anywhere."""
    escaped = value.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return ("%" if anywhere else "") + escaped + "%"


def _clause_shape(clause: Clause) -> tuple[Any, ...]:
    """What decides the SQL of a clause (its values aside): clauses of one shape share a statement."""
    p, modifier, values = clause.param, clause.modifier, clause.values
    if modifier == "chain":
        return (p.name, modifier, tuple((t, _clause_shape(inner)) for t, inner in values))
    if modifier == "has":
        return (p.name, modifier, tuple((t, ref, _clause_shape(inner)) for t, ref, inner in values))
    if p.name == "_id":
        return (p.name,)
    if modifier == "missing":
        return (p.name, modifier, bool(values[0]))
    if p.name == "_lastUpdated" or p.type == "date":
        return (p.name, modifier, tuple(prefix for prefix, _, _ in values))
    if modifier == "text":
        return (p.name, modifier, len(values))
    if p.type == "token":
        return (p.name, modifier, tuple((s is None, s == "", c is None) for s, c in values))
    if p.type == "string":
        return (p.name, modifier, len(values))
    if p.type == "quantity":
        return (p.name, modifier, tuple((prefix, s is None, c is None) for prefix, _, s, c in values))
    return (p.name, modifier, tuple(bool(t) for t, _ in values))


def _clause_values(clause: Clause) -> list[Any]:
    """The values `_clause_sql` binds, in its order."""
    p, modifier, values = clause.param, clause.modifier, clause.values
    if modifier == "chain":
        return [v for _, inner in values for v in _clause_values(inner)]
    if modifier == "has":
        return [v for _, _, inner in values for v in _clause_values(inner)]
    if p.name == "_id":
        return [list(values)]
    if modifier == "missing":
        return []
    if p.name == "_lastUpdated" or p.type == "date":
        return [v for _, lo, hi in values for v in (lo, hi)]
    if modifier == "text":
        return [_like(normalise(v), anywhere=False) for v in values]
    if p.type == "token":
        out: list[Any] = []
        for system, code in values:
            if code is not None:
                out.append(code)
            if system:
                out.append(system)
        return out
    if p.type == "string":
        if modifier == "exact":
            return list(values)
        return [_like(normalise(v), anywhere=modifier == "contains") for v in values]
    if p.type == "quantity":
        out = []
        for _, bounds, system, code in values:
            out.extend(bounds)
            out.extend(v for v in (system, code) if v is not None)
        return out
    out = []
    for target_type, target_id in values:
        out.append(target_id)
        if target_type:
            out.append(target_type)
    return out


def _clause_sql(res_type: str, clause: Clause, bind: _Binder) -> ColumnElement[bool]:
    """The clause as SQL, its values bound through `bind` (in the order of `_clause_values`)."""
    p = clause.param
    if clause.modifier == "chain":
        return _chain_sql(res_type, clause, bind)
    if clause.modifier == "has":
        return _has_sql(res_type, clause, bind)
    if p.name == "_id":
        return StoredResource.res_id.in_(bind(list(clause.values), expanding=True))
    if p.name == "_lastUpdated":
        col = StoredResource.last_updated
        return or_(
            *[_date_compare(prefix, bind(lo), bind(hi), col, col) for prefix, lo, hi in clause.values]
        )
    table: Any = {"token": TokenIndex, "string": StringIndex, "date": DateIndex, "reference": ReferenceIndex,
                  "quantity": QuantityIndex}[p.type]
    if clause.modifier == "missing":
        present = StoredResource.pk.in_(
            select(table.resource_pk).where(table.res_type == res_type, table.param == p.name)
        )
        return not_(present) if clause.values[0] else present
    if clause.modifier == "text":
        texts = [StringIndex.value.like(bind(_like(normalise(v), anywhere=False)), escape="/")
                 for v in clause.values]
        return _in_index(StringIndex, res_type, p.name + TEXT_SUFFIX, or_(*texts))
    if p.type == "token":
        options = []
        for system, code in clause.values:
            cond = []
            if code is not None:
                cond.append(TokenIndex.code == bind(code))
            if system == "":
                cond.append(TokenIndex.system.is_(None))
            elif system is not None:
                cond.append(TokenIndex.system == bind(system))
            options.append(and_(*cond) if cond else true())
        match = _in_index(TokenIndex, res_type, p.name, or_(*options))
        return not_(match) if clause.modifier == "not" else match
    if p.type == "string":
        options = []
        for value in clause.values:
            if clause.modifier == "exact":
                options.append(StringIndex.exact == bind(value))
            else:
                pattern = _like(normalise(value), anywhere=clause.modifier == "contains")
                options.append(StringIndex.value.like(bind(pattern), escape="/"))
        return _in_index(StringIndex, res_type, p.name, or_(*options))
    if p.type == "date":
        return _in_index(
            DateIndex,
            res_type,
            p.name,
            or_(
                *[
                    _date_compare(prefix, bind(lo), bind(hi), DateIndex.low, DateIndex.high)
                    for prefix, lo, hi in clause.values
                ]
            ),
        )
    if p.type == "quantity":
        matches = [_quantity_match(prefix, bounds, system, code, bind)
                   for prefix, bounds, system, code in clause.values]
        return _in_index(QuantityIndex, res_type, p.name, or_(*matches))
    options = []
    for target_type, target_id in clause.values:
        cond = [ReferenceIndex.target_id == bind(target_id)]
        if target_type:
            cond.append(ReferenceIndex.target_type == bind(target_type))
        options.append(and_(*cond))
    return _in_index(ReferenceIndex, res_type, p.name, or_(*options))


def _looked_through(clause: Clause) -> list[str]:
    """The types whose resources a clause's chains and `_has` look through, in the order
    `_clause_sql` builds their access conditions (each is part of the statement's cache key)."""
    if clause.modifier == "chain":
        return [t for target_type, inner in clause.values for t in (target_type, *_looked_through(inner))]
    if clause.modifier == "has":
        return [t for source_type, _, inner in clause.values for t in (source_type, *_looked_through(inner))]
    return []


def _looked_at(res_type: str, bind: _Binder) -> ColumnElement[bool]:
    """The caller's access condition on a resource of the type that a chain or `_has` looks
    through: what a read would answer as unknown matches nothing, so no search tells of it."""
    assert bind.actor is not None
    return _policy(policy_shape(bind.actor, RESOURCES[res_type]), bindparam(_ORG), bindparam(_DISTRICT))


# `_flat`: the resources a chain link or a `_has` level looks through are a common table expression
# each, named in the statement's WITH, instead of a subquery nested in the previous one: a chain of 3
# links under 2 levels of `_has`, with the access policy at each, nested deeper than SQLite's parser
# stack holds (its "parser stack overflow" was a 500). Each is used once and uncorrelated, so
# PostgreSQL (12 and later) and SQLite fold it into the query as they would the subquery.


def _chain_sql(res_type: str, clause: Clause, bind: _Binder) -> ColumnElement[bool]:
    """A chained clause: the resource's reference parameter points at a live resource of one of the
    target types, that the caller may see, that matches the chained clause (each target type's
    clause run as a search of it; a further link is a chained clause of that type)."""
    options = []
    for target_type, inner in clause.values:
        targets = (
            select(StoredResource.res_id)
            .where(StoredResource.res_type == target_type, StoredResource.deleted == false(),
                   _looked_at(target_type, bind), _clause_sql(target_type, inner, bind))
            .correlate(None)  # the target's own row, not the row of the resource searched
            .cte()  # (`_flat`)
        )
        options.append(and_(ReferenceIndex.target_type == target_type,
                            ReferenceIndex.target_id.in_(select(targets.c.res_id))))
    return _in_index(ReferenceIndex, res_type, clause.param.name, or_(*options))


def _has_sql(res_type: str, clause: Clause, bind: _Binder) -> ColumnElement[bool]:
    """A `_has` clause: a live resource of the source type that the caller may see, matching the
    inner clause (itself a `_has` clause when nested), refers to this resource by the reference
    parameter."""
    ((source_type, ref_name, inner),) = clause.values
    sources = (
        select(StoredResource.pk)
        .where(StoredResource.res_type == source_type, StoredResource.deleted == false(),
               _looked_at(source_type, bind), _clause_sql(source_type, inner, bind))
        .correlate(None)  # the source's own row, not the row of the resource searched
        .cte()  # (`_flat`)
    )
    referred = select(ReferenceIndex.target_id).where(
        ReferenceIndex.res_type == source_type,
        ReferenceIndex.param == ref_name,
        ReferenceIndex.target_type == res_type,
        ReferenceIndex.resource_pk.in_(select(sources.c.pk)),
    )
    return StoredResource.res_id.in_(referred)


def _quantity_match(
    prefix: str, bounds: tuple[Any, ...], system: str | None, code: str | None, bind: _Binder
) -> ColumnElement[bool]:
    """One quantity value (`search_params.quantity_bounds`) over an index row: the number compared
    exactly; `system|code` names the unit's system and code, `||code` (no system) its code or its
    human-readable unit."""
    value = QuantityIndex.value
    given = [bind(b) for b in bounds]
    if prefix in ("eq", "ap"):
        low, high = given
        cond = [value >= low, value < high if prefix == "eq" else value <= high]
    elif prefix == "ne":
        low, high = given
        cond = [or_(value < low, value >= high)]
    else:
        (bound,) = given
        compare = {"gt": value > bound, "ge": value >= bound, "lt": value < bound, "le": value <= bound,
                   "sa": value >= bound, "eb": value < bound}
        cond = [compare[prefix]]
    if system is not None:
        cond.append(QuantityIndex.system == bind(system))
    if code is not None:
        named = bind(code)
        cond.append(QuantityIndex.code == named if system is not None
                    else or_(QuantityIndex.code == named, QuantityIndex.unit == named))
    return and_(*cond)


def _date_compare(prefix: str, lo: datetime, hi: datetime, low: Any, high: Any) -> ColumnElement[bool]:
    """FHIR date prefix semantics over a stored range [low, high] and a parameter range [lo, hi]."""
    if prefix == "eq":
        return and_(low >= lo, high <= hi)
    if prefix == "ne":
        return or_(low < lo, high > hi)
    if prefix == "gt" or prefix == "sa":
        return high > hi if prefix == "gt" else low > hi
    if prefix == "lt" or prefix == "eb":
        return low < lo if prefix == "lt" else high < lo
    if prefix == "ge":
        return or_(high >= lo, and_(low >= lo, high <= hi))
    if prefix == "le":
        return or_(low <= hi, and_(low >= lo, high <= hi))
    return and_(low <= hi, high >= lo)  # ap: overlaps


# The access policy is built from named parameters, so one statement shape serves every organisation
# of the same kind: the read statement is built once per shape (`_read_statement`).
_ORG = "policy_org"
_DISTRICT = "policy_district"


def policy_params(actor: Actor) -> dict[str, Any]:
    """Values of the policy's named parameters for the actor."""
    return {_ORG: actor.organization_id, _DISTRICT: actor.district}


def _by_district(actor: Actor) -> bool:
    return bool((actor.leads_district or actor.is_insurer) and actor.district)


@dataclass(frozen=True)
class PolicyShape:
    """The form of the access condition for an actor and a type, its values aside (a cache key).

    `scope`: everything visible ("all"), nothing ("none"), only the organisation's own records ("own"),
    or its own plus its patients' ("patient", "group" for households via their members); `parties`:
    reference parameters that make a named organisation a party; `by_district`: the catchment
    includes the district's residents.
    """

    scope: str
    parties: tuple[str, ...] = ()
    by_district: bool = False


def policy_shape(actor: Actor, rdef: ResourceDef) -> PolicyShape:
    """Which form the access condition takes for this actor and type."""
    if actor.sees_everything or rdef.directory:
        return PolicyShape("all")
    if rdef.type == "AuditEvent":
        return PolicyShape("none")
    if rdef.type == "Flag" and actor.monitors:  # every alert, as the monitoring API shows them
        return PolicyShape("all")
    if actor.is_insurer and not rdef.financial:
        return PolicyShape("own")
    scope = "group" if rdef.type == "Group" else "patient"
    return PolicyShape(scope, rdef.party_params, _by_district(actor))


def _catchment(org: Any, district: Any | None, patient: Any = Patient) -> list[ColumnElement[bool]]:
    """Registry conditions on Patient (or on the columns of a joined patient row) that put a patient in
    an organisation's catchment."""
    catchment = [patient.general_practitioner_id == org, patient.created_by_org_id == org]
    if district is not None:
        catchment.append(patient.district == district)
    return catchment


def visible_patients(actor: Actor) -> Select[tuple[str]]:
    """Ids of the patients the actor's organisation may see (DESIGN section 8)."""
    district = actor.district if _by_district(actor) else None
    direct = select(Patient.id).where(or_(*_catchment(actor.organization_id, district)))
    linked = select(PatientAccess.patient_id).where(PatientAccess.org_id == actor.organization_id)
    return direct.union(linked)  # type: ignore[return-value]


def _patient_visible(patient_id: Any, org: Any, district: Any | None) -> ColumnElement[bool]:
    """Correlated test for one patient id: index look-ups per candidate row, never the whole set.

    (An `IN (SELECT ... UNION ...)` makes the planner build every patient of a catchment — tens of
    thousands in a county — for each query.)
    """
    in_catchment = (
        select(Patient.id).where(Patient.id == patient_id, or_(*_catchment(org, district))).exists()
    )
    return or_(in_catchment, _linked(patient_id, org))


def _linked(patient_id: Any, org: Any) -> ColumnElement[bool]:
    """The organisation has a standing link to the patient (treated, referred, received, registered)."""
    return (
        select(PatientAccess.patient_id)
        .where(PatientAccess.patient_id == patient_id, PatientAccess.org_id == org)
        .exists()
    )


def _patient_seen_values(actor: Actor, patient_id: str) -> dict[str, Any]:
    return {"seen_patient": patient_id, "seen_org": actor.organization_id,
            "seen_district": actor.district if _by_district(actor) else None}


def _patient_seen_condition() -> ColumnElement[bool]:
    """The access policy on one patient (`seen_*` parameters): its catchment, or an access link."""
    return _patient_visible(bindparam("seen_patient"), bindparam("seen_org"), bindparam("seen_district"))


@lru_cache(maxsize=1)
def _patient_seen_sql() -> str:
    """`_patient_seen_condition` as PostgreSQL text, for a write statement to test (`store_pg`)."""
    from sqlalchemy.dialects import postgresql

    return str(_patient_seen_condition().compile(dialect=postgresql.psycopg.dialect()))


@lru_cache(maxsize=1)
def _patient_seen_statement() -> Select[tuple[bool]]:
    return select(_patient_seen_condition().label("seen"))


def patient_seen(connection: Connection, actor: Actor, patient_id: str) -> bool:
    """Whether the actor may see the patient (its catchment, or a patient it treated or received)."""
    if actor.sees_everything:
        return True
    ((seen,),) = kept_rows(connection, _patient_seen_statement(), _patient_seen_values(actor, patient_id))
    return bool(seen)


def _policy(shape: PolicyShape, org: Any, district: Any) -> ColumnElement[bool]:
    """The access condition of a shape over the organisation and district parameters."""
    if shape.scope == "all":
        return true()
    if shape.scope == "none":
        return false()
    own: ColumnElement[bool] = StoredResource.owner_org_id == org
    if shape.scope == "own":
        return own
    area = district if shape.by_district else None
    if shape.parties:
        named = aliased(ReferenceIndex)
        own = or_(
            own,
            select(named.resource_pk)
            .where(
                named.resource_pk == StoredResource.pk,
                named.param.in_(shape.parties),
                named.target_type == "Organization",
                named.target_id == org,
            )
            .exists(),
        )
    if shape.scope == "group":
        member = aliased(ReferenceIndex)
        members = (
            select(member.resource_pk)
            .where(
                member.resource_pk == StoredResource.pk,
                member.param == "member",
                member.target_type == "Patient",
                _patient_visible(member.target_id, org, area),
            )
            .exists()
        )
        return or_(own, members)
    return or_(own, _patient_visible(StoredResource.patient_id, org, area))


def visible(actor: Actor, rdef: ResourceDef) -> ColumnElement[bool]:
    """SQL condition: the actor may see the row (what it may not see is answered as unknown)."""
    return _policy(
        policy_shape(actor, rdef),
        bindparam(_ORG, actor.organization_id),
        bindparam(_DISTRICT, actor.district),
    )


def visible_ids(session: Session | Connection, actor: Actor, res_type: str, ids: Sequence[str]) -> set[str]:
    """Which of `ids` (live resources of `res_type`) the actor may see: the condition every read and
    search of the API applies (`visible`), for pages that show records found some other way (a
    household's members from the registry) and must leave out what a read by id would answer 404."""
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    stmt = select(StoredResource.res_id).where(
        StoredResource.res_type == res_type,
        StoredResource.res_id.in_(wanted),
        StoredResource.deleted == false(),
        visible(actor, RESOURCES[res_type]),
    )
    return set(session.scalars(stmt))


def patient_records_visible(actor: Actor, patient_id: Any, *, joined: Any = None) -> ColumnElement[bool]:
    """SQL condition on a financial record kept outside the resource store by its patient id (the
    settlement ledger): the actor may see it. The same condition `visible` puts on a financial
    resource (Claim, ClaimResponse, ExplanationOfBenefit) through its patient, of the same shape:
    true for the platform and system jobs; else the patient is in the organisation's catchment (an
    insurer's or a county hospital's district included, `_by_district`) or linked to it
    (`patient_access`). Index look-ups per row (`_patient_visible`), never a Python filter.

    `joined`: the columns of the patient's registry row when the query joins it already (a streamed
    export); the catchment is then tested on that row instead of looking the patient up again.
    """
    shape = policy_shape(actor, RESOURCES["ExplanationOfBenefit"])
    if shape.scope == "all":
        return true()
    if shape.scope != "patient" or actor.organization_id is None:
        return false()
    org = bindparam("seen_org", actor.organization_id, type_=String, unique=True)
    district = bindparam("seen_district", actor.district, type_=String, unique=True)
    area = district if shape.by_district else None
    if joined is not None:
        return or_(*_catchment(org, area, joined), _linked(patient_id, org))
    return _patient_visible(patient_id, org, area)


@lru_cache(maxsize=32)
def _read_statement(shape: PolicyShape) -> Select[str, str, int, datetime, bytes, bool, str | None]:
    """Read by id under one policy shape, built once; type, id and the policy's values are parameters."""
    return select(*SERVED, StoredResource.patient_id).where(
        StoredResource.res_type == bindparam("res_type"),
        StoredResource.res_id == bindparam("res_id"),
        _policy(shape, bindparam(_ORG), bindparam(_DISTRICT)),
    )


# The audit row's values in a statement that writes it (typed, so PostgreSQL need not guess).
_AUDIT_VALUES = {name: cast(bind, bind.type) for name, bind in AUDIT_BINDS.items()}


@lru_cache(maxsize=32)
def _audited_read_statement(
    shape: PolicyShape, with_patient: bool
) -> Select[str, str, int, datetime, bytes, bool, str | None]:
    """Read by id that also records the access (PostgreSQL: a data-modifying CTE, one statement).

    The audit row is written only when a live row is found, with that row's patient when the type
    belongs to a patient's compartment.
    """
    found = _read_statement(shape).cte("found")
    values = [
        found.c.patient_id if name == "patient_id" and with_patient else _AUDIT_VALUES[name]
        for name in AUDIT_COLUMNS
    ]
    recorded = (
        insert(AuditRecord)
        .from_select(list(AUDIT_COLUMNS), select(*values).where(found.c.deleted.is_(False)))
        .cte("recorded")
    )
    return select(found).add_cte(recorded)


def stored_ids(rows: Sequence[Stored]) -> list[str]:
    """`Type/id` of each row (for tests and logs)."""
    return [f"{r.res_type}/{r.res_id}" for r in rows]


__all__ = ["MAX_INSTANT", "MIN_INSTANT", "Include", "ResourceStore", "SearchPage", "Stored", "visible"]
