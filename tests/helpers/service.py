"""Shared helpers for the service/store/worker tests (imported by path: tests/ is not a package).

Integration tests use the real PostgreSQL and Redis on the machine. When one is down they
are skipped with the reason -- except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_URL = os.environ.get("KDAUDIT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KDAUDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEACHER_ARCH = "cnn-8-8-8-16"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(what: str, check: Callable[[], None]) -> None:
    """Skip (or fail, in CI) when a service the test needs is unreachable."""
    try:
        check()
    except Exception as e:
        msg = f"{what} is unreachable ({type(e).__name__}: {e})"
        if in_ci():
            pytest.fail(f"{msg}; CI=true requires it")
        pytest.skip(f"{msg}; start it or set CI=true to make this a failure")


def check_postgres() -> None:
    import psycopg

    with psycopg.connect(_libpq(PG_ADMIN_URL), connect_timeout=3) as conn:
        conn.execute("SELECT 1")


def check_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def create_database(prefix: str = "kdaudit_test") -> tuple[str, str]:
    """CREATE DATABASE <prefix>_<random>; returns (name, SQLAlchemy URL)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    import psycopg

    from kdaudit.store.db import dispose_all

    dispose_all()
    with psycopg.connect(_libpq(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_teacher_file(path: Path, arch: str = TEACHER_ARCH, seed: int = 0) -> Path:
    """A random-weight teacher for the digits dataset (fine for plumbing tests)."""
    import torch

    from kdaudit.models.checkpoints import save_teacher
    from kdaudit.models.registry import build_model

    torch.manual_seed(seed)
    save_teacher(build_model(arch, 10, 1), path)
    return path


def make_trained_teacher_file(path: Path, arch: str = TEACHER_ARCH, seed: int = 0, epochs: int = 5) -> Path:
    """A digits teacher trained briefly on kdaudit's own normalisation: passes the sanity gate
    (far above chance), for tests that go through the UI, which has no `force` switch."""
    import torch
    import torch.nn.functional as F

    from kdaudit.distill.data import load_splits
    from kdaudit.models.checkpoints import save_teacher
    from kdaudit.models.registry import build_model

    torch.manual_seed(seed)
    splits = load_splits("digits")
    model = build_model(arch, 10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(splits.x_train)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(splits.x_train[idx]), splits.y_train[idx]).backward()
            opt.step()
    model.eval()
    save_teacher(model, path)
    return path


def tiny_audit(teacher_id: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "teacher_id": teacher_id,
        "students": ["cnn-4-8-8-16"],
        "attacks": ["normal_kd", "skeptical"],
        "seeds": 1,
        "epochs": 1,
        "device": "cpu",
        "force": True,  # make_teacher_file's teacher has random weights: past the sanity gate (distill/gate.py)
    }
    body.update(over)
    return body


def upload(client, key: str, path: Path, arch: str = TEACHER_ARCH, dataset: str = "digits", **form: str):
    with open(path, "rb") as fh:
        return client.post(
            "/v1/teachers",
            headers={"Authorization": f"Bearer {key}"},
            data={"architecture": arch, "dataset": dataset, **form},
            files={"file": (path.name, fh, "application/octet-stream")},
        )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(settings, tenant: str) -> str:
    from kdaudit.store import migrate, repo
    from kdaudit.store.db import session_factory

    migrate.upgrade(settings.resolved_database_url)
    with session_factory(settings.resolved_database_url)() as session:
        key, _ = repo.create_api_key(session, tenant)
    return key


def start_worker(settings, log_path: Path) -> subprocess.Popen:
    """A real Celery worker process (`celery -A kdaudit.workers.app worker --pool solo`)."""
    from kdaudit.worker_process import start_worker_process

    return start_worker_process(settings, log_file=log_path)


def stop_worker(proc: subprocess.Popen, log_path: Path | None = None) -> str:
    from kdaudit.worker_process import stop_process

    stop_process(proc, timeout=20)
    return log_path.read_text(errors="replace") if log_path and log_path.exists() else ""


def wait_status(get: Callable[[], dict[str, Any]], statuses: tuple[str, ...], timeout: float, poll: float = 0.3) -> dict:
    deadline = time.monotonic() + timeout
    doc = get()
    while doc["status"] not in statuses:
        if time.monotonic() > deadline:
            raise AssertionError(f"status still {doc['status']} after {timeout}s: {doc}")
        time.sleep(poll)
        doc = get()
    return doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python() -> str:
    return sys.executable


def embedded_settings(root: Path, **overrides: Any):
    """ServiceSettings for an embedded (SQLite + filesystem broker) app under `root`, own queue."""
    import uuid

    from kdaudit.store.settings import ServiceSettings

    base: dict[str, Any] = {
        "data_dir": root / "data", "database_url": None, "broker_url": None, "storage_dir": None,
        "auto_migrate": True, "queue": f"kdaudit-test-{uuid.uuid4().hex[:8]}",
    }
    return ServiceSettings(**{**base, **overrides})


def production_settings(root: Path, database_url: str, **overrides: Any):
    """ServiceSettings for the real PostgreSQL + Redis stack under `root`, with its own queue
    (never steal other runs' tasks); migrations are the test's job."""
    return embedded_settings(root, database_url=database_url, broker_url=REDIS_URL,
                             storage_dir=root / "teachers", auto_migrate=False, **overrides)


def worker_world(root: Path, **settings_over: Any) -> dict[str, Any]:
    """An embedded store, migrated, holding one tenant ("acme") and one digits teacher file:
    what the worker-task tests run audits against."""
    from kdaudit.store import migrate, repo
    from kdaudit.store.db import session_factory
    from kdaudit.store.files import FileStore, sha256_file

    settings = embedded_settings(root, **settings_over)
    migrate.upgrade(settings.resolved_database_url)
    src = make_teacher_file(root / "t.safetensors")
    sha = sha256_file(src)
    store = FileStore(settings.resolved_storage_dir)
    tmp = store.new_temp()
    tmp.write_bytes(src.read_bytes())
    store.adopt(tmp, sha)
    sessions = session_factory(settings.resolved_database_url)
    with sessions() as s:
        tenant = repo.get_or_create_tenant(s, "acme")
        teacher = repo.add_teacher(
            s, tenant.id, sha256=sha, filename="t.safetensors", architecture=TEACHER_ARCH, dataset="digits",
            num_classes=10, in_channels=1, format="safetensors", parameters=1, size_bytes=src.stat().st_size,
        )  # fmt: skip
    return {"settings": settings, "sessions": sessions, "tenant": tenant.id, "teacher": teacher, "root": root}


PROBLEM = "application/problem+json"


def problem(r, status: int) -> dict:
    """An RFC 9457 problem answer with this status: typed, titled, no traceback; its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    doc = r.json()
    assert doc["status"] == status and doc["title"] and "type" in doc
    assert "Traceback" not in r.text
    return doc


def api_with_teacher(settings, root: Path, tenant: str):
    """An in-process API client with one tenant's key and one uploaded (random) teacher: the
    starting point of the limit and hardening tests."""
    from fastapi.testclient import TestClient

    from kdaudit.service.app import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = new_key(settings, tenant)
        r = upload(client, key, make_teacher_file(root / "t.safetensors"))
        assert r.status_code == 201, r.text
        yield {"client": client, "key": key, "teacher": r.json()["id"], "settings": settings, "root": root}


def wait_until_serving(url: str, proc: subprocess.Popen, log: Path, path: str = "/readyz", timeout: float = 90) -> None:
    """Poll `url + path` until it answers 200; fail with the server's log if it exits or takes too long."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
