"""Request ids, access logs, Prometheus metrics and the /health endpoint."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

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


def init_app(app: Flask) -> None:
    """Install request ids, timing, access logs and metrics."""
    metrics = Metrics()
    app.extensions["metrics"] = metrics

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        metrics.latency.labels(endpoint, request.method).observe(elapsed)
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
                "client": g.get("client_id"),
            },
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
