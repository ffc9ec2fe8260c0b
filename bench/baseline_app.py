"""The bare baseline for bench_fhir.py: the least a JSON-over-HTTP service on PostgreSQL can do.

    POST /docs       json.loads the body, one INSERT (autocommit, so one commit), 201 {"id": n}
    GET  /docs/<id>  one SELECT by primary key, the stored bytes as the body (404 when absent)

No validation, no auth, no ORM, no access policy, no audit, no logging: the floor our FHIR server
is compared with. It runs under the same gunicorn settings as the app (bench_fhir.py starts it):

    BASELINE_DSN="host=127.0.0.1 user=postgres dbname=..." gunicorn --workers 2 --threads 4 \
        --chdir bench baseline_app:app

Each gunicorn thread keeps one psycopg connection of its own (no pool, no ping). The table is
`bench_baseline (id bigserial primary key, body bytea not null)`, created here when missing.
"""

from __future__ import annotations

import json
import os
import threading

import psycopg
from flask import Flask, Response, request

DSN = os.environ.get("BASELINE_DSN", "host=127.0.0.1 user=postgres dbname=postgres")
TABLE_DDL = "CREATE TABLE IF NOT EXISTS bench_baseline (id bigserial PRIMARY KEY, body bytea NOT NULL)"

app = Flask(__name__)
_local = threading.local()


def _conn() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(DSN, autocommit=True)
        _local.conn = conn
    return conn


@app.post("/docs")
def insert() -> Response:
    """json.loads + one INSERT."""
    raw = request.get_data()
    json.loads(raw)  # parse it, as any JSON service would; 500 on a bad body is fine here
    row = _conn().execute("INSERT INTO bench_baseline (body) VALUES (%s) RETURNING id", (raw,)).fetchone()
    assert row is not None
    return Response(json.dumps({"id": row[0]}), status=201, mimetype="application/json")


@app.get("/docs/<int:doc_id>")
def select(doc_id: int) -> Response:
    """One SELECT by primary key."""
    row = _conn().execute("SELECT body FROM bench_baseline WHERE id = %s", (doc_id,)).fetchone()
    if row is None:
        return Response(status=404)
    return Response(bytes(row[0]), mimetype="application/json")


with psycopg.connect(DSN, autocommit=True) as _setup:
    _setup.execute(TABLE_DDL)
