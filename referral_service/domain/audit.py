"""Audit rows ride along with the transaction they describe and are written in one INSERT at commit.

A transaction Bundle writes all its entries' rows at once; they commit (or roll back) with the work
they record. A read or a search on PostgreSQL writes its row inside its own statement instead
(`AUDIT_BINDS`, see fhir/store.py); elsewhere it queues the row like any other work.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BindParameter, bindparam, event, insert
from sqlalchemy.orm import Session, SessionTransaction

from .kept import kept_many
from .registry import AuditRecord

_PENDING = "pending_audit_rows"
_MARKS = "audit_rows_at_savepoint"

# The columns of one row as named parameters (`audit_<column>`), for statements that write their own
# audit row: on PostgreSQL a read or a search carries it as a data-modifying CTE (one round trip).
AUDIT_COLUMNS = tuple(c.name for c in AuditRecord.__table__.columns if c.name != "id")
AUDIT_BINDS: dict[str, BindParameter[Any]] = {
    name: bindparam(f"audit_{name}", type_=AuditRecord.__table__.c[name].type) for name in AUDIT_COLUMNS
}

# The queued rows' INSERT (a kept statement: one executemany at commit), each column by its name.
_INSERT = insert(AuditRecord).values(
    {name: bindparam(name, type_=AuditRecord.__table__.c[name].type) for name in AUDIT_COLUMNS}
)


def audit_params(row: dict[str, Any]) -> dict[str, Any]:
    """The row's values under the names of AUDIT_BINDS."""
    return {f"audit_{name}": row.get(name) for name in AUDIT_COLUMNS}


def queue_audit_row(session: Session, row: dict[str, Any]) -> None:
    """Queue one audit_record row (every column given) for the session's commit."""
    session.info.setdefault(_PENDING, []).append(row)


def pending_audit_rows(session: Session) -> list[dict[str, Any]]:
    """Rows queued and not yet written (tests, diagnostics)."""
    return list(session.info.get(_PENDING, ()))


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    rows = session.info.pop(_PENDING, None)
    if rows:
        kept_many(session.connection(), _INSERT, rows)


@event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        session.info.setdefault(_MARKS, {})[id(transaction)] = len(session.info.get(_PENDING, ()))


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous: SessionTransaction) -> None:
    # What a rolled-back transaction (or savepoint) recorded did not happen.
    if previous.nested:
        mark = session.info.get(_MARKS, {}).pop(id(previous), None)
        if mark is not None and _PENDING in session.info:
            del session.info[_PENDING][mark:]
    elif previous.parent is None:
        session.info.pop(_PENDING, None)
        session.info.pop(_MARKS, None)
