"""The audit task, run in-process on the embedded SQLite store: exactly-once effect on
duplicate delivery, cancellation between epochs, resume from recorded runs, takeover of
an orphan, and readable failure messages."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest

from kdaudit.store import repo  # noqa: E402
from kdaudit.store.files import FileStore  # noqa: E402
from kdaudit.store.models import Audit, utcnow  # noqa: E402
from kdaudit.store.reports import open_report  # noqa: E402
from kdaudit.workers.tasks import execute_audit  # noqa: E402
from tests.helpers import service as h  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    return h.worker_world(root, heartbeat_seconds=0.5, stale_after_seconds=30)


def new_audit(world, epochs: int = 1, teacher_id: str | None = None, **over) -> tuple[str, int]:
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.runner import plan_runs

    cfg = AuditConfig(
        teacher_arch=h.TEACHER_ARCH, students=["cnn-4-8-8-16"], seeds=1, device="cpu", schedule={"epochs": epochs},
        **{"force": True, **over},  # the world's teacher has random weights: past the sanity gate
    )
    total = len(plan_runs(cfg))
    with world["sessions"]() as s:
        audit, _ = repo.create_audit(
            s, tenant_id=world["tenant"], teacher_id=teacher_id or world["teacher"].id,
            config=cfg.model_dump(mode="json"), runs_total=total, epochs=epochs, request_hash=uuid.uuid4().hex,
        )  # fmt: skip
    return audit.id, total


def audit_row(world, audit_id: str) -> Audit:
    with world["sessions"]() as s:
        a = repo.get_audit(s, None, audit_id)
        assert a is not None
        return a


def runs_of(world, audit_id: str):
    with world["sessions"]() as s:
        return repo.list_runs(s, audit_id)


def test_duplicate_delivery_runs_once(world):
    aid, total = new_audit(world)
    assert execute_audit(aid, world["settings"]) == "succeeded"
    first = [(r.run_key, r.id) for r in runs_of(world, aid)]
    assert len(first) == total
    # the same message delivered again (to this or another worker) does nothing
    assert execute_audit(aid, world["settings"]).startswith("skipped")
    assert execute_audit(aid, world["settings"], wid="other-worker").startswith("skipped")
    assert [(r.run_key, r.id) for r in runs_of(world, aid)] == first
    a = audit_row(world, aid)
    assert a.status == "succeeded" and a.attempts == 1 and a.runs_done == total
    with world["sessions"]() as s:
        report = repo.get_report(s, aid)
    assert report is not None and report.body.get("kdaudit_sealed")  # sealed at rest
    assert open_report(world["settings"], aid, report.body)["schema"] == "kdaudit.report/v1"


def _run_in_thread(world, aid, **kw):
    out: dict[str, str] = {}
    t = threading.Thread(target=lambda: out.setdefault("result", execute_audit(aid, world["settings"], **kw)))
    t.start()
    return t, out


def _wait_epoch(world, aid, timeout=60.0) -> Audit:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a = audit_row(world, aid)
        if a.status == "running" and (a.current_epoch or 0) >= 1:
            return a
        assert a.status in ("queued", "running"), (a.status, a.error)
        time.sleep(0.05)
    raise AssertionError("audit never reached its first epoch")


def test_concurrent_duplicate_is_skipped_while_worker_alive(world):
    aid, total = new_audit(world, epochs=6)
    t, out = _run_in_thread(world, aid, wid="worker-a")
    _wait_epoch(world, aid)
    assert execute_audit(aid, world["settings"], wid="worker-b").startswith("skipped: running on live worker")
    t.join(120)
    assert out["result"] == "succeeded"
    assert len(runs_of(world, aid)) == total and audit_row(world, aid).attempts == 1


def test_cancel_running_audit(world):
    aid, total = new_audit(world, epochs=200)
    t, out = _run_in_thread(world, aid)
    a = _wait_epoch(world, aid)
    with world["sessions"]() as s:
        after = repo.request_cancel(s, a, world["settings"].stale_after_seconds)
    assert after.status == "running" and after.cancel_requested  # the worker stops it at the next epoch
    t.join(60)
    assert out["result"] == "cancelled"
    a = audit_row(world, aid)
    assert a.status == "cancelled" and a.finished_at is not None
    assert len(runs_of(world, aid)) < total


def test_resume_keeps_recorded_runs(world):
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.runner import plan_runs

    aid, total = new_audit(world)
    cfg = AuditConfig.model_validate(audit_row(world, aid).config)
    first = plan_runs(cfg)[0]
    # a previous worker finished the first run before dying
    record = {
        "kind": first.kind, "student": first.student, "seed": first.seed, "test_accuracy": 12.345,
        "exit_accuracies": {}, "best_epoch": 1, "val_curve": [10.0], "teacher_queries": 0, "seconds": 0.1,
    }  # fmt: skip
    with world["sessions"]() as s:
        assert repo.record_run(s, aid, first.key, record)
        repo.claim_audit(s, aid, "dead-worker", 30)
        s.execute(
            Audit.__table__.update().where(Audit.id == aid).values(heartbeat_at=utcnow() - timedelta(minutes=10))
        )
        s.commit()
    assert execute_audit(aid, world["settings"], wid="rescuer") == "succeeded"
    runs = {r.run_key: r for r in runs_of(world, aid)}
    assert len(runs) == total and runs[first.key].test_accuracy == 12.345
    a = audit_row(world, aid)
    assert a.attempts == 2 and a.claimed_by == "rescuer"
    with world["sessions"]() as s:
        body = open_report(world["settings"], aid, repo.get_report(s, aid).body)
    assert 12.345 in [r["test_accuracy"] for r in body["runs"]]


def test_lost_claim_cannot_write(world):
    aid, _ = new_audit(world)
    with world["sessions"]() as s:
        assert repo.claim_audit(s, aid, "old", 30).outcome == "claimed"
        s.execute(Audit.__table__.update().where(Audit.id == aid).values(heartbeat_at=utcnow() - timedelta(hours=1)))
        s.commit()
        assert repo.claim_audit(s, aid, "new", 30).outcome == "resumed"
        assert not repo.heartbeat(s, aid, "old")
        assert not repo.store_report(s, aid, "old", {"schema": "x", "summary": {"verdict": "leaks"}})
        assert not repo.finish_audit(s, aid, "old", "failed", "zombie")
        assert repo.should_stop(s, aid, "old") and not repo.should_stop(s, aid, "new")


def test_missing_teacher_file_fails_readably(world, tmp_path):
    from kdaudit.models.registry import build_model  # noqa: F401  (torch already loaded)

    with world["sessions"]() as s:
        ghost = repo.add_teacher(
            s, world["tenant"], sha256="0" * 64, filename="gone.pt", architecture=h.TEACHER_ARCH, dataset="digits",
            num_classes=10, in_channels=1, format="safetensors", parameters=1, size_bytes=1,
        )  # fmt: skip
    aid, _ = new_audit(world, teacher_id=ghost.id)
    assert execute_audit(aid, world["settings"]) == "failed"
    a = audit_row(world, aid)
    assert a.status == "failed" and a.error.startswith("cannot load teacher:") and "missing" in a.error


def test_corrupt_teacher_file_fails_with_loader_message(world):
    store = FileStore(world["settings"].resolved_storage_dir)
    sha, _ = store.put_bytes(b"not a checkpoint" * 64)
    with world["sessions"]() as s:
        bad = repo.add_teacher(
            s, world["tenant"], sha256=sha, filename="bad.safetensors", architecture=h.TEACHER_ARCH, dataset="digits",
            num_classes=10, in_channels=1, format="safetensors", parameters=1, size_bytes=1024,
        )  # fmt: skip
    aid, _ = new_audit(world, teacher_id=bad.id)
    assert execute_audit(aid, world["settings"]) == "failed"
    a = audit_row(world, aid)
    assert a.error.startswith("cannot load teacher:") and "\n" not in a.error and "Traceback" not in a.error
