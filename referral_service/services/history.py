"""History of one resource: how many versions a history Bundle covers (its `total`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..domain.fhir_store import ResourceVersion, StoredResource
from ..fhir.store import version_window


def instance_total(
    session: Session,
    res_type: str,
    res_id: str,
    *,
    since: datetime | None = None,
    at: tuple[datetime, datetime] | None = None,
) -> int:
    """The number of versions of `res_type/res_id` (deletions included, as the history lists them),
    those in the window of `since` and `at` only when given (`version_window`): what
    `GET /fhir/{type}/{id}/_history` has on all its pages.

    The caller has already checked the caller may see the resource: its versions share that. One
    index range of the version table's primary key, so exact and cheap (HAPI gives it too).
    """
    stmt = (
        select(func.count())
        .select_from(ResourceVersion)
        .join(StoredResource, StoredResource.pk == ResourceVersion.resource_pk)
        .where(StoredResource.res_type == res_type, StoredResource.res_id == res_id)
    )
    stmt = stmt.where(*version_window(since, at))
    return int(session.execute(stmt).scalar_one())
