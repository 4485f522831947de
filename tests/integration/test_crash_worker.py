"""SIGKILL a real Celery worker mid-audit (real PostgreSQL + Redis), start another, and check
that the audit completes with every run computed exactly once.

Nothing re-sends the task message: the killed worker's message stays unacknowledged in Redis
(redelivered only after the visibility timeout, hours). The audit comes back through the
orphan sweep of the second worker: stale heartbeat -> requeued -> claimed -> resumed after
the runs already recorded. The engine trains all runs of one seed together, so we kill while
seed 1 trains, after seed 0's three runs were recorded.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from fastapi.testclient import TestClient

from tests.helpers import service as h  # noqa: E402

pytestmark = pytest.mark.integration

STUDENT = "cnn-4-8-8-16"
EPOCHS = 8


def _runs(url: str, audit_id: str):
    from sqlalchemy import text

    from kdaudit.store.db import get_engine

    with get_engine(url).connect() as conn:
        return conn.execute(
            text("SELECT id, run_key, created_at, test_accuracy FROM runs WHERE audit_id=:i ORDER BY id"),
            {"i": audit_id},
        ).all()


def _audit(url: str, audit_id: str):
    from sqlalchemy import text

    from kdaudit.store.db import get_engine

    with get_engine(url).connect() as conn:
        return conn.execute(
            text("SELECT status, attempts, claimed_by, runs_done, current_run, current_epoch, started_at "
                 "FROM audits WHERE id=:i"), {"i": audit_id}
        ).one()  # fmt: skip


def test_sigkill_mid_audit_resumes_without_recomputing(tmp_path):
    h.require("PostgreSQL", h.check_postgres)
    h.require("Redis", h.check_redis)
    from kdaudit.service.app import create_app
    from kdaudit.store import migrate

    name, url = h.create_database("kdaudit_crash")
    settings = h.production_settings(
        tmp_path, url,
        heartbeat_seconds=0.5,
        stale_after_seconds=4.0,
        sweep_seconds=1.0,
        sweep_in_api=False,  # the rescue must come from the workers' own sweep
    )
    first_log, second_log = tmp_path / "worker1.log", tmp_path / "worker2.log"
    first = second = None
    try:
        migrate.upgrade(url)
        first = h.start_worker(settings, first_log)
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            key = h.new_key(settings, "crash-tenant")
            t = h.upload(c, key, h.make_teacher_file(tmp_path / "teacher.safetensors"))
            assert t.status_code == 201, t.text
            # small enough for a busy 2-core CI box (~1 s an epoch), long enough to be killed mid-seed
            body = h.tiny_audit(t.json()["id"], seeds=2, epochs=EPOCHS, fraction=0.2, students=[STUDENT])
            r = c.post("/v1/audits", json=body, headers=h.auth(key))
            assert r.status_code == 202, r.text
            aid = r.json()["id"]
            runs_total = r.json()["progress"]["runs_total"]
            assert runs_total == 8  # 2 seeds x (scratch, label smoothing, normal_kd, skeptical)

            # wait until seed 0 is recorded and seed 1 is a few epochs in, then SIGKILL
            deadline = time.monotonic() + 240
            while True:
                a = _audit(url, aid)
                assert a.status in ("queued", "running"), (a, first_log.read_text()[-3000:])
                if a.runs_done == 4 and a.current_run and a.current_run.endswith("seed1") and (a.current_epoch or 0) >= 2:
                    break
                assert time.monotonic() < deadline, (a, first_log.read_text()[-3000:])
                time.sleep(0.05)
            assert a.current_epoch < EPOCHS, "the audit finished seed 1 before we could kill it"
            before = {r.run_key: r for r in _runs(url, aid)}
            assert len(before) == 4 and all(k.endswith("seed0") for k in before)
            killed_at_epoch, first_owner = a.current_epoch, a.claimed_by
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            assert first.returncode == -signal.SIGKILL
            killed = time.monotonic()
            # seed 1's cohort left its per-epoch checkpoint: the next worker resumes mid-seed
            import torch

            ckpt = settings.data_dir / "checkpoints" / aid / "seed1.pt"
            assert ckpt.exists()
            assert torch.load(ckpt, weights_only=True)["epoch"] >= killed_at_epoch

            # no new message is sent: the second worker's orphan sweep must find the audit
            second = h.start_worker(settings, second_log)
            get = lambda: c.get(f"/v1/audits/{aid}", headers=h.auth(key)).json()  # noqa: E731
            doc = h.wait_status(get, ("succeeded", "failed", "cancelled"), timeout=240)
            assert doc["status"] == "succeeded", (doc, second_log.read_text()[-3000:])
            report = c.get(f"/v1/audits/{aid}/report", headers=h.auth(key))
            assert report.status_code == 200
            report = report.json()

        after = _runs(url, aid)
        keys = [r.run_key for r in after]
        assert len(keys) == len(set(keys)) == runs_total  # each run recorded once
        # seed 0's runs are the very rows written before the kill (same id, time, accuracy)
        for k, row in before.items():
            same = next(r for r in after if r.run_key == k)
            assert (same.id, same.created_at, same.test_accuracy) == (row.id, row.created_at, row.test_accuracy)
        # ... and were not trained again: the second worker started only seed 1's runs
        log2 = second_log.read_text()
        assert f"audit {aid} resumes" in log2 and "4 finished run(s) kept" in log2
        for k in before:
            assert f"audit {aid} run started: {k}" not in log2
        for kind in ("scratch", "normal_kd", "skeptical"):
            assert f"audit {aid} run started: {kind}/{STUDENT}/seed1" in log2
            assert f"audit {aid} run finished: {kind}/{STUDENT}/seed1" in log2
        assert f"re-dispatching audit {aid}" in log2
        final = _audit(url, aid)
        assert final.status == "succeeded" and final.attempts == 2 and final.claimed_by != first_owner
        # the report is complete: every planned run, the stored accuracies, a verdict
        assert len(report["runs"]) == runs_total
        assert sorted(round(x["test_accuracy"], 3) for x in report["runs"]) == sorted(
            round(r.test_accuracy, 3) for r in after
        )
        assert report["summary"]["verdict"]
        assert not ckpt.exists()  # removed once seed 1 finished
        print(f"killed at seed1 epoch {killed_at_epoch}; resumed and finished {time.monotonic() - killed:.1f} s later")
    finally:
        for proc, log in ((first, first_log), (second, second_log)):
            if proc is not None:
                h.stop_worker(proc, log)
        h.drop_database(name)
