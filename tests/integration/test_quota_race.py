"""The concurrent-audit quota holds under a burst of parallel submits, on SQLite (the embedded
default) and on PostgreSQL: 20 submits at once against a limit of 10 accept exactly 10.

Each submit runs in its own thread with its own session, as the API's threadpool does; a
barrier releases them together so their count-then-insert windows overlap."""

from __future__ import annotations

import threading

import pytest

from kdaudit.store import migrate, repo  # noqa: E402
from kdaudit.store.db import session_factory  # noqa: E402
from tests.helpers import service as h  # noqa: E402

LIMIT, SUBMITS = 10, 20


def _burst(url: str) -> tuple[int, int, int]:
    """(accepted, refused, active rows) after SUBMITS parallel create_audit calls."""
    sessions = session_factory(url)
    with sessions() as s:
        tenant = repo.get_or_create_tenant(s, "racer")
        teacher = repo.add_teacher(
            s, tenant.id, sha256="0" * 64, filename="t", architecture=h.TEACHER_ARCH, dataset="digits",
            num_classes=10, in_channels=1, format="safetensors", parameters=1, size_bytes=1,
        )  # fmt: skip
    barrier = threading.Barrier(SUBMITS)
    results: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        with sessions() as s:
            repo.get_teacher(s, tenant.id, teacher.id)  # what the route reads first
            s.commit()  # gives the pooled connection back, as the route does before waiting
            barrier.wait(30)
            try:
                repo.create_audit(s, tenant_id=tenant.id, teacher_id=teacher.id, config={"n": i}, runs_total=1,
                                  epochs=1, request_hash=str(i), max_active=LIMIT)  # fmt: skip
                outcome = "accepted"
            except repo.ActiveLimit:
                outcome = "refused"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(SUBMITS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with sessions() as s:
        active = repo.count_active(s, tenant.id)
    return results.count("accepted"), results.count("refused"), active


def test_sqlite_quota_is_atomic(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    migrate.upgrade(url)
    accepted, refused, active = _burst(url)
    assert (accepted, refused, active) == (LIMIT, SUBMITS - LIMIT, LIMIT)


@pytest.mark.integration
def test_postgres_quota_is_atomic():
    h.require("PostgreSQL", h.check_postgres)
    name, url = h.create_database("kdaudit_race")
    try:
        migrate.upgrade(url)
        accepted, refused, active = _burst(url)
        assert (accepted, refused, active) == (LIMIT, SUBMITS - LIMIT, LIMIT)
    finally:
        h.drop_database(name)
