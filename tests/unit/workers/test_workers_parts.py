"""Audits split by seed across workers (`audit_parts`), in-process on the embedded SQLite store:
part assignment, the last part to finish assembles once, a redelivered part keeps the runs
recorded, cancel stops every part, a failed part fails the audit, the sweep requeues stale
parts and hands an unassembled audit to an assembly task, the API queues one task per part."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from kdaudit.store import migrate, repo  # noqa: E402
from kdaudit.store.db import session_factory  # noqa: E402
from kdaudit.store.models import Audit, AuditPart, utcnow  # noqa: E402
from kdaudit.workers.names import TASK_ASSEMBLE, TASK_RUN_AUDIT, TASK_RUN_PART  # noqa: E402
from kdaudit.workers.sweep import sweep_once  # noqa: E402
from kdaudit.workers.tasks import execute_assembly, execute_audit, execute_part  # noqa: E402
from tests.helpers import service as h  # noqa: E402


class FakeCelery:
    """Records what is sent; with `only`, just the messages about that audit (the module's
    database holds other tests' audits, which the sweep rightly acts on too)."""

    def __init__(self, only: str | None = None) -> None:
        self.only = only
        self.sent: list[tuple[str, list]] = []

    def send_task(self, name, args=None, **_):
        if self.only is None or (args and args[0] == self.only):
            self.sent.append((name, list(args or [])))


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("parts")
    return h.worker_world(root, heartbeat_seconds=0.5, stale_after_seconds=30, max_attempts=2)


def new_split_audit(world, seeds=2, parts=2, epochs=1, teacher_id=None) -> tuple[str, int]:
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.runner import plan_runs

    cfg = AuditConfig(teacher_arch=h.TEACHER_ARCH, force=True, students=["cnn-4-8-8-16"], attacks=["normal_kd"], seeds=seeds,
                      device="cpu", schedule={"epochs": epochs})  # fmt: skip
    config = cfg.model_dump(mode="json")
    total = len(plan_runs(cfg))
    with world["sessions"]() as s:
        audit, _ = repo.create_audit(
            s, tenant_id=world["tenant"], teacher_id=teacher_id or world["teacher"].id, config=config,
            runs_total=total, epochs=epochs, request_hash=uuid.uuid4().hex, parts=repo.plan_parts(config, parts),
        )  # fmt: skip
    return audit.id, total


def audit_row(world, aid) -> Audit:
    with world["sessions"]() as s:
        return repo.get_audit(s, None, aid)


def parts_of(world, aid) -> list[AuditPart]:
    with world["sessions"]() as s:
        return repo.list_parts(s, aid)


def runs_of(world, aid) -> dict:
    with world["sessions"]() as s:
        return {r.run_key: r for r in repo.list_runs(s, aid)}


from kdaudit.store.reports import open_report  # noqa: E402


def report_of(world, aid):
    with world["sessions"]() as s:
        return repo.get_report(s, aid)


def _set(world, model, where, **values):
    with world["sessions"]() as s:
        s.execute(model.__table__.update().where(*where).values(**values))
        s.commit()


def _ago(seconds: float):
    return utcnow() - timedelta(seconds=seconds)


# ---------------------------------------------------------------- assignment


def test_seeds_are_split_round_robin_into_disjoint_parts():
    assert repo.split_seeds(range(5), 2) == [[0, 2, 4], [1, 3]]
    assert repo.split_seeds([0, 1], 4) == [[0], [1]]  # never more parts than seeds
    assert repo.split_seeds([7], 3) == [[7]]
    assert repo.plan_parts({"seeds": 3, "base_seed": 10}, 2) == [[10, 12], [11]]
    assert repo.plan_parts({"seeds": 3, "base_seed": 0}, 1) is None  # audit_parts=1: one task, as before
    assert repo.plan_parts({"seeds": 1, "base_seed": 0}, 4) is None  # one seed: nothing to split
    for seeds in range(1, 7):
        for n in range(1, 5):
            parts = repo.split_seeds(range(seeds), n)
            assert len(parts) == min(n, seeds) and all(parts)
            assert sorted(x for p in parts for x in p) == list(range(seeds))


def test_migration_0002_up_down_up(tmp_path):
    from tests.helpers.schema import schema_diff

    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    from alembic import command

    command.downgrade(migrate.alembic_config(url), "0001")
    assert migrate.current_revision(url) == "0001"
    command.upgrade(migrate.alembic_config(url), "head")
    assert migrate.current_revision(url) == migrate.head_revision() and schema_diff(url) == []


# ---------------------------------------------------------------- the part tasks


def test_parts_then_last_finisher_assembles_once(world):
    aid, total = new_split_audit(world)
    assert [p.seeds for p in parts_of(world, aid)] == [[0], [1]]
    assert execute_part(aid, 1, world["settings"], wid="w1") == "part succeeded"  # part 0 not done: no report
    a = audit_row(world, aid)
    assert a.status == "running" and a.claimed_by is None and a.runs_done == total // 2
    assert report_of(world, aid) is None
    assert execute_part(aid, 1, world["settings"], wid="w2") == "skipped: part is succeeded"  # redelivered
    assert execute_part(aid, 0, world["settings"], wid="w0") == "succeeded"  # the last one assembles
    parts = parts_of(world, aid)
    assert [(p.status, p.claimed_by, p.attempts) for p in parts] == [("succeeded", "w0", 1), ("succeeded", "w1", 1)]
    a = audit_row(world, aid)
    assert a.status == "succeeded" and a.runs_done == a.runs_total == total and a.attempts == 1
    assert a.claimed_by == "w0" and a.current_run is None
    report = report_of(world, aid)
    runs = runs_of(world, aid)

    body = open_report(world["settings"], aid, report.body)  # sealed at rest
    assert len(body["runs"]) == len(runs) == total and body["summary"]["verdict"]
    assert sorted(r["test_accuracy"] for r in body["runs"]) == sorted(r.test_accuracy for r in runs.values())
    # idempotent: a second assembly (or part) finds the report and does nothing
    assert execute_assembly(aid, world["settings"], wid="late") == "skipped: audit is succeeded"
    assert execute_part(aid, 0, world["settings"], wid="late").startswith("skipped")
    again = report_of(world, aid)
    assert again.created_at == report.created_at and again.body == report.body
    # the same runs and accuracies as the audit run whole by one task
    with world["sessions"]() as s:
        whole, _ = repo.create_audit(s, tenant_id=a.tenant_id, teacher_id=a.teacher_id, config=a.config,
                                     runs_total=total, epochs=1, request_hash=uuid.uuid4().hex)  # fmt: skip
    assert execute_audit(whole.id, world["settings"]) == "succeeded"
    one = open_report(world["settings"], whole.id, report_of(world, whole.id).body)
    assert [(r["kind"], r["seed"], r["test_accuracy"]) for r in one["runs"]] == [
        (r["kind"], r["seed"], r["test_accuracy"]) for r in body["runs"]
    ]
    assert one["summary"]["verdict"] == body["summary"]["verdict"]


def test_claim_assembly_wins_once_and_only_when_every_part_succeeded(world):
    aid, _ = new_split_audit(world, seeds=3, parts=3)
    with world["sessions"]() as s:
        assert repo.claim_part(s, aid, 0, "w", 30).outcome == "claimed"
        assert repo.finish_part(s, aid, 0, "w", "succeeded")
        assert repo.claim_assembly(s, aid, "early").reason == "not every part has succeeded yet"
    _set(world, AuditPart, [AuditPart.audit_id == aid], status="succeeded")
    results: list[str] = []
    barrier = threading.Barrier(6)

    def claim(i: int) -> None:
        with world["sessions"]() as s:
            barrier.wait()
            results.append(repo.claim_assembly(s, aid, f"a{i}").outcome)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["claimed"] + ["skipped"] * 5
    with world["sessions"]() as s:
        assert repo.claim_assembly(s, aid, "x").reason.startswith("being assembled by a")
        # a whole-audit task for a split audit never runs it
        assert repo.claim_audit(s, aid, "single", 30).reason.startswith("the audit is split")


def test_redelivered_part_keeps_recorded_runs(world):
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.runner import plan_runs

    aid, total = new_split_audit(world)
    first = next(r for r in plan_runs(AuditConfig.model_validate(audit_row(world, aid).config)) if r.seed == 0)
    record = {
        "kind": first.kind, "student": first.student, "seed": first.seed, "test_accuracy": 12.345,
        "exit_accuracies": {}, "best_epoch": 1, "val_curve": [10.0], "teacher_queries": 0, "seconds": 0.1,
    }  # fmt: skip
    with world["sessions"]() as s:  # a worker finished one run of part 0, then died
        assert repo.claim_part(s, aid, 0, "dead", 30).outcome == "claimed"
        assert repo.record_run(s, aid, first.key, record)
    # while it looks alive, a duplicate delivery is refused
    assert execute_part(aid, 0, world["settings"], wid="dup") == "skipped: running on live worker dead"
    _set(world, AuditPart, [AuditPart.audit_id == aid, AuditPart.part == 0], heartbeat_at=_ago(600))
    assert execute_part(aid, 1, world["settings"], wid="w1") == "part succeeded"
    assert execute_part(aid, 0, world["settings"], wid="rescuer") == "succeeded"
    p0 = parts_of(world, aid)[0]
    assert p0.claimed_by == "rescuer" and p0.attempts == 2
    runs = runs_of(world, aid)
    assert len(runs) == total and runs[first.key].test_accuracy == 12.345  # not trained again
    assert 12.345 in [r["test_accuracy"] for r in open_report(world["settings"], aid, report_of(world, aid).body)["runs"]]


def _wait(cond, timeout=90.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_cancel_stops_every_part(world):
    aid, total = new_split_audit(world, epochs=300)
    out: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda p=p: out.setdefault(p, execute_part(aid, p, world["settings"], wid=f"w{p}")))
        for p in (0, 1)
    ]
    for t in threads:
        t.start()
    _wait(lambda: all(p.status == "running" and (p.current_epoch or 0) >= 1 for p in parts_of(world, aid)),
          what="both parts training")  # fmt: skip
    a = audit_row(world, aid)
    assert a.status == "running" and a.current_run and a.current_epoch >= 1  # progress shows a part
    with world["sessions"]() as s:
        assert repo.request_cancel(s, a, world["settings"].stale_after_seconds).cancel_requested
    for t in threads:
        t.join(60)
    assert out == {0: "cancelled", 1: "cancelled"}
    a = audit_row(world, aid)
    assert a.status == "cancelled" and a.finished_at and len(runs_of(world, aid)) < total
    assert [p.status for p in parts_of(world, aid)] == ["cancelled", "cancelled"]


