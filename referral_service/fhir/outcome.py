"""OperationOutcome building: every error under /fhir is answered with one."""

from __future__ import annotations

from typing import Any

from ..domain.errors import Problem


def operation_outcome(problems: list[Problem], request_id: str | None = None) -> dict[str, Any]:
    """An OperationOutcome resource (plain dict) listing the problems."""
    issues = []
    for p in problems:
        issue: dict[str, Any] = {
            "severity": p.severity,
            "code": p.code,
            "diagnostics": p.message,
        }
        if p.expression:
            issue["expression"] = [p.expression]
        issues.append(issue)
    outcome: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": issues}
    if request_id:
        outcome["id"] = request_id
    return outcome


def information(message: str) -> dict[str, Any]:
    """An informational OperationOutcome (e.g. for Prefer: return=OperationOutcome)."""
    return operation_outcome([Problem(message, code="informational", severity="information")])
