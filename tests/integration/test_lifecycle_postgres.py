"""Owners' data on the production stack: PostgreSQL + Redis + a real Celery worker process, the
storage key given in the environment (KDAUDIT_STORAGE_KEYS) rather than a key file. The same
scenarios as test_lifecycle.py (tests/helpers/lifecycle_scenarios.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.helpers import lifecycle_scenarios as sc  # noqa: E402
from tests.helpers import service as h  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    h.require("PostgreSQL", h.check_postgres)
    h.require("Redis", h.check_redis)
    from pydantic import SecretStr

    from kdaudit.service.app import create_app
    from kdaudit.store import migrate
    from kdaudit.store.crypto import new_key
    from kdaudit.store.db import session_factory

    root = tmp_path_factory.mktemp("lifecycle-pg")
    name, url = h.create_database("kdaudit_lifecycle")
    settings = h.production_settings(root, url, heartbeat_seconds=1.0, storage_keys=SecretStr(new_key()))
    try:
        migrate.upgrade(url)
        log = root / "worker.log"
        worker = h.start_worker(settings, log)  # gets the storage key through its environment
        try:
            with TestClient(create_app(settings), raise_server_exceptions=False) as client:
                yield {"client": client, "settings": settings, "log": log, "root": root,
                       "sessions": session_factory(url)}  # fmt: skip
        finally:
            print(h.stop_worker(worker, log)[-5000:])
    finally:
        h.drop_database(name)


@pytest.mark.parametrize("scenario", sc.SHARED, ids=lambda f: f.__name__)
def test_shared_scenario(stack, tmp_path, scenario):
    scenario(stack, tmp_path)


def test_stored_files_and_reports_are_sealed(stack, tmp_path):
    sc.stored_files_and_reports_are_sealed(stack, tmp_path)
    assert not (stack["settings"].data_dir / "storage.key").exists()  # the key came from the environment