def test_failed_part_fails_the_audit_with_its_message(world):
    with world["sessions"]() as s:
        ghost = repo.add_teacher(
            s, world["tenant"], sha256="0" * 64, filename="gone.pt", architecture=h.TEACHER_ARCH, dataset="digits",
            num_classes=10, in_channels=1, format="safetensors", parameters=1, size_bytes=1,
        )  # fmt: skip
    aid, _ = new_split_audit(world, teacher_id=ghost.id)
    assert execute_part(aid, 0, world["settings"], wid="w0") == "failed"
    a = audit_row(world, aid)
    assert a.status == "failed" and a.error.startswith("cannot load teacher:") and "missing" in a.error
    assert parts_of(world, aid)[0].error == a.error
    assert execute_part(aid, 1, world["settings"], wid="w1") == "skipped: audit is failed"


# ---------------------------------------------------------------- the sweep


def test_sweep_requeues_stale_parts_then_fails_after_max_attempts(world):
    settings = world["settings"].model_copy(update={"stale_after_seconds": 1.0})
    aid, _ = new_split_audit(world)
    with world["sessions"]() as s:
        assert repo.claim_part(s, aid, 0, "gone", 30).outcome == "claimed"
    celery = FakeCelery(only=aid)
    sweep_once(celery, settings)
    assert celery.sent == []  # fresh heartbeat: left alone
    _set(world, AuditPart, [AuditPart.audit_id == aid], heartbeat_at=_ago(60))
    _set(world, Audit, [Audit.id == aid], heartbeat_at=_ago(60))
    sweep_once(celery, settings)
    assert celery.sent == [(TASK_RUN_PART, [aid, 0])]  # never a whole-audit task for a split audit
    assert parts_of(world, aid)[0].status == "queued" and audit_row(world, aid).status == "running"
    with world["sessions"]() as s:  # second start (attempts 2 = max_attempts), and it vanishes again
        assert repo.claim_part(s, aid, 0, "gone-again", 30).outcome == "claimed"
    _set(world, AuditPart, [AuditPart.audit_id == aid, AuditPart.part == 0], heartbeat_at=_ago(60))
    result = sweep_once(celery, settings)
    assert aid in result.failed and len(celery.sent) == 1
    a = audit_row(world, aid)
    assert a.status == "failed" and a.error.startswith("part 0 (seed 0): the worker running this audit stopped")


