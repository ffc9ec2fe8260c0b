"""The monthly export's bureau subfolders stay inside the month's folder whatever the bureau's id."""

from __future__ import annotations

from pathlib import Path

import pytest

from referral_service.exports.jobs import bureau_folder


@pytest.mark.parametrize("org_id", ["qs-insurance", "..", ".", "a/b", "a\\b", "..%2F.."])
def test_a_bureau_folder_is_a_child_of_the_month(tmp_path: Path, org_id: str) -> None:
    month = tmp_path / "monthly" / "2026-03"
    folder = bureau_folder(month, org_id)
    assert folder.parent == month
    assert folder.resolve().parent == month.resolve()  # ".." may not climb out
    assert folder.name.startswith("bureau-")


def test_distinct_valid_ids_get_distinct_folders(tmp_path: Path) -> None:
    ids = ["qs-insurance", "qs.insurance", "QS-insurance", ".", ".."]  # FHIR ids: A-Z a-z 0-9 - .
    assert len({bureau_folder(tmp_path, i) for i in ids}) == len(ids)
