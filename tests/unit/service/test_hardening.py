"""Issue 14, section 2: each red-team finding reproduced against the live app, and refused.

Embedded stack (SQLite + filesystem broker) through FastAPI's TestClient; the quota race on
SQLite and PostgreSQL is tests/test_quota_race.py, the key cache under load
benchmarks/load_status.py."""

from __future__ import annotations

import ipaddress
import os
import threading
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from kdaudit.service.app import create_app  # noqa: E402
from kdaudit.store.db import get_engine  # noqa: E402
from tests.helpers import service as h  # noqa: E402


def _settings(root: Path, **over):
    base = dict(rate_limit_per_second=0, max_concurrent_audits_per_tenant=50, auth_lookups_per_second_per_address=0,
                sweep_in_api=False)  # no background queries while statements are counted
    return h.embedded_settings(root, **{**base, **over})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    yield from h.api_with_teacher(_settings(root, operator_tenants="ops", max_compute_flops_per_tenant=3e12), root, "tenant-a")



class _Queries:
    """Counts the SQL statements an engine runs (to prove a refusal costs no lookup)."""

    def __init__(self, url: str) -> None:
        self.n = 0
        self.statements: list[str] = []
        self.engine = get_engine(url)

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)

    def _count(self, conn, cursor, statement, *args, **kwargs) -> None:
        self.n += 1
        self.statements.append(statement[:120])


# ---------------------------------------------------------------- 1. bounded metric labels


def test_made_up_methods_do_not_grow_metrics(env):
    c = env["client"]
    size = lambda: len(c.get("/metrics").text)  # noqa: E731
    for i in range(20):  # warm: the series of a made-up method on a route and on no route
        c.request(f"X{i}", "/healthz")
        c.request(f"Y{i}", f"/warm/{i}")
    size()  # the first scrape adds its own series
    before = size()
    for i in range(500):
        c.request(f"M{uuid.uuid4().hex[:12]}", f"/nowhere/{i}")
    after = size()
    text = c.get("/metrics").text
    assert after - before < 300, (before, after)  # digits of the counters only: no new series
    assert 'method="other"' in text and "/nowhere" not in text and "M" + "0" * 3 not in text


# ---------------------------------------------------------------- 2. student size and compute


def test_huge_students_refused_naming_the_limit(env):
    c, key, t = env["client"], env["key"], env["teacher"]
    body = h.tiny_audit(t, students=["cnn-4096-4096-4096-4096"] * 1 + [f"cnn-4096-4096-4096-{4096 - i}" for i in range(1, 8)],
                        epochs=1000)  # fmt: skip
    doc = h.problem(c.post("/v1/audits", json=body, headers=h.auth(key)), 422)
    assert doc["limit"] == "max_student_parameters" and doc["requested"] > 400_000_000
    assert "max_student_parameters" in doc["detail"]


def test_total_parameters_and_compute_per_audit(tmp_path):
    settings = _settings(tmp_path, max_total_student_parameters=20_000, max_compute_flops_per_audit=1e11)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        key = h.new_key(settings, "sizes")
        t = h.upload(c, key, h.make_teacher_file(tmp_path / "t.safetensors")).json()["id"]
        many = h.tiny_audit(t, seeds=3)  # 3 seeds x (scratch, ls, kd, skeptical) x 2,294 parameters
        doc = h.problem(c.post("/v1/audits", json=many, headers=h.auth(key)), 422)
        assert doc["limit"] == "max_total_student_parameters" and doc["requested"] > 20_000
        long = h.tiny_audit(t, epochs=1000)  # ~69k FLOPs a forward x 3 x 1,080 images x 1,000 epochs x 4 runs
        doc = h.problem(c.post("/v1/audits", json=long, headers=h.auth(key)), 422)
        assert doc["limit"] == "max_compute_flops_per_audit" and doc["requested"] > 1e11
        assert c.post("/v1/audits", json=h.tiny_audit(t), headers=h.auth(key)).status_code == 202