def test_sweep_assembles_an_audit_nobody_assembled(world, monkeypatch):
    settings = world["settings"].model_copy(update={"stale_after_seconds": 1.0})
    aid, total = new_split_audit(world)
    # the last part's worker dies between marking its part succeeded and claiming the assembly
    monkeypatch.setattr(repo, "claim_assembly", lambda *a, **k: repo.Claim("skipped", "died"))
    assert execute_part(aid, 0, world["settings"], wid="w0") == "part succeeded"
    assert execute_part(aid, 1, world["settings"], wid="w1") == "part succeeded"
    monkeypatch.undo()
    assert audit_row(world, aid).status == "running"
    celery = FakeCelery(only=aid)
    sweep_once(celery, settings)
    assert celery.sent == []  # the audit's heartbeat is fresh: give the last part time to claim
    _set(world, Audit, [Audit.id == aid], heartbeat_at=_ago(60))
    sweep_once(celery, settings)
    sweep_once(celery, settings)  # one dispatch per stale period, however many sweepers
    assert celery.sent == [(TASK_ASSEMBLE, [aid])]
    # an assembler that vanished is released (attempts + 1) and the assembly dispatched again
    with world["sessions"]() as s:
        assert repo.claim_assembly(s, aid, "dead-assembler").acquired
    _set(world, Audit, [Audit.id == aid], heartbeat_at=_ago(60))
    sweep_once(celery, settings)
    a = audit_row(world, aid)
    assert celery.sent[-1] == (TASK_ASSEMBLE, [aid]) and a.claimed_by is None and a.attempts == 2
    assert execute_assembly(aid, world["settings"], wid="asm") == "succeeded"
    assert execute_assembly(aid, world["settings"], wid="asm2") == "skipped: audit is succeeded"
    a = audit_row(world, aid)
    assert a.status == "succeeded" and a.runs_done == total == len(open_report(world["settings"], aid, report_of(world, aid).body)["runs"])


