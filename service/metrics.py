"""Prometheus metrics: request counts/latency per route, uploads, submissions, audits by status."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.responses import Response

from kdaudit.store import repo
from kdaudit.store.models import STATUSES


class _AuditCollector:
    """Audits by status, read from the DB at scrape time (true across API replicas)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self):
        g = GaugeMetricFamily("kdaudit_audits", "Audits in the database by status.", labels=["status"])
        try:
            with self.app.state.sessions() as session:
                counts = repo.count_by_status(session)
        except Exception:
            return
        for status in STATUSES:
            g.add_metric([status], counts.get(status, 0))
        yield g


class Metrics:
    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kdaudit_http_requests", "HTTP requests.", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "kdaudit_http_request_duration_seconds", "HTTP request latency.", ["method", "route"], registry=self.registry
        )
        self.teachers_uploaded = Counter("kdaudit_teachers_uploaded", "Teacher files accepted.", registry=self.registry)
        self.audits_submitted = Counter("kdaudit_audits_submitted", "Audits queued.", registry=self.registry)
        self.registry.register(_AuditCollector(app))


def install(app: FastAPI) -> Metrics:
    metrics = Metrics(app)

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response: Response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.requests.labels(request.method, template, str(status)).inc()
            metrics.latency.labels(request.method, template).observe(time.perf_counter() - start)

    return metrics
