"""Store: migrations == models, atomic claim under contention, idempotency, file store."""

from __future__ import annotations

import threading

import pytest

from kdaudit.store import migrate, repo  # noqa: E402
from kdaudit.store.db import session_factory  # noqa: E402
from kdaudit.store.files import FileStore  # noqa: E402
from tests.helpers.schema import schema_diff


@pytest.fixture()
def url(tmp_path) -> str:
    u = f"sqlite:///{tmp_path / 'k.db'}"
    migrate.upgrade(u)
    return u


@pytest.fixture()
def audit_id(url) -> str:
    with session_factory(url)() as s:
        t = repo.get_or_create_tenant(s, "t")
        teacher = repo.add_teacher(
            s, t.id, sha256="a" * 64, filename="f", architecture="cnn-8-8-8-16", dataset="digits",
            num_classes=10, in_channels=1, format="safetensors", parameters=1, size_bytes=1,
        )  # fmt: skip
        a, created = repo.create_audit(
            s, tenant_id=t.id, teacher_id=teacher.id, config={}, runs_total=3, epochs=1, request_hash="h"
        )
        assert created
        return a.id


def test_sqlite_migrations_match_models(url):
    assert migrate.current_revision(url) == migrate.head_revision()
    assert schema_diff(url) == []


def test_claim_is_atomic_under_contention(url, audit_id):
    results: list[str] = []
    barrier = threading.Barrier(6)

    def claim(i: int) -> None:
        with session_factory(url)() as s:
            barrier.wait()
            results.append(repo.claim_audit(s, audit_id, f"w{i}", 60).outcome)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["claimed"] + ["skipped"] * 5


def test_idempotency_key(url, audit_id):
    with session_factory(url)() as s:
        a = repo.get_audit(s, None, audit_id)
        kw = dict(tenant_id=a.tenant_id, teacher_id=a.teacher_id, config={}, runs_total=1, epochs=1)
        first, c1 = repo.create_audit(s, **kw, request_hash="x", idempotency_key="k1")
        again, c2 = repo.create_audit(s, **kw, request_hash="x", idempotency_key="k1")
        assert c1 and not c2 and first.id == again.id
        with pytest.raises(repo.IdempotencyConflict):
            repo.create_audit(s, **kw, request_hash="y", idempotency_key="k1")
        other = repo.get_or_create_tenant(s, "other")
        kw["tenant_id"] = other.id  # keys are per tenant
        _, c3 = repo.create_audit(s, **kw, request_hash="x", idempotency_key="k1")
        assert c3


def test_record_run_is_idempotent(url, audit_id):
    rec = {"kind": "scratch", "student": "s", "seed": 0, "test_accuracy": 50.0}
    with session_factory(url)() as s:
        assert repo.record_run(s, audit_id, "scratch/s/seed0", rec)
        assert not repo.record_run(s, audit_id, "scratch/s/seed0", rec)
        assert repo.get_audit(s, None, audit_id).runs_done == 1


def test_api_key_roundtrip(url):
    with session_factory(url)() as s:
        key, row = repo.create_api_key(s, "acme")
        assert key.startswith("kda_") and len(key) > 40 and row.key_hash != key
        assert repo.tenant_for_key(s, key).name == "acme"
        assert repo.tenant_for_key(s, key + "x") is None
        assert repo.revoke_key(s, key) and repo.tenant_for_key(s, key) is None


def test_file_store_is_content_addressed(tmp_path):
    fs = FileStore(tmp_path / "files")
    sha, p1 = fs.put_bytes(b"hello")
    sha2, p2 = fs.put_bytes(b"hello")
    assert sha == sha2 and p1 == p2 and p1.read_bytes() == b"hello"
    assert p1.relative_to(fs.root).parts == (sha[:2], sha[2:4], sha)
    assert list(fs.tmp_dir.iterdir()) == []
    with pytest.raises(ValueError):
        fs.path_for("../../etc/passwd")
