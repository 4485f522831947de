"""Owners' data on the embedded stack (SQLite + filesystem broker + a real worker process):
delete, encryption at rest, rotation, the access trail, key expiry/revocation (issue 20), and
retention by the sweep. The same scenarios run on PostgreSQL + Redis in
test_lifecycle_postgres.py (tests/helpers/lifecycle_scenarios.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.helpers import lifecycle_scenarios as sc  # noqa: E402
from tests.helpers import service as h  # noqa: E402


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from kdaudit.service.app import create_app
    from kdaudit.store import migrate
    from kdaudit.store.db import session_factory

    root = tmp_path_factory.mktemp("lifecycle")
    settings = h.embedded_settings(root, heartbeat_seconds=1.0)
    migrate.upgrade(settings.resolved_database_url)
    log = root / "worker.log"
    worker = h.start_worker(settings, log)
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield {"client": client, "settings": settings, "log": log, "root": root,
                   "sessions": session_factory(settings.resolved_database_url)}  # fmt: skip
    finally:
        print(h.stop_worker(worker, log)[-5000:])


@pytest.mark.parametrize("scenario", sc.SHARED, ids=lambda f: f.__name__)
def test_shared_scenario(stack, tmp_path, scenario):
    scenario(stack, tmp_path)


def test_stored_files_and_reports_are_sealed(stack, tmp_path):
    sc.stored_files_and_reports_are_sealed(stack, tmp_path)
    key = stack["settings"].data_dir / "storage.key"  # embedded default: created on first use, 0600
    assert key.is_file() and key.stat().st_mode & 0o777 == 0o600


def test_retention_sweep_deletes_old_teachers_and_reports(tmp_path):
    """teacher_retention_days / report_retention_days, enforced by the periodic sweep; with
    neither set nothing is deleted; leftovers of deleted audits (checkpoints) go too."""
    from datetime import timedelta

    from sqlalchemy import update

    from kdaudit.store import events, repo
    from kdaudit.store.models import Audit, Teacher, Tombstone, utcnow
    from kdaudit.workers.sweep import sweep_retention

    world = h.worker_world(tmp_path)
    settings, sessions, teacher = world["settings"], world["sessions"], world["teacher"]
    with sessions() as s:
        audit, _ = repo.create_audit(s, tenant_id=world["tenant"], teacher_id=teacher.id, config={}, runs_total=1,
                                     epochs=1, request_hash="x")  # fmt: skip
        s.execute(update(Audit).where(Audit.id == audit.id).values(status="succeeded", finished_at=utcnow() - timedelta(days=3)))
        s.commit()
    stray = settings.data_dir / "checkpoints" / "deleted-audit"
    stray.mkdir(parents=True)
    (stray / "seed0.pt").write_bytes(b"x")
    assert sweep_retention(settings).audits == [] and not stray.exists()  # kept by default; stray removed
    done = sweep_retention(settings.model_copy(update={"report_retention_days": 2.0}))
    assert done.audits == [audit.id] and done.teachers == []
    with sessions() as s:
        assert s.get(Audit, audit.id) is None and s.get(Tombstone, audit.id).reason == "retention"
        s.execute(update(Teacher).where(Teacher.id == teacher.id).values(created_at=utcnow() - timedelta(days=10)))
        s.commit()
    assert sweep_retention(settings.model_copy(update={"teacher_retention_days": 30.0})).teachers == []
    done = sweep_retention(settings.model_copy(update={"teacher_retention_days": 7.0}))
    assert done.teachers == [teacher.id]
    assert not settings.resolved_storage_dir.joinpath(teacher.sha256[:2], teacher.sha256[2:4], teacher.sha256).exists()
    with sessions() as s:
        trail, _ = events.list_events(s, world["tenant"], 100, 0)
    assert sorted((e.action, e.actor, e.key_id) for e in trail) == [
        ("audit.delete", "retention", None), ("teacher.delete", "retention", None)]


def test_cli_delete_and_events(stack, tmp_path, monkeypatch, capsys):
    """`kdaudit delete teacher|audit ID [--cancel]` and `kdaudit events`, against the app in this
    process (the CLI's httpx client pointed at it)."""
    from kdaudit import client_commands
    from kdaudit.cli import main
    from kdaudit.service.client import Client

    key, key_id = sc.key_for(stack, "kim")
    t = sc.upload_ok(stack, key, h.make_teacher_file(tmp_path / "cli.safetensors", seed=17))
    c = stack["client"]
    r = c.post("/v1/audits", json=h.tiny_audit(t["id"], attacks=["normal_kd"], epochs=400, force=True), headers=h.auth(key))
    aid = r.json()["id"]

    def client(args):
        api = Client("http://testserver", args.api_key)
        api._http = TestClient(c.app, base_url="http://testserver", headers={"Authorization": f"Bearer {args.api_key}"})
        return api

    monkeypatch.setattr(client_commands, "api_client", client)
    assert main(["delete", "teacher", t["id"], "--api-key", key]) == 1  # its audit is queued or running
    assert "cancel" in capsys.readouterr().err
    assert main(["delete", "audit", aid, "--api-key", key, "--cancel"]) == 0
    assert main(["delete", "teacher", t["id"], "--api-key", key]) == 0
    assert main(["delete", "teacher", t["id"], "--api-key", key]) == 1  # already gone: 404
    capsys.readouterr()
    assert main(["events", "--api-key", key]) == 0
    out = capsys.readouterr().out
    assert out.count("teacher.delete") == 1 and out.count("audit.delete") == 1 and f"key={key_id}" in out
    assert c.get(f"/v1/teachers/{t['id']}", headers=h.auth(key)).status_code == 404
