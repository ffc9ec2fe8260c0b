"""Request ids, access logs, Prometheus metrics and the /health endpoint."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import QueuePool

from .extensions import database

log = logging.getLogger("referral_service.access")
bp = Blueprint("ops", __name__)

REQUEST_ID_HEADER = "X-Request-ID"


class _PoolCollector(Collector):
    """Database pool gauges read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = database.engine.pool
        gauge = GaugeMetricFamily("db_pool_connections", "Database pool connections", labels=["state"])
        if isinstance(pool, QueuePool):
            gauge.add_metric(["checked_out"], pool.checkedout())
            gauge.add_metric(["idle"], pool.checkedin())
            gauge.add_metric(["size"], pool.size())
            gauge.add_metric(["overflow"], max(0, pool.overflow()))
        yield gauge


class Metrics:
    """The app's own registry, so several apps (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by endpoint",
            ["endpoint", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.registry.register(_PoolCollector())


def request_id_from(incoming: str) -> str:
    """The caller's X-Request-ID when it is usable (1-64 printable characters), else a new one."""
    return incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else secrets.token_hex(16)


class RequestLog:
    """What every answered request leaves behind: its metrics and its access-log line."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # Metric children by label values: `labels()` takes a lock and validates the labels every call.
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def finished(self, *, endpoint: str, method: str, path: str, status: int, elapsed: float,
                 request_id: str, client: str | None) -> None:
        """Count and time the request under its route (`endpoint`), and log it."""
        self._child(self.metrics.requests, endpoint, method, str(status)).inc()
        self._child(self.metrics.latency, endpoint, method).observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %s",
                method,
                path,
                status,
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": client,
                },
            )


def init_app(app: Flask) -> None:
    """Install request ids, timing, access logs and metrics."""
    metrics = Metrics()
    app.extensions["metrics"] = metrics
    requests = app.extensions["request_log"] = RequestLog(metrics)

    @app.before_request
    def _start() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER, ""))
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]  # (once, not per attribute)
        ctx = g._get_current_object()
        elapsed = time.perf_counter() - getattr(ctx, "started", time.perf_counter())
        request_id = getattr(ctx, "request_id", "")
        response.headers[REQUEST_ID_HEADER] = request_id
        requests.finished(
            endpoint=req.url_rule.rule if req.url_rule else "unmatched", method=req.method, path=req.path,
            status=response.status_code, elapsed=elapsed, request_id=request_id,
            client=getattr(ctx, "client_id", None),
        )
        return response

    app.register_blueprint(bp)


@bp.get("/health")
def health() -> tuple[Response, int]:
    """Liveness and database status: 200 when the database answers, else 503."""
    try:
        database.ping()
    except SQLAlchemyError as exc:
        current_app.logger.warning("health: database unavailable: %s", exc.__class__.__name__)
        return jsonify(status="unavailable", database="unreachable",
                       message="the database does not answer"), 503
    return jsonify(status="ok", database="ok", backend=database.engine.dialect.name), 200


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition."""
    registry = current_app.extensions["metrics"].registry
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
