"""Load resources into a sekmet-fhir SQLite database before its server starts (run with the peer's python).

    bench/.peer-venv/bin/python bench/peer/load_peer.py SCRATCH.db resources.ndjson

Each line of the NDJSON file is one resource with its id (Organizations and Patients exported from
our own store, so both servers hold the same data). They go through sekmet's own `Store.create`
(version rows and its search indexer), in transactions of 5,000, with origin "internal" (no
inbound validation: the data were validated when our server stored them).
"""

from __future__ import annotations

import json
import sys
import time

from sekmet.fhir.store import Store

BATCH = 5000


def main() -> None:
    db_path, source = sys.argv[1], sys.argv[2]
    store = Store(db_path)
    started = time.perf_counter()
    count = 0
    with open(source, encoding="utf-8") as lines:
        batch: list[dict] = []
        for line in lines:
            if line.strip():
                batch.append(json.loads(line))
            if len(batch) >= BATCH:
                count += _write(store, batch)
                batch = []
        count += _write(store, batch)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(json.dumps({"loaded": count, "seconds": round(time.perf_counter() - started, 1)}))


def _write(store: Store, batch: list[dict]) -> int:
    with store.transaction():
        for resource in batch:
            resource.pop("meta", None)
            store.create(resource, origin="internal", keep_id=True)
    return len(batch)


if __name__ == "__main__":
    main()
