"""Prometheus metrics: request counts/latency per route, uploads, submissions, audits by status."""

from __future__ import annotations

import os
import time

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily

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


#: every label value comes from a fixed set: a client-chosen string (a made-up HTTP method, a
#: path that matches no route) must never create a new time series. 20,000 requests with random
#: methods had grown the API by ~100 MB and /metrics to 41 MB when the raw method was a label.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def bounded_labels(method: str, route: object, status: int) -> tuple[str, str, str]:
    """(method, route template, status class) with a bounded number of values each: unknown
    methods are `other`, unmatched paths `unmatched` (templates come from the app's own routes),
    and statuses outside 100-599 `other`."""
    m = method if method in KNOWN_METHODS else "other"
    template = getattr(route, "path", None)
    t = template if isinstance(template, str) and template else "unmatched"
    code = str(status) if isinstance(status, int) and 100 <= status <= 599 else "other"
    return m, t, code


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
        self.scrape = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # several API processes (`kdaudit serve --workers N`): each writes its counters to files
            # there, and a scrape, answered by any one process, sums every process's files
            self.scrape = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.scrape)
            self.scrape.register(_AuditCollector(app))


class _Measure:
    """Pure ASGI (not `@app.middleware("http")`, whose BaseHTTPMiddleware costs an extra task and
    stream per request): count and time every HTTP request under bounded labels."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method, template, code = bounded_labels(scope["method"], scope.get("route"), status)
            self.metrics.requests.labels(method, template, code).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)


def install(app: FastAPI) -> Metrics:
    metrics = Metrics(app)
    app.add_middleware(_Measure, metrics=metrics)
    return metrics
