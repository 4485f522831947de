"""The orphan sweep on the embedded store (fast, no worker processes): an audit whose worker
vanished is requeued and re-dispatched without any new message, or failed with a message
after `max_attempts`; a queued audit whose message was lost is sent again; the API process
sweeps too. Never stuck in `running`."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from kdaudit.store import migrate, repo  # noqa: E402
from kdaudit.store.db import session_factory  # noqa: E402
from kdaudit.store.models import Audit, utcnow  # noqa: E402
from kdaudit.store.settings import ServiceSettings  # noqa: E402
from kdaudit.workers.sweep import sweep_once  # noqa: E402
from tests.helpers import service as h  # noqa: E402


class FakeCelery:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list]] = []

    def send_task(self, name, args=None, **_):
        self.sent.append((name, list(args or [])))


@pytest.fixture
def world(tmp_path):
    settings = ServiceSettings(
        data_dir=tmp_path / "data", database_url=None, broker_url=None, auto_migrate=True,
        heartbeat_seconds=0.2, stale_after_seconds=1.0, max_attempts=2, requeue_queued_after_seconds=60,
        queue=f"kdaudit-sweep-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    migrate.upgrade(settings.resolved_database_url)
    sessions = session_factory(settings.resolved_database_url)
    with sessions() as s:
        tenant = repo.get_or_create_tenant(s, "t")
        teacher = repo.add_teacher(
            s, tenant.id, sha256="0" * 64, filename="t", architecture=h.TEACHER_ARCH, dataset="digits",
            num_classes=10, in_channels=1, format="safetensors", parameters=1, size_bytes=1,
        )  # fmt: skip
    return {"settings": settings, "sessions": sessions, "tenant": tenant.id, "teacher": teacher.id}


def _new(world) -> str:
    with world["sessions"]() as s:
        a, _ = repo.create_audit(
            s, tenant_id=world["tenant"], teacher_id=world["teacher"], config={"schedule": {"epochs": 1}},
            runs_total=3, epochs=1, request_hash=uuid.uuid4().hex,
        )  # fmt: skip
    return a.id


def _age(world, aid, **fields_ago):
    with world["sessions"]() as s:
        values = {k: utcnow() - timedelta(seconds=v) for k, v in fields_ago.items()}
        s.execute(Audit.__table__.update().where(Audit.id == aid).values(**values))
        s.commit()


def _row(world, aid) -> Audit:
    with world["sessions"]() as s:
        return repo.get_audit(s, None, aid)


def test_vanished_worker_is_requeued_then_failed_after_max_attempts(world):
    celery, settings = FakeCelery(), world["settings"]
    aid = _new(world)
    with world["sessions"]() as s:
        assert repo.claim_audit(s, aid, "worker-1", settings.stale_after_seconds).outcome == "claimed"
        repo.record_run(s, aid, "scratch/x/seed0", {"kind": "scratch", "student": "x", "seed": 0, "test_accuracy": 1.0})
    # a live worker (fresh heartbeat) is left alone
    assert sweep_once(celery, settings).requeued == [] and celery.sent == []
    # its worker vanishes: the heartbeat goes stale, and the sweep requeues + re-dispatches it
    _age(world, aid, heartbeat_at=5)
    result = sweep_once(celery, settings)
    assert result.requeued == [aid] and celery.sent == [("kdaudit.run_audit", [aid])]
    a = _row(world, aid)
    assert a.status == "queued" and a.claimed_by is None and a.runs_done == 1 and a.attempts == 1
    assert sweep_once(celery, settings).requeued == []  # once: queued audits are not requeued again
    # the next worker claims it (attempt 2), keeps the recorded run, and vanishes too
    with world["sessions"]() as s:
        assert repo.claim_audit(s, aid, "worker-2", settings.stale_after_seconds).outcome == "claimed"
        assert list(repo.done_runs(s, aid)) == ["scratch/x/seed0"]
    first_start = a.started_at
    assert _row(world, aid).started_at == first_start  # the first start time is kept
    _age(world, aid, heartbeat_at=5)
    result = sweep_once(celery, settings)
    assert result.failed == [aid] and len(celery.sent) == 1
    a = _row(world, aid)
    assert a.status == "failed" and a.finished_at is not None
    assert "stopped responding" in a.error and "max_attempts=2" in a.error


def test_redelivered_message_after_max_attempts_fails_instead_of_looping(world):
    settings = world["settings"]
    aid = _new(world)
    with world["sessions"]() as s:
        repo.claim_audit(s, aid, "w1", settings.stale_after_seconds)
    _age(world, aid, heartbeat_at=5)
    with world["sessions"]() as s:
        assert repo.claim_audit(s, aid, "w2", 1.0, max_attempts=2).outcome == "resumed"
    _age(world, aid, heartbeat_at=5)
    with world["sessions"]() as s:
        claim = repo.claim_audit(s, aid, "w3", 1.0, max_attempts=2)
    assert claim.outcome == "skipped" and "gave up" in claim.reason
    assert _row(world, aid).status == "failed"


def test_queued_audit_with_lost_message_is_sent_again(world):
    celery, settings = FakeCelery(), world["settings"]
    aid = _new(world)  # inserted, but (say) the API died before the enqueue
    assert sweep_once(celery, settings).redispatched == []
    _age(world, aid, updated_at=120)
    assert sweep_once(celery, settings).redispatched == [aid]
    assert celery.sent == [("kdaudit.run_audit", [aid])]
    assert sweep_once(celery, settings).redispatched == []  # not again until it is old again


def test_api_process_sweeps_without_any_worker(world, monkeypatch):
    """Even with no worker alive, the API notices the orphan and puts it back on the queue."""
    from kdaudit.service.app import create_app

    settings = world["settings"].model_copy(update={"sweep_seconds": 0.2})
    aid = _new(world)
    with world["sessions"]() as s:
        repo.claim_audit(s, aid, "gone", settings.stale_after_seconds)
    _age(world, aid, heartbeat_at=5)
    app = create_app(settings)
    fake = FakeCelery()
    app.state.celery = fake
    with TestClient(app):
        deadline = time.monotonic() + 10
        while not fake.sent and time.monotonic() < deadline:
            time.sleep(0.05)
    assert fake.sent == [("kdaudit.run_audit", [aid])]
    assert _row(world, aid).status == "queued"
