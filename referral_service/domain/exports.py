"""Export records: the export log, FHIR bulk export jobs, and who may receive which export."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, Text, case, func
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from .base import Base, IdColumn, UTCDateTime, new_id, utcnow

# Roles that may download settlement exports (web users); API clients qualify through their
# organisation: the medical insurance bureau (organization kind `insurer`) acts as role `insurer`.
EXPORT_ROLES = frozenset({"insurer"})
# Roles that may ask for full resident identity numbers; everyone else gets them masked.
FULL_IDENTITY_ROLES = frozenset({"insurer"})
MASK_KEEP_HEAD = 6
MASK_KEEP_TAIL = 4


def may_download_exports(role: str | None) -> bool:
    """Whether a web user of the role (or a client acting as it) may create and download exports."""
    return role in EXPORT_ROLES


def may_receive_full_identity(role: str | None) -> bool:
    """Whether a recipient of the role may receive unmasked resident identity numbers."""
    return role in FULL_IDENTITY_ROLES


def mask_identity(value: str | None) -> str:
    """An identity number with only its first 6 and last 4 characters shown (6204**********002X)."""
    if not value:
        return ""
    shown = MASK_KEEP_HEAD + MASK_KEEP_TAIL
    if len(value) <= shown:
        return "*" * len(value)
    return value[:MASK_KEEP_HEAD] + "*" * (len(value) - shown) + value[-MASK_KEEP_TAIL:]


def mask_identity_sql(value: ColumnElement[str]) -> ColumnElement[str]:
    """`mask_identity` as SQL (PostgreSQL and SQLite), so streamed exports mask inside the database."""
    length = func.length(value)
    stars = "*" * 64
    shown = MASK_KEEP_HEAD + MASK_KEEP_TAIL

    def part(text: Any, start: Any, count: Any = None) -> ColumnElement[str]:
        args = (text, start) if count is None else (text, start, count)
        return func.substr(*args, type_=String)

    return case(
        (length > shown, part(value, 1, MASK_KEEP_HEAD) + part(stars, 1, length - shown)
         + part(value, length - (MASK_KEEP_TAIL - 1))),
        else_=part(stars, 1, length),
    )


@dataclass(frozen=True)
class Recipient:
    """Who receives an export: a web user, an API client or a system job, with the role that applies."""

    name: str
    kind: str  # user, client, system
    role: str | None
    organization_id: str | None = None


class ExportLog(Base):
    """One export or download: who, when, with which parameters, and the checksum of every file."""

    __tablename__ = "export_log"

    id: Mapped[str] = mapped_column(IdColumn, primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))  # settlements, download, bulk
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_name: Mapped[str] = mapped_column(String(100), index=True)
    actor_kind: Mapped[str] = mapped_column(String(16))
    role: Mapped[str | None] = mapped_column(String(16))
    organization_id: Mapped[str | None] = mapped_column(String(64))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    identity: Mapped[str] = mapped_column(String(8), default="masked")  # masked, full
    row_count: Mapped[int] = mapped_column(Integer, default=0)
    totals: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)  # fund -> yuan as text
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # name, sha256, bytes, rows
    location: Mapped[str | None] = mapped_column(String(500))  # folder holding the files
    request_id: Mapped[str | None] = mapped_column(String(64))


class BulkExportJob(Base):
    """A FHIR Bulk Data `$export` request; its state lives here so a restarted process can see it."""

    __tablename__ = "bulk_export_job"

    id: Mapped[str] = mapped_column(IdColumn, primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), default="accepted", index=True)
    # accepted -> in-progress -> completed | failed; cancelled; expired (files removed)
    level: Mapped[str] = mapped_column(String(16))  # system, patient
    types: Mapped[list[str]] = mapped_column(JSON, default=list)
    since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    request_url: Mapped[str] = mapped_column(String(2000))
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    organization_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    transaction_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    worker: Mapped[str | None] = mapped_column(String(100))  # who claimed it (host:pid:thread:token)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    output: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # type, file, count, sha256
    directory: Mapped[str | None] = mapped_column(String(500))
