"""Quotas and rate limits: each refusal is a 4xx problem naming the limit. Also request ids
(echoed, generated, in problem bodies) and strict query parameters."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kdaudit.service.app import create_app  # noqa: E402
from kdaudit.service.limits import (  # noqa: E402
    MemoryRateLimiter,
    RedisRateLimiter,
    estimate_teacher_queries,
    make_rate_limiter,
)
from kdaudit.store.settings import ServiceSettings  # noqa: E402
from tests.helpers import service as h  # noqa: E402


def _settings(root: Path, **over) -> ServiceSettings:
    base = dict(
        data_dir=root / "data",
        database_url=None,
        broker_url=None,
        auto_migrate=True,
        queue=f"kdaudit-limits-{uuid.uuid4().hex[:8]}",
        max_concurrent_audits_per_tenant=2,
        max_runs_per_audit=12,
        max_teacher_queries_per_audit=1_000_000,
        rate_limit_per_second=0,
    )
    base.update(over)
    return ServiceSettings(**base)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    yield from h.api_with_teacher(_settings(root), root, "quota")



def test_runs_per_audit(env):
    c, key, t = env["client"], env["key"], env["teacher"]
    # 5 seeds x 1 student x (scratch + label smoothing + 2 attacks) = 20 runs > 12
    doc = h.problem(c.post("/v1/audits", json=h.tiny_audit(t, seeds=5), headers=h.auth(key)), 422)
    assert doc["limit"] == "max_runs_per_audit" and doc["limit_value"] == 12 and doc["requested"] == 20
    assert "max_runs_per_audit" in doc["detail"] and doc["type"].endswith("limit-exceeded")


def test_teacher_queries_per_audit(env):
    c, key, t = env["client"], env["key"], env["teacher"]
    body = h.tiny_audit(t, seeds=2, epochs=500)  # digits: 1080 images x 500 epochs x 4 KD runs
    doc = h.problem(c.post("/v1/audits", json=body, headers=h.auth(key)), 422)
    assert doc["limit"] == "max_teacher_queries_per_audit" and doc["requested"] == 1080 * 500 * 4
    assert "max_teacher_queries_per_audit" in doc["detail"]


def test_query_estimate_follows_the_plan():
    cfg = {"teacher_arch": "resnet18", "dataset": "cifar10", "val_fraction": 0.1, "fraction": 0.5, "schedule": {"epochs": 10},
           "attacks": ["normal_kd", "skeptical"], "seeds": 3, "students": ["cnn-4-8-8-16", "mobilenetv2"]}  # fmt: skip
    assert estimate_teacher_queries(cfg) == 22_500 * 10 * (3 * 2 * 2)
    assert estimate_teacher_queries({**cfg, "attacks": ["normal_kd"]}) == 22_500 * 10 * 6
    # a sweep point at 10% of the data adds its KD runs at its own size; a budget caps every run
    swept = {**cfg, "attacks": ["normal_kd"], "sweep": {"fractions": [0.1]}}
    assert estimate_teacher_queries(swept) == 22_500 * 10 * 6 + 4_500 * 10 * 6
    assert estimate_teacher_queries({**swept, "threat": {"query_budget": 50_000}}) == 50_000 * 6 + 45_000 * 6


def test_concurrent_audits_per_tenant(env):
    c, key, t = env["client"], env["key"], env["teacher"]
    ids = []
    for i in range(2):
        r = c.post("/v1/audits", json=h.tiny_audit(t), headers={**h.auth(key), "Idempotency-Key": f"conc-{i}"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    r = c.post("/v1/audits", json=h.tiny_audit(t), headers=h.auth(key))
    doc = h.problem(r, 429)
    assert doc["limit"] == "max_concurrent_audits_per_tenant" and doc["limit_value"] == 2
    assert "max_concurrent_audits_per_tenant" in doc["detail"] and int(r.headers["retry-after"]) >= 1
    # a replay of an accepted submit is still answered (same audit), not refused
    r = c.post("/v1/audits", json=h.tiny_audit(t), headers={**h.auth(key), "Idempotency-Key": "conc-0"})
    assert r.status_code == 202 and r.json()["id"] == ids[0]
    # another tenant is not affected
    other = h.new_key(env["settings"], "other-tenant")
    assert h.problem(c.post("/v1/audits", json=h.tiny_audit(t), headers=h.auth(other)), 404)
    # cancelling one frees a slot
    assert c.post(f"/v1/audits/{ids[0]}/cancel", headers=h.auth(key)).status_code == 202
    assert c.post("/v1/audits", json=h.tiny_audit(t), headers=h.auth(key)).status_code == 202


def test_rate_limit_per_key(tmp_path):
    settings = _settings(tmp_path, rate_limit_per_second=1.0, rate_limit_burst=5)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        key, other = h.new_key(settings, "a"), h.new_key(settings, "b")
        codes = [c.get("/v1/audits", headers=h.auth(key)).status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3
        r = c.get("/v1/audits", headers=h.auth(key))
        doc = h.problem(r, 429)
        assert doc["limit"] == "rate_limit_per_second" and doc["limit_value"] == 1.0 and doc["burst"] == 5
        assert int(r.headers["retry-after"]) >= 1
        assert c.get("/v1/audits", headers=h.auth(other)).status_code == 200  # per key
        assert c.get("/healthz").status_code == 200  # health is not rate limited
        time.sleep(1.1)
        assert c.get("/v1/audits", headers=h.auth(key)).status_code == 200  # refilled


def test_memory_bucket_refills():
    lim = MemoryRateLimiter(rate=100.0, burst=2)
    assert lim.hit("k")[0] and lim.hit("k")[0] and not lim.hit("k")[0]
    time.sleep(0.03)
    assert lim.hit("k")[0]


def test_redis_bucket_is_shared_between_processes(tmp_path):
    h.require("Redis", h.check_redis)
    settings = _settings(tmp_path, broker_url=h.REDIS_URL, rate_limit_per_second=0.5, rate_limit_burst=3)
    a, b = make_rate_limiter(settings), make_rate_limiter(settings)  # two API processes
    assert isinstance(a, RedisRateLimiter)
    key = uuid.uuid4().hex
    results = [a.hit(key)[0], b.hit(key)[0], a.hit(key)[0], b.hit(key)[0]]
    assert results == [True, True, True, False]
    # an unreachable Redis fails open (logged), it does not take the API down
    dead = RedisRateLimiter(1.0, 1, "redis://127.0.0.1:1/0")
    assert dead.hit(key)[0] and dead.hit(key)[0]


def test_request_id_is_echoed_and_logged(env, caplog):
    import logging

    c, key = env["client"], env["key"]
    with caplog.at_level(logging.INFO, logger="kdaudit.access"):
        r = c.get("/v1/audits", headers={**h.auth(key), "X-Request-ID": "trace-abc.123"})
    assert r.headers["x-request-id"] == "trace-abc.123"
    assert any("request_id=trace-abc.123" in m and "/v1/audits 200" in m for m in caplog.messages)
    assert any(getattr(rec, "request_id", None) == "trace-abc.123" for rec in caplog.records)
    # generated when absent or malformed; problem bodies carry it too
    r = c.get("/v1/audits/nope!", headers={**h.auth(key), "X-Request-ID": "bad id\twith spaces"})
    rid = r.headers["x-request-id"]
    assert len(rid) == 32 and h.problem(r, 422)["request_id"] == rid
    assert c.get("/healthz").headers["x-request-id"]


def test_unknown_query_parameters_are_refused(env):
    c, key = env["client"], env["key"]
    doc = h.problem(c.get("/v1/audits?limt=5", headers=h.auth(key)), 422)
    assert "'limt'" in doc["detail"] and "limit" in doc["detail"]
    assert c.get("/v1/audits?limit=5&offset=0&status=queued", headers=h.auth(key)).status_code == 200
    h.problem(c.get("/v1/audits?offset=10000000000", headers=h.auth(key)), 422)


def test_unexpected_error_is_a_problem_without_traceback(env, monkeypatch):
    from kdaudit.store import repo

    def boom(*a, **k):
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(repo, "list_teachers", boom)
    r = env["client"].get("/v1/teachers", headers=h.auth(env["key"]))
    doc = h.problem(r, 500)
    assert "secret" not in r.text and "Traceback" not in r.text
    assert doc["request_id"] == r.headers["x-request-id"] and doc["request_id"] in doc["detail"]
