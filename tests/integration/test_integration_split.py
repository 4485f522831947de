"""An audit split across two real Celery worker processes (`audit_parts=2`), end to end through
the API: each worker trains one part (told apart by `claimed_by` on the part rows), the last
one to finish assembles the report once. On the embedded stack (SQLite + filesystem broker)
and on the production one (PostgreSQL + Redis)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import service as h  # noqa: E402

pytestmark = pytest.mark.integration

TERMINAL = ("succeeded", "failed", "cancelled")


def _wait_ready(logs: list[Path], timeout: float = 120.0) -> None:
    """Both workers consume the queue before anything is sent (else one could take both parts)."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() and " ready." in p.read_text(errors="replace") for p in logs):
        if time.monotonic() > deadline:
            raise AssertionError("workers not ready:\n" + "\n".join(p.read_text(errors="replace")[-2000:] for p in logs))
        time.sleep(0.3)


def _split_audit_on_two_workers(settings, root: Path, monkeypatch) -> None:
    from kdaudit.service.app import create_app
    from kdaudit.store import repo
    from kdaudit.store.db import session_factory

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers inherit it: two of them on shared cores
    logs = [root / "worker-a.log", root / "worker-b.log"]
    workers = [h.start_worker(settings, log) for log in logs]
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            key = h.new_key(settings, "split")
            teacher = h.upload(client, key, h.make_teacher_file(root / "teacher.safetensors"))
            assert teacher.status_code == 201, teacher.text
            _wait_ready(logs)
            body = h.tiny_audit(teacher.json()["id"], attacks=["normal_kd"], seeds=2, epochs=2)
            r = client.post("/v1/audits", json=body, headers=h.auth(key))
            assert r.status_code == 202, r.text
            aid = r.json()["id"]
            doc = h.wait_status(lambda: client.get(f"/v1/audits/{aid}", headers=h.auth(key)).json(), TERMINAL, 180)
            text = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs)
            assert doc["status"] == "succeeded", (doc, text)
            assert doc["progress"]["runs_done"] == doc["progress"]["runs_total"] == 6  # 2 seeds x (scratch, label smoothing, normal_kd)
            assert doc["progress"]["fraction"] == 1.0 and doc["progress"]["current_run"] is None
            report = client.get(f"/v1/audits/{aid}/report", headers=h.auth(key)).json()
    finally:
        text = "\n".join(h.stop_worker(w, log) for w, log in zip(workers, logs, strict=True))

    with session_factory(settings.resolved_database_url)() as s:
        parts = repo.list_parts(s, aid)
        runs = repo.list_runs(s, aid)
        audit = repo.get_audit(s, None, aid)
        stored = repo.get_report(s, aid)
    # each worker trained one part
    assert [(p.part, p.seeds, p.status, p.attempts) for p in parts] == [(0, [0], "succeeded", 1), (1, [1], "succeeded", 1)]
    assert parts[0].claimed_by != parts[1].claimed_by, text
    assert {r.seed for r in runs} == {0, 1} and len({r.run_key for r in runs}) == len(runs) == 6
    # assembled once, by the last part to finish (one of the two workers)
    assert text.count(f"audit {aid} report assembled by") == 1, text
    assert audit.claimed_by in {p.claimed_by for p in parts} and audit.attempts == 1
    from kdaudit.store.reports import open_report

    # stored sealed (encrypted at rest); opened with the storage key it equals what the API served
    assert stored is not None and open_report(settings, aid, stored.body) == report
    assert report["schema"] == "kdaudit.report/v1" and report["summary"]["verdict"]
    assert sorted(x["test_accuracy"] for x in report["runs"]) == sorted(r.test_accuracy for r in runs)
    assert {(x["kind"], x["seed"]) for x in report["runs"]} == {(k, s) for k in ("scratch", "scratch_ls", "normal_kd") for s in (0, 1)}


def test_split_audit_on_embedded_stack(tmp_path, monkeypatch):
    settings = h.embedded_settings(tmp_path, audit_parts=2, heartbeat_seconds=1.0)
    _split_audit_on_two_workers(settings, tmp_path, monkeypatch)


def test_split_audit_on_postgres_and_redis(tmp_path, monkeypatch):
    h.require("PostgreSQL", h.check_postgres)
    h.require("Redis", h.check_redis)
    from kdaudit.store import migrate

    name, url = h.create_database()
    try:
        migrate.upgrade(url)
        settings = h.production_settings(tmp_path, url, audit_parts=2, heartbeat_seconds=1.0)
        _split_audit_on_two_workers(settings, tmp_path, monkeypatch)
    finally:
        h.drop_database(name)
