"""End to end on the production stack: real PostgreSQL + real Redis + a real Celery worker
process. upload -> submit -> worker runs a small audit -> poll -> report, and the rows in
Postgres match; duplicate delivery runs once; cancel of a running audit; a fresh database
migrates with `alembic upgrade head`."""

from __future__ import annotations

import subprocess
import time

import pytest
from fastapi.testclient import TestClient

from tests.helpers import service as h  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    h.require("PostgreSQL", h.check_postgres)
    h.require("Redis", h.check_redis)
    from kdaudit.service.app import create_app
    from kdaudit.store import migrate

    root = tmp_path_factory.mktemp("pg")
    name, url = h.create_database()
    settings = h.production_settings(
        root, url,
        heartbeat_seconds=1.0,
    )
    try:
        migrate.upgrade(url)
        log = root / "worker.log"
        worker = h.start_worker(settings, log)
        try:
            with TestClient(create_app(settings), raise_server_exceptions=False) as client:
                key = h.new_key(settings, "pg-tenant")
                teacher = h.upload(client, key, h.make_teacher_file(root / "teacher.safetensors"))
                assert teacher.status_code == 201, teacher.text
                yield {"client": client, "key": key, "teacher": teacher.json(), "settings": settings, "url": url,
                       "log": log, "worker": worker}  # fmt: skip
        finally:
            print(h.stop_worker(worker, log))
    finally:
        h.drop_database(name)


def _get(stack, aid):
    return lambda: stack["client"].get(f"/v1/audits/{aid}", headers=h.auth(stack["key"])).json()