def test_compute_per_tenant_counts_queued_audits(env):
    c = env["client"]
    key = h.new_key(env["settings"], "tenant-compute")  # limit 3e12 FLOPs; this audit ~1.4e12
    t = h.upload(c, key, h.make_teacher_file(env["root"] / "t2.safetensors")).json()["id"]
    body = h.tiny_audit(t, students=["cnn-16-32-32-64"], epochs=100)
    assert c.post("/v1/audits", json=body, headers=h.auth(key)).status_code == 202
    assert c.post("/v1/audits", json=body, headers=h.auth(key)).status_code == 202
    r = c.post("/v1/audits", json=body, headers=h.auth(key))
    doc = h.problem(r, 429)
    assert doc["limit"] == "max_compute_flops_per_tenant" and "Retry-After" in r.headers


def test_cli_warns_with_the_same_limits():
    from kdaudit.core.settings import Settings
    from kdaudit.distill.budget import size_warnings
    from kdaudit.distill.config import AuditConfig

    cfg = AuditConfig(teacher_arch="cnn-8-8-8-16", dataset="cifar10", students=["cnn-4096-4096-4096-4096"], seeds=1,
                      schedule={"epochs": 1000}).model_dump(mode="json")  # fmt: skip
    found = size_warnings(cfg, Settings())
    assert any("max_student_parameters" in w for w in found) and any("max_compute_flops_per_audit" in w for w in found)
    assert size_warnings(AuditConfig(teacher_arch="cnn-8-8-8-16", seeds=1).model_dump(mode="json"), Settings()) == []


# ---------------------------------------------------------------- 3. loader children


