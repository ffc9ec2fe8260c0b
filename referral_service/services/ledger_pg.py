"""PostgreSQL: a settlement's ledger rows as sub-statements of the resources' write statement.

The settlement row, the accumulator (and episode) update and the payables would otherwise go through
an ORM flush of their own: three more round trips, and the flush's bookkeeping. Here each becomes a
data-modifying CTE of the one statement that writes the Claim, ClaimResponse and
ExplanationOfBenefit (`ResourceStore.write(..., also=...)`). The SQL is compiled once per shape from
the tables' own definitions, and each value goes through its column type's bind processor (money
quantised to the fen, times in UTC, the trace as JSON), as the ORM would send it. Foreign keys are
checked when the whole statement ends, when the settlement row it refers to is there.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.schema import Table

from ..domain.kept import Compiled, bound, compiled, kept_rows
from ..domain.ledger import ZERO, EpisodeDeductible, Payable, Settlement, YearAccumulator


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


@cache
def _insert(model: Any, rows: int, dialect: Dialect) -> Compiled:
    table = _table(model)
    columns = [c for c in table.columns if not (c.primary_key and c.autoincrement is True)]
    values = [
        {c.name: bindparam(f"{table.name}{i}_{c.name}", type_=c.type) for c in columns} for i in range(rows)
    ]
    return compiled(insert(table).values(values), dialect)


@cache
def _update(model: Any, changed: tuple[str, ...], dialect: Dialect) -> Compiled:
    table = _table(model)
    keys = [c for c in table.columns if c.primary_key]
    stmt = (
        update(table)
        .where(*(c == bindparam(f"{table.name}_key_{c.name}", type_=c.type) for c in keys))
        .values({name: bindparam(f"{table.name}_{name}", type_=table.c[name].type) for name in changed})
    )
    return compiled(stmt, dialect)


def _inserted(model: Any, objects: Sequence[Any], dialect: Dialect) -> tuple[str, dict[str, Any]]:
    statement = _insert(model, len(objects), dialect)
    table = _table(model)
    values = {
        f"{table.name}{i}_{c.name}": getattr(obj, c.key)
        for i, obj in enumerate(objects)
        for c in table.columns
        if not (c.primary_key and c.autoincrement is True)
    }
    return bound(statement, values)


def _updated(obj: Any, changed: tuple[str, ...], dialect: Dialect) -> tuple[str, dict[str, Any]]:
    model: Any = type(obj)
    table = _table(model)
    values = {f"{table.name}_key_{c.name}": getattr(obj, c.key) for c in table.columns if c.primary_key}
    values.update({f"{table.name}_{name}": getattr(obj, name) for name in changed})
    return bound(_update(model, changed, dialect), values)


_ACCUMULATED = tuple(
    c.name for c in _table(YearAccumulator).columns if not c.primary_key
)


def ledger_rows(
    dialect: Dialect,
    settlement: Settlement,
    accumulator: YearAccumulator,
    episode: EpisodeDeductible | None,
    payables: Sequence[Payable],
) -> list[tuple[str, dict[str, Any]]]:
    """The sub-statements (SQL, values) that insert the settlement and its payables and store the
    new accumulator (and episode) totals. Every column of the new rows must be set on the objects."""
    rows = [_inserted(Settlement, [settlement], dialect), _updated(accumulator, _ACCUMULATED, dialect)]
    if episode is not None:
        rows.append(_updated(episode, ("borne",), dialect))
    if payables:
        rows.append(_inserted(Payable, payables, dialect))
    return rows


def _locking_upsert(model: Any, keep: str) -> Any:
    """An insert of a new row that, on conflict, "updates" the existing row to itself and returns it.

    Like `SELECT ... FOR UPDATE`, that waits for a concurrent settlement of the same row to end, then
    locks the row until commit and answers it as that settlement left it.
    """
    table = _table(model)
    stmt = pg_insert(table).values({c.name: bindparam(c.name, type_=c.type) for c in table.columns})
    return stmt.on_conflict_do_update(
        index_elements=[c.name for c in table.primary_key.columns], set_={keep: table.c[keep]}
    ).returning(*table.columns)


_LOCK_ACCUMULATOR = _locking_upsert(YearAccumulator, "settlements")
_LOCK_EPISODE = _locking_upsert(EpisodeDeductible, "borne")
_NEW_ACCUMULATOR = {name: ZERO for name in _ACCUMULATED} | {"settlements": 0}


def locked_accumulator(connection: Connection, patient_id: str, year: int) -> YearAccumulator:
    """The person's accumulator row for the year, created if needed, locked until commit; a detached
    copy, whose changes `ledger_rows` writes."""
    values = {"patient_id": patient_id, "year": year, **_NEW_ACCUMULATOR}
    row = kept_rows(connection, _LOCK_ACCUMULATOR, values)[0]
    return YearAccumulator(**row._asdict())


def locked_episode(connection: Connection, episode_id: str, year: int) -> EpisodeDeductible:
    """The episode's deductible row for the year, created if needed, locked until commit (detached)."""
    row = kept_rows(connection, _LOCK_EPISODE, {"episode_id": episode_id, "year": year, "borne": ZERO})[0]
    return EpisodeDeductible(**row._asdict())