# ---------------------------------------------------------------- the API


def test_api_queues_one_task_per_part(tmp_path):
    from kdaudit.service.app import create_app

    settings = h.embedded_settings(tmp_path, audit_parts=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = h.new_key(settings, "t")
        teacher = h.upload(client, key, h.make_teacher_file(tmp_path / "t.safetensors")).json()
        client.app.state.celery = celery = FakeCelery()
        r = client.post("/v1/audits", json=h.tiny_audit(teacher["id"], seeds=3), headers=h.auth(key))
        assert r.status_code == 202, r.text
        split = r.json()["id"]
        r = client.post("/v1/audits", json=h.tiny_audit(teacher["id"], seeds=1), headers=h.auth(key))
        whole = r.json()["id"]
        with session_factory(settings.resolved_database_url)() as s:
            assert [(p.part, p.seeds, p.status) for p in repo.list_parts(s, split)] == [
                (0, [0, 2], "queued"), (1, [1], "queued")
            ]  # fmt: skip
            assert repo.list_parts(s, whole) == []
        assert celery.sent == [(TASK_RUN_PART, [split, 0]), (TASK_RUN_PART, [split, 1]), (TASK_RUN_AUDIT, [whole])]
        # cancelling a queued split audit cancels its parts
        r = client.post(f"/v1/audits/{split}/cancel", headers=h.auth(key))
        assert r.status_code == 202 and r.json()["status"] == "cancelled"
        with session_factory(settings.resolved_database_url)() as s:
            assert {p.status for p in repo.list_parts(s, split)} == {"cancelled"}