def test_parallel_uploads_are_bounded(tmp_path):
    settings = _settings(tmp_path, max_concurrent_loaders=1, max_concurrent_loaders_per_tenant=1)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        key = h.new_key(settings, "uploader")
        path = h.make_teacher_file(tmp_path / "t.safetensors")
        gate = app.state.loader_gate
        peak, stop = [0], threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], gate.running)

        watcher = threading.Thread(target=watch)
        watcher.start()
        statuses: list[int] = []
        retry: list[str | None] = []

        def one() -> None:
            r = h.upload(c, key, path)
            statuses.append(r.status_code)
            if r.status_code == 429:
                retry.append(r.headers.get("Retry-After"))
                assert r.json()["limit"] in ("max_concurrent_loaders", "max_concurrent_loaders_per_tenant")

        threads = [threading.Thread(target=one) for _ in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        stop.set()
        watcher.join()
        assert peak[0] <= 1
        assert 201 in statuses and set(statuses) <= {201, 429}
        # and deterministically: with the tenant's slot held, an upload is refused at once
        tenant_id = statuses and _tenant_id(settings, "uploader")
        with gate.slot(tenant_id):
            doc = h.problem(h.upload(c, key, path), 429)
        assert doc["limit"] == "max_concurrent_loaders_per_tenant"


def _tenant_id(settings, name: str) -> str:
    from kdaudit.store import keys
    from kdaudit.store.db import session_factory

    with session_factory(settings.resolved_database_url)() as s:
        return keys.tenant_by_name(s, name).id


# ---------------------------------------------------------------- 5. selftest is for operators, on a worker


def test_selftest_needs_an_operator_and_is_queued(env):
    c = env["client"]
    doc = h.problem(c.post("/v1/selftest", headers=h.auth(env["key"])), 403)
    assert doc["setting"] == "operator_tenants"
    assert c.get("/v1/selftest", headers=h.auth(env["key"])).status_code in (404, 405)
    ops = h.new_key(env["settings"], "ops")
    queue = env["settings"].data_dir / "broker" / "queue"
    before = set(os.listdir(queue))
    r = c.post("/v1/selftest", headers=h.auth(ops))
    assert r.status_code == 202, r.text
    assert c.get(r.headers["Location"], headers=h.auth(ops)).json()["status"] == "queued"  # no worker here: not run
    assert set(os.listdir(queue)) - before  # the task went to the broker, not into this process
    h.problem(c.get(r.headers["Location"], headers=h.auth(env["key"])), 403)


# ---------------------------------------------------------------- 6. the rest


def test_checkpoints_of_failed_audits_are_removed(tmp_path):
    from kdaudit.store import migrate, repo
    from kdaudit.store.db import session_factory
    from kdaudit.store.models import Audit, utcnow
    from kdaudit.workers.checkpoint_gc import sweep_checkpoints

    world = h.worker_world(tmp_path, checkpoint_retention_seconds=3600)
    s = world["settings"]
    migrate.upgrade(s.resolved_database_url)
    ids = {}
    with session_factory(s.resolved_database_url)() as session:
        for name, status, age in [("old_failed", "failed", 7200), ("old_cancelled", "cancelled", 7200),
                                  ("new_failed", "failed", 60), ("running", "running", 0)]:  # fmt: skip
            a, _ = repo.create_audit(session, tenant_id=world["tenant"], teacher_id=world["teacher"].id, config={},
                                     runs_total=1, epochs=1, request_hash=name)  # fmt: skip
            row = session.get(Audit, a.id)
            row.status = status
            row.finished_at = utcnow() - timedelta(seconds=age) if status != "running" else None
            session.commit()
            ids[name] = a.id
            folder = s.data_dir / "checkpoints" / a.id
            folder.mkdir(parents=True)
            (folder / "seed0.pt").write_bytes(b"x" * 1024)
    removed = sweep_checkpoints(s)
    assert sorted(removed) == sorted([ids["old_failed"], ids["old_cancelled"]])
    left = {p.name for p in (s.data_dir / "checkpoints").iterdir()}
    assert left == {ids["new_failed"], ids["running"]}


def test_storage_quota_per_tenant(tmp_path):
    path = h.make_teacher_file(tmp_path / "t.safetensors")
    size = path.stat().st_size
    settings = _settings(tmp_path, max_storage_bytes_per_tenant=int(size * 1.5))
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        key = h.new_key(settings, "hoarder")
        assert h.upload(c, key, path).status_code == 201
        doc = h.problem(h.upload(c, key, path), 413)
        assert doc["limit"] == "max_storage_bytes_per_tenant" and doc["requested"] >= 2 * size
        other = h.new_key(settings, "someone-else")
        assert h.upload(c, other, path).status_code == 201  # per tenant


def test_invalid_key_flood_is_limited_by_address_without_lookups(tmp_path):
    settings = _settings(tmp_path, auth_lookups_per_second_per_address=0.5, auth_lookup_burst=5)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        good = h.new_key(settings, "real")
        assert c.get("/v1/audits", headers=h.auth(good)).status_code == 200  # cached from now on
        statuses = [c.get("/v1/audits", headers=h.auth(f"kda_fake{i}")).status_code for i in range(4)]
        assert statuses == [401] * 4
        with _Queries(settings.resolved_database_url) as q:
            r = [c.get("/v1/audits", headers=h.auth(f"kda_fake{i}x")) for i in range(20)]
        assert r[-1].status_code == 429 and r[-1].json()["limit"] == "auth_lookups_per_second_per_address"
        assert "Retry-After" in r[-1].headers
        assert sum(x.status_code == 401 for x in r) <= 2 and q.n <= 2 * 4  # refused ones cost no query
        assert c.get("/v1/audits", headers=h.auth(good)).status_code == 200  # a cached valid key still works


def test_key_cache_saves_lookups_and_knows_revocation(tmp_path):
    from kdaudit.store import keys
    from kdaudit.store.db import session_factory

    settings = _settings(tmp_path, auth_cache_seconds=30)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        key = h.new_key(settings, "poller")
        assert c.get("/v1/audits", headers=h.auth(key)).status_code == 200
        with _Queries(settings.resolved_database_url) as q:
            assert c.get("/v1/audits/" + "a" * 32, headers=h.auth(key)).status_code == 404
        assert q.n >= 1 and not any("api_keys" in st for st in q.statements), q.statements  # audit reads only
        with session_factory(settings.resolved_database_url)() as s:
            key_id = keys.list_keys(s, _tenant_id(settings, "poller"))[0].id
            keys.revoke_by_id(s, key_id)
        app.state.key_cache.forget_all()  # what a revocation in this process does
        assert c.get("/v1/audits", headers=h.auth(key)).status_code == 401


def test_docs_need_no_cdn_and_responses_carry_a_csp(env):
    c = env["client"]
    assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    r = c.get("/openapi.json")
    assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "cdn" not in c.get("/").text.lower()


def test_docs_served_from_local_assets(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "swagger-ui-bundle.js").write_text("/* local */")
    (assets / "swagger-ui.css").write_text("/* local */")
    with TestClient(create_app(_settings(tmp_path, docs_assets_dir=assets))) as c:
        r = c.get("/docs")
        assert r.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in r.text and "cdn" not in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert c.get("/docs-assets/swagger-ui.css").status_code == 200


@pytest.mark.parametrize("bad", [{"epochs": "1"}, {"epochs": True}, {"seeds": "2"}, {"schedule": {"epochs": "1"}},
                                 {"schedule": {"epochs": True}}, {"fraction": "0.5"}])  # fmt: skip
def test_strict_types_at_the_edge(env, bad):
    c, key, t = env["client"], env["key"], env["teacher"]
    body = {**h.tiny_audit(t), **bad}
    doc = h.problem(c.post("/v1/audits", json=body, headers=h.auth(key)), 422)
    assert doc["type"].endswith("validation-error")


def test_well_typed_body_still_accepted(env):
    body = h.tiny_audit(env["teacher"], schedule={"epochs": 1, "lr": 0.05}, fraction=0.5)
    r = env["client"].post("/v1/audits", json=body, headers=h.auth(env["key"]))
    assert r.status_code == 202, r.text


def test_fraction_leaving_a_handful_of_images_is_refused(env):
    c, key, t = env["client"], env["key"], env["teacher"]
    doc = h.problem(c.post("/v1/audits", json=h.tiny_audit(t, fraction=0.01), headers=h.auth(key)), 422)
    assert "images per class" in doc["detail"]
    doc = h.problem(c.post("/v1/audits", json=h.tiny_audit(t, sweep={"fractions": [0.02]}), headers=h.auth(key)), 422)
    assert "images per class" in doc["detail"]


@pytest.mark.parametrize("addr", ["64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:5", "2002:7f00:1::1",
                                  "2002:a9fe:a9fe::", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1"])  # fmt: skip
def test_ssrf_guard_judges_embedded_ipv4(addr):
    from kdaudit.core.errors import KdauditError
    from kdaudit.store import remote_teachers as rt

    assert not rt.address_allowed(ipaddress.ip_address(addr), 443, [])
    with pytest.raises(KdauditError):
        rt.check_addresses("teacher.example", 443, [ipaddress.ip_address(addr)], [])


def test_ssrf_guard_still_allows_public_embedded():
    from kdaudit.store import remote_teachers as rt

    assert rt.address_allowed(ipaddress.ip_address("64:ff9b::808:808"), 443, [])
    assert rt.address_allowed(ipaddress.ip_address("2606:4700:4700::1111"), 443, [])


def test_nul_in_header_value_refused_and_never_echoed(env):
    c = env["client"]
    body = {"url": "https://203.0.113.5/predict", "response": "logits", "dataset": "digits",
            "headers": {"X-Api-Key": "secret\x00injected"}}  # fmt: skip
    r = c.post("/v1/teachers/remote", json=body, headers=h.auth(env["key"]))
    assert r.status_code == 422 and b"\x00" not in r.content and b"\\u0000" not in r.content
    r = c.get("/v1/audits/abc%00def", headers=h.auth(env["key"]))
    assert r.status_code == 422 and b"\x00" not in r.content and b"\\u0000" not in r.content


def test_problem_details_escape_control_characters():
    from kdaudit.service.problems import printable

    assert printable("key 'a\x00b\x1b[31m'") == "key 'a\\x00b\\x1b[31m'"


@pytest.mark.integration
def test_redis_bucket_leases_never_exceed_the_shared_limit():
    """Two API processes' worth of async buckets, leasing tokens from one Redis bucket: however
    the requests interleave, no more than the burst passes (plus the refill over the test)."""
    import asyncio

    from kdaudit.service.fast_auth import AsyncBuckets
    from kdaudit.service.limits import RedisRateLimiter

    h.require("Redis", h.check_redis)
    prefix = f"kdaudit:test-lease:{uuid.uuid4().hex[:8]}:"
    a, b = (AsyncBuckets(RedisRateLimiter(0.5, 20, h.REDIS_URL, prefix=prefix)) for _ in range(2))

    async def flood() -> int:
        results = await asyncio.gather(*(x.hit("k") for x in (a, b) for _ in range(100)))
        return sum(ok for ok, _ in results)

    allowed = asyncio.run(flood())
    assert 1 <= allowed <= 21
    ok, wait = asyncio.run(a.hit("k"))
    assert not ok and wait > 0


@contextmanager
def _one_audit(tmp_path: Path, tenant: str):
    """An embedded app (keys cached 30 s) with one tenant's queued audit: (settings, app, client, key, audit id)."""
    settings = _settings(tmp_path, auth_cache_seconds=30)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        key = h.new_key(settings, tenant)
        t = h.upload(c, key, h.make_teacher_file(tmp_path / "t.safetensors")).json()["id"]
        aid = c.post("/v1/audits", json=h.tiny_audit(t), headers=h.auth(key)).json()["id"]
        yield settings, app, c, key, aid


def test_status_poll_fast_path_answers_like_the_route(tmp_path):
    """The fast path (service/poll_fast.py) gives the route's body and headers; misses fall through."""
    from kdaudit.store import repo
    from kdaudit.store.db import session_factory

    with _one_audit(tmp_path, "fast") as (settings, app, c, key, aid):
        app.state.key_cache.forget_all()
        slow = c.get(f"/v1/audits/{aid}", headers=h.auth(key))  # cache miss: the FastAPI route
        with _Queries(settings.resolved_database_url) as q:
            fast = c.get(f"/v1/audits/{aid}", headers=h.auth(key))  # cached key: the fast path
        assert q.n == 1 and fast.status_code == slow.status_code == 200, q.statements
        assert fast.json() == slow.json()
        for name in ("content-type", "retry-after", "content-security-policy", "x-request-id"):
            assert fast.headers.get(name) and (name == "x-request-id" or fast.headers[name] == slow.headers[name])
        other = h.new_key(settings, "other-tenant")
        c.get("/v1/audits", headers=h.auth(other))  # cached too
        assert c.get(f"/v1/audits/{aid}", headers=h.auth(other)).status_code == 404  # falls through: not theirs
        assert c.get(f"/v1/audits/{aid}?x=1", headers=h.auth(key)).status_code == 422  # unknown query: the route
        assert c.get(f"/v1/audits/{aid}", headers=h.auth("kda_nope")).status_code == 401
        assert 'route="/v1/audits/{audit_id}"' in c.get("/metrics").text
        with session_factory(settings.resolved_database_url)() as s:
            assert repo.get_audit(s, None, aid) is not None


def test_concurrent_polls_of_one_audit_share_one_read(tmp_path):
    """Single flight (service/poll_fast.py): 20 concurrent polls of one audit while its row read is
    slow cost a few reads, not 20, and every answer is whole (same body, headers not piled up)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    with _one_audit(tmp_path, "flight") as (settings, _app, c, key, aid):
        assert c.get(f"/v1/audits/{aid}", headers=h.auth(key)).status_code == 200  # key now cached

        def slow(*_a, **_k):  # the real query, made slow enough for polls to overlap
            time.sleep(0.2)

        engine = get_engine(settings.resolved_database_url)
        event.listen(engine, "before_cursor_execute", slow)
        try:
            with _Queries(settings.resolved_database_url) as q, ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda _: c.get(f"/v1/audits/{aid}", headers=h.auth(key)), range(20)))
        finally:
            event.remove(engine, "before_cursor_execute", slow)
    assert [r.status_code for r in answers] == [200] * 20
    assert len({r.content for r in answers}) == 1 and answers[0].json()["id"] == aid
    assert all(r.headers.get_list("retry-after") == [answers[0].headers["retry-after"]] for r in answers)
    assert all(len(r.headers.get_list("content-security-policy")) == 1 for r in answers)
    assert q.n <= 5, q.statements  # 20 polls, a handful of reads