def test_alembic_upgrade_head_on_fresh_postgres():
    h.require("PostgreSQL", h.check_postgres)
    from kdaudit.store import migrate
    from kdaudit.store.migrate import MIGRATIONS_DIR

    name, url = h.create_database("kdaudit_migrate")
    try:
        # the same command the api container runs on start
        r = subprocess.run(
            ["alembic", "-c", str(MIGRATIONS_DIR / "alembic.ini"), "-x", f"url={url}", "upgrade", "head"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert migrate.current_revision(url) == migrate.head_revision()
        from tests.helpers.schema import schema_diff

        assert schema_diff(url) == []
        from sqlalchemy import text

        from kdaudit.store.db import get_engine

        with get_engine(url).connect() as conn:
            types = dict(conn.execute(text(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='reports'"
            )).all())  # fmt: skip
        assert types["body"] == "jsonb"
    finally:
        h.drop_database(name)


def test_full_flow_rows_match(stack):
    from sqlalchemy import text

    from kdaudit.store.db import get_engine

    c, key, t = stack["client"], stack["key"], stack["teacher"]
    r = c.post("/v1/audits", json=h.tiny_audit(t["id"]), headers={**h.auth(key), "Idempotency-Key": "flow-1"})
    assert r.status_code == 202, r.text
    aid = r.json()["id"]
    assert r.headers["location"] == f"/v1/audits/{aid}"
    doc = h.wait_status(_get(stack, aid), ("succeeded", "failed", "cancelled"), timeout=180)
    assert doc["status"] == "succeeded", (doc, stack["log"].read_text()[-3000:])
    assert doc["progress"]["runs_done"] == doc["progress"]["runs_total"] > 0
    assert doc["progress"]["fraction"] == 1.0 and doc["finished_at"]
    rep = c.get(f"/v1/audits/{aid}/report", headers=h.auth(key))
    assert rep.status_code == 200
    report = rep.json()
    assert report["schema"] == "kdaudit.report/v1" and report["teacher"]["sha256"] == t["sha256"]

    with get_engine(stack["url"]).connect() as conn:
        audit = conn.execute(text("SELECT status, runs_done, runs_total, attempts, claimed_by FROM audits WHERE id=:i"),
                             {"i": aid}).one()  # fmt: skip
        runs = conn.execute(text("SELECT run_key, test_accuracy FROM runs WHERE audit_id=:i ORDER BY id"), {"i": aid}).all()
        stored = conn.execute(
            text("SELECT body, verdict, jsonb_typeof(body) FROM reports WHERE audit_id=:i"), {"i": aid}
        ).one()
    assert audit.status == "succeeded" and audit.attempts == 1 and audit.claimed_by
    assert audit.runs_done == audit.runs_total == len(runs) == len(report["runs"])
    assert sorted(round(r.test_accuracy, 3) for r in runs) == sorted(round(x["test_accuracy"], 3) for x in report["runs"])
    from kdaudit.store.reports import open_report

    assert stored.body.get("kdaudit_sealed") and "summary" not in stored.body  # sealed at rest (store/reports.py)
    assert open_report(stack["settings"], aid, stored.body) == report
    assert stored.verdict == report["summary"]["verdict"] and stored[2] == "object"


def test_duplicate_delivery_runs_once(stack, tmp_path):
    """Three deliveries of one task to two worker processes: one claim, one set of runs."""
    from sqlalchemy import text

    from kdaudit.store.db import get_engine
    from kdaudit.workers.app import TASK_RUN_AUDIT

    c, key, t = stack["client"], stack["key"], stack["teacher"]
    second_log = tmp_path / "worker2.log"
    second = h.start_worker(stack["settings"], second_log)
    try:
        time.sleep(3)  # let the second worker subscribe to the queue
        aid = c.post("/v1/audits", json=h.tiny_audit(t["id"], epochs=4), headers=h.auth(key)).json()["id"]
        celery = c.app.state.celery
        celery.send_task(TASK_RUN_AUDIT, args=[aid])  # the same task, delivered twice more
        celery.send_task(TASK_RUN_AUDIT, args=[aid])
        doc = h.wait_status(_get(stack, aid), ("succeeded", "failed", "cancelled"), timeout=180)
        assert doc["status"] == "succeeded", doc
        # let the workers drain the duplicates, then check nothing ran twice
        deadline = time.monotonic() + 60
        logs = ""
        while time.monotonic() < deadline:
            logs = stack["log"].read_text() + second_log.read_text()
            if logs.count(f"audit {aid} not run here") >= 2:
                break
            time.sleep(0.3)
    finally:
        logs = stack["log"].read_text() + h.stop_worker(second, second_log)
    with get_engine(stack["url"]).connect() as conn:
        attempts = conn.execute(text("SELECT attempts FROM audits WHERE id=:i"), {"i": aid}).scalar_one()
        keys = conn.execute(text("SELECT run_key FROM runs WHERE audit_id=:i"), {"i": aid}).scalars().all()
    assert attempts == 1
    assert len(keys) == len(set(keys)) == doc["progress"]["runs_total"]
    assert logs.count(f"audit {aid} not run here") >= 2
    assert logs.count(f"audit {aid} claimed by") == 1


def test_cancel_running_audit(stack):
    c, key, t = stack["client"], stack["key"], stack["teacher"]
    aid = c.post("/v1/audits", json=h.tiny_audit(t["id"], epochs=300), headers=h.auth(key)).json()["id"]
    get = _get(stack, aid)
    h.wait_status(get, ("running",), timeout=120, poll=0.1)
    r = c.post(f"/v1/audits/{aid}/cancel", headers=h.auth(key))
    assert r.status_code == 202 and r.json()["cancel_requested"]
    doc = h.wait_status(get, ("succeeded", "failed", "cancelled"), timeout=120)
    assert doc["status"] == "cancelled", doc
    assert doc["progress"]["runs_done"] < doc["progress"]["runs_total"]
    rep = c.get(f"/v1/audits/{aid}/report", headers=h.auth(key))
    assert rep.status_code == 409


def test_readyz_on_postgres_and_redis(stack):
    r = stack["client"].get("/readyz")
    assert r.status_code == 200, r.text


def test_status_poll_survives_dropped_database_connections(stack):
    """The poll reads on a pre-ping-free autocommit engine (store/db.py `read_engine`): when the
    database drops its pooled connections (restart, failover, idle reaper) the read retries on a
    fresh connection instead of failing, and the API keeps answering."""
    import psycopg

    from kdaudit.store import db, repo

    c, key, t = stack["client"], stack["key"], stack["teacher"]
    aid = c.post("/v1/audits", json=h.tiny_audit(t["id"]), headers=h.auth(key)).json()["id"]
    assert c.get(f"/v1/audits/{aid}", headers=h.auth(key)).status_code == 200
    engine = db.read_engine(stack["url"])
    with db.session_factory(stack["url"])() as s:
        tenant = repo.get_audit(s, None, aid).tenant_id
    assert repo.poll_audit(engine, tenant, aid).id == aid
    assert repo.poll_audit(engine, "someone-else", aid) is None  # another tenant's audit: no row
    name = stack["url"].rsplit("/", 1)[1]
    with psycopg.connect(h._libpq(h.PG_ADMIN_URL), autocommit=True) as admin:
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchone()[0]
    assert killed >= 1
    assert repo.poll_audit(engine, tenant, aid).id == aid  # the dead pooled connection: retried once
    for _ in range(3):
        again = c.get(f"/v1/audits/{aid}", headers=h.auth(key))
        assert again.status_code == 200 and again.json()["id"] == aid, again.text


def test_serve_with_two_api_processes(tmp_path):
    """`kdaudit serve --workers 2` on PostgreSQL + Redis: both processes answer, /metrics sums the
    processes' counters (prometheus multi-process mode), SIGTERM stops them all; the embedded
    service refuses --workers 2 in one line (its rate-limit buckets live in the process)."""
    import os
    import signal
    import sys

    import httpx

    h.require("PostgreSQL", h.check_postgres)
    h.require("Redis", h.check_redis)
    name, url = h.create_database("kdaudit_serve")
    cli = [sys.executable, "-m", "kdaudit.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDAUDIT_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(KDAUDIT_DATA_DIR=str(tmp_path / "data"), KDAUDIT_DATABASE_URL=url, KDAUDIT_BROKER_URL=h.REDIS_URL,
               KDAUDIT_STORAGE_DIR=str(tmp_path / "teachers"), KDAUDIT_QUEUE=f"serve-{name}")  # fmt: skip
    port = h.free_port()
    log = tmp_path / "serve.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen([*cli, "serve", "--port", str(port), "--workers", "2", "--log-level", "warning"],
                                    env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            h.wait_until_serving(base, proc, log, "/healthz")
            time.sleep(2)  # the second process too
            for _ in range(40):  # new connections: the kernel spreads them over both processes
                assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            text = httpx.get(f"{base}/metrics", timeout=5).text
            line = next(x for x in text.splitlines() if x.startswith("kdaudit_http_requests_total{") and 'route="/healthz"' in x)
            assert float(line.rsplit(" ", 1)[1]) >= 40, line  # every process's polls, whichever answered the scrape
            children = [int(c) for c in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
            assert len(children) >= 2, children
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-2000:]
    finally:
        h.drop_database(name)
    embedded = {k: v for k, v in env.items() if k not in ("KDAUDIT_DATABASE_URL", "KDAUDIT_BROKER_URL")}
    r = subprocess.run([*cli, "serve", "--port", str(h.free_port()), "--workers", "2"], env=embedded,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1 and "--workers > 1 needs the production stack" in r.stderr and "Traceback" not in r.stderr, r.stderr
