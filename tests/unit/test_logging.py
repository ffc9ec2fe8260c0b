"""JSON log lines: one object per line, identity numbers and secrets masked, request fields kept."""

from __future__ import annotations

import json
import logging
import os

from flask import Flask, g

from referral_service.logging_setup import JsonFormatter, configure_logging


def _line(message: str, *args: object, **extra: object) -> str:
    record = logging.LogRecord("referral_service.access", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return JsonFormatter().format(record)


def test_a_line_is_one_json_object_with_the_request_fields() -> None:
    line = _line("%s %s %s", "GET", "/fhir/Patient/p1", 200, method="GET", path="/fhir/Patient/p1",
                 status=200, duration_ms=1.25, client="township-his", request_id="r-1")
    assert "\n" not in line
    payload = json.loads(line)
    assert payload["message"] == "GET /fhir/Patient/p1 200"
    assert {k: payload[k] for k in ("method", "path", "status", "duration_ms", "client", "request_id")} == {
        "method": "GET", "path": "/fhir/Patient/p1", "status": 200, "duration_ms": 1.25,
        "client": "township-his", "request_id": "r-1"}
    assert payload["level"] == "INFO" and payload["time"].endswith("+00:00")


def test_identity_numbers_and_secrets_are_masked_and_chinese_stays_readable() -> None:
    payload = json.loads(_line("患者 620421199003070021 client_secret=abc&x=1"))
    assert payload["message"] == "患者 620421********0021 client_secret=***&x=1"
    assert "患者" in _line("患者")  # UTF-8, not \\u escapes


def test_the_request_id_comes_from_the_request_when_the_record_has_none() -> None:
    app = Flask(__name__)
    with app.test_request_context("/"):
        g.request_id = "from-g"
        assert json.loads(_line("x"))["request_id"] == "from-g"


def test_values_json_cannot_encode_are_written_as_text() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd value"

    assert json.loads(_line("x", client=Odd()))["client"] == "odd value"


def test_json_logging_keeps_the_process_id_for_gunicorns_own_lines() -> None:
    """gunicorn formats its lines with [%(process)d]: a missing pid was a logging error on SIGTERM."""
    configure_logging("INFO", as_json=True)
    record = logging.getLogger("gunicorn.error").makeRecord("gunicorn.error", logging.INFO, __file__, 1,
                                                            "Handling signal: %s", ("term",), None)
    line = logging.Formatter("[%(process)d] %(message)s").format(record)
    assert line == f"[{os.getpid()}] Handling signal: term"
