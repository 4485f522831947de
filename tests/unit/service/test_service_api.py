"""API behaviour on the embedded default (SQLite + filesystem broker, no worker needed):
auth, tenant isolation, problem+json, upload limits and validation, idempotent submit,
pagination, report 409, cancel of a queued audit, health/readiness/metrics."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from kdaudit.service.app import create_app  # noqa: E402
from kdaudit.store.db import session_factory  # noqa: E402
from kdaudit.store.models import ApiKey, Audit, Teacher  # noqa: E402
from kdaudit.store.settings import ServiceSettings  # noqa: E402
from tests.helpers import service as h  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    settings = h.embedded_settings(
        root,
        max_upload_bytes=64 * 1024,
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        alice = h.new_key(settings, "alice")
        bob = h.new_key(settings, "bob")
        teacher_file = h.make_teacher_file(root / "teacher.safetensors")
        r = h.upload(client, alice, teacher_file)
        assert r.status_code == 201, r.text
        yield {"client": client, "settings": settings, "alice": alice, "bob": bob, "teacher": r.json(), "root": root}



def test_upload_stores_content_addressed(env):
    t = env["teacher"]
    assert t["architecture"] == h.TEACHER_ARCH and t["num_classes"] == 10 and t["in_channels"] == 1
    assert t["format"] == "safetensors" and t["parameters"] > 0
    path = env["settings"].resolved_storage_dir / t["sha256"][:2] / t["sha256"][2:4] / t["sha256"]
    # sealed at rest (store/crypto.py): header + the bytes + one GCM tag per 1 MiB chunk
    assert path.is_file() and path.read_bytes()[:5] == b"KDAE\x01"
    assert path.stat().st_size == t["size_bytes"] + 20 + 16 * max(1, -(-t["size_bytes"] // (1 << 20)))
    r = env["client"].get(t["links"]["self"], headers=h.auth(env["alice"]))
    assert r.status_code == 200 and r.json()["id"] == t["id"]


def test_auth_required(env):
    c = env["client"]
    for method, url in [
        ("GET", "/v1/audits"),
        ("GET", "/v1/teachers"),
        ("POST", "/v1/audits"),
        ("GET", f"/v1/audits/{uuid.uuid4().hex}"),
        ("POST", "/v1/teachers"),
    ]:
        doc = h.problem(c.request(method, url), 401)
        assert "Bearer" in doc["detail"]
    r = c.get("/v1/audits", headers=h.auth("kda_not-a-real-key"))
    h.problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert c.get("/healthz").status_code == 200  # health stays open


def test_keys_are_stored_hashed(env):
    with session_factory(env["settings"].resolved_database_url)() as s:
        hashes = [k.key_hash for k in s.query(ApiKey).all()]
    assert env["alice"] not in hashes and all(len(x) == 64 for x in hashes)
    import hashlib

    assert hashlib.sha256(env["alice"].encode()).hexdigest() in hashes


def test_cross_tenant_is_404(env):
    c, alice, bob, t = env["client"], env["alice"], env["bob"], env["teacher"]
    h.problem(c.get(f"/v1/teachers/{t['id']}", headers=h.auth(bob)), 404)
    assert c.get("/v1/teachers", headers=h.auth(bob)).json()["total"] == 0
    # bob cannot audit alice's teacher
    h.problem(c.post("/v1/audits", json=h.tiny_audit(t["id"]), headers=h.auth(bob)), 404)
    r = c.post("/v1/audits", json=h.tiny_audit(t["id"]), headers=h.auth(alice))
    assert r.status_code == 202, r.text
    aid = r.json()["id"]
    for method, url in [
        ("GET", f"/v1/audits/{aid}"),
        ("GET", f"/v1/audits/{aid}/report"),
        ("POST", f"/v1/audits/{aid}/cancel"),
    ]:
        h.problem(c.request(method, url, headers=h.auth(bob)), 404)
    assert all(a["id"] != aid for a in c.get("/v1/audits", headers=h.auth(bob)).json()["items"])


def test_submit_is_202_with_location_and_idempotent(env):
    c, alice, t = env["client"], env["alice"], env["teacher"]
    key = f"idem-{uuid.uuid4().hex}"
    body = h.tiny_audit(t["id"], seeds=2)
    r1 = c.post("/v1/audits", json=body, headers={**h.auth(alice), "Idempotency-Key": key})
    assert r1.status_code == 202, r1.text
    doc = r1.json()
    assert r1.headers["location"] == f"/v1/audits/{doc['id']}"
    assert doc["status"] == "queued" and doc["progress"]["runs_total"] > 0
    assert int(r1.headers["retry-after"]) >= 1
    assert doc["config"]["schedule"]["epochs"] == 1 and doc["config"]["seeds"] == 2
    r2 = c.post("/v1/audits", json=body, headers={**h.auth(alice), "Idempotency-Key": key})
    assert r2.status_code == 202 and r2.json()["id"] == doc["id"]
    assert r2.headers["idempotent-replayed"] == "true"
    with session_factory(env["settings"].resolved_database_url)() as s:
        assert s.query(Audit).filter_by(idempotency_key=key).count() == 1
    # the same key for another request is refused
    other = c.post("/v1/audits", json=h.tiny_audit(t["id"], seeds=3), headers={**h.auth(alice), "Idempotency-Key": key})
    assert h.problem(other, 422)["type"].endswith("idempotency-key-reused")
    # the task was put on the (filesystem) queue
    queue = env["settings"].data_dir / "broker" / "queue"
    assert any(queue.iterdir())


def test_oversize_upload_is_413(env, tmp_path):
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (env["settings"].max_upload_bytes + 1))
    doc = h.problem(h.upload(env["client"], env["alice"], big), 413)
    assert str(env["settings"].max_upload_bytes) in doc["detail"]
    huge = tmp_path / "huge.bin"  # beyond the form allowance: refused while streaming
    huge.write_bytes(b"\0" * (env["settings"].max_upload_bytes + 2 * 1024 * 1024))
    h.problem(h.upload(env["client"], env["alice"], huge), 413)
    leftovers = list((env["settings"].resolved_storage_dir / ".tmp").iterdir())
    assert leftovers == []


def test_malformed_checkpoint_is_422_with_loader_message(env, tmp_path):
    from kdaudit.core.errors import CheckpointError
    from kdaudit.models.checkpoints import validate_teacher_file

    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError) as loader:
        validate_teacher_file(bad, h.TEACHER_ARCH, 10, 1)
    doc = h.problem(h.upload(env["client"], env["alice"], bad), 422)
    assert doc["detail"] == str(loader.value)
    assert doc["type"].endswith("invalid-checkpoint")
    # wrong architecture for the weights: also the loader's words
    good = h.make_teacher_file(tmp_path / "t.safetensors")
    doc = h.problem(h.upload(env["client"], env["alice"], good, arch="cnn-16-16-16-16"), 422)
    assert doc["detail"]
    with session_factory(env["settings"].resolved_database_url)() as s:
        assert s.query(Teacher).filter(Teacher.filename.in_(["garbage.pt"])).count() == 0


def test_upload_form_errors_are_problems(env, tmp_path):
    c, alice = env["client"], env["alice"]
    f = h.make_teacher_file(tmp_path / "t.safetensors")
    assert "unknown architecture" in h.problem(h.upload(c, alice, f, arch="resnet9000"), 422)["detail"]
    assert "unknown dataset" in h.problem(h.upload(c, alice, f, dataset="imagenet"), 422)["detail"]
    h.problem(h.upload(c, alice, f, num_classes="7"), 422)
    h.problem(c.post("/v1/teachers", headers=h.auth(alice), files={"architecture": (None, "x")}), 422)
    h.problem(c.post("/v1/teachers", headers=h.auth(alice), json={"architecture": "x"}), 415)


def test_validation_errors_are_problems(env):
    c, alice, t = env["client"], env["alice"], env["teacher"]
    doc = h.problem(c.post("/v1/audits", json={"teacher_id": t["id"], "seeds": "many"}, headers=h.auth(alice)), 422)
    assert doc["errors"] and "seeds" in doc["detail"]
    doc = h.problem(c.post("/v1/audits", json=h.tiny_audit(t["id"], students=["nope-net"]), headers=h.auth(alice)), 422)
    assert "nope-net" in doc["detail"]
    h.problem(c.post("/v1/audits", json=h.tiny_audit(t["id"], bogus=1), headers=h.auth(alice)), 422)
    h.problem(c.post("/v1/audits", json=h.tiny_audit(t["id"], dataset="cifar10"), headers=h.auth(alice)), 422)
    h.problem(c.get("/v1/audits?limit=0", headers=h.auth(alice)), 422)
    h.problem(c.get("/no/such/route"), 404)
    h.problem(c.delete("/v1/audits", headers=h.auth(alice)), 405)


def test_report_409_until_ready_and_cancel_queued(env):
    c, alice, t = env["client"], env["alice"], env["teacher"]
    aid = c.post("/v1/audits", json=h.tiny_audit(t["id"]), headers=h.auth(alice)).json()["id"]
    r = c.get(f"/v1/audits/{aid}/report", headers=h.auth(alice))
    doc = h.problem(r, 409)
    assert doc["audit_status"] == "queued" and "retry-after" in r.headers
    r = c.post(f"/v1/audits/{aid}/cancel", headers=h.auth(alice))
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    st = c.get(f"/v1/audits/{aid}", headers=h.auth(alice))
    assert st.json()["status"] == "cancelled" and "retry-after" not in st.headers
    h.problem(c.post(f"/v1/audits/{aid}/cancel", headers=h.auth(alice)), 409)
    h.problem(c.get(f"/v1/audits/{aid}/report", headers=h.auth(alice)), 409)


def test_list_pagination(env):
    c, alice, t = env["client"], env["alice"], env["teacher"]
    for _ in range(3):
        assert c.post("/v1/audits", json=h.tiny_audit(t["id"]), headers=h.auth(alice)).status_code == 202
    total = c.get("/v1/audits", headers=h.auth(alice)).json()["total"]
    assert total >= 3
    seen, url = [], "/v1/audits?limit=2"
    while url:
        page = c.get(url, headers=h.auth(alice)).json()
        assert len(page["items"]) <= 2
        seen += [a["id"] for a in page["items"]]
        url = page["next"]
    assert len(seen) == len(set(seen)) == total
    queued = c.get("/v1/audits?status=cancelled", headers=h.auth(alice)).json()
    assert all(a["status"] == "cancelled" for a in queued["items"])


def test_health_ready_metrics_openapi(env):
    c = env["client"]
    assert c.get("/healthz").json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}
    m = c.get("/metrics")
    assert m.status_code == 200
    assert "kdaudit_http_requests_total" in m.text and 'kdaudit_audits{status="queued"}' in m.text
    spec = c.get("/openapi.json").json()
    assert {"/v1/teachers", "/v1/audits", "/v1/audits/{audit_id}", "/v1/audits/{audit_id}/report",
            "/v1/audits/{audit_id}/cancel"} <= set(spec["paths"])  # fmt: skip


def test_readyz_reports_unreachable_broker(tmp_path):
    settings = ServiceSettings(
        data_dir=tmp_path, database_url=None, broker_url="redis://127.0.0.1:1/0", auto_migrate=True
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        doc = h.problem(c.get("/readyz"), 503)
        assert doc["checks"]["database"] == "ok" and doc["checks"]["broker"].startswith("unreachable")


def test_threat_model_sweep_and_panel_through_the_api(env):
    c, alice, t = env["client"], env["alice"], env["teacher"]
    body = h.tiny_audit(t["id"], attacks=["normal_kd"], threat={"output": "top3", "query_budget": 5000},
                        sweep={"outputs": ["label"], "fractions": [0.5]}, panel="standard")
    r = c.post("/v1/audits", json=body, headers=h.auth(alice))
    assert r.status_code == 202, r.text
    doc = r.json()
    assert doc["config"]["threat"] == {"output": "top3", "query_budget": 5000, "billing": "distinct"}
    # base: scratch, label smoothing, normal_kd and the panel's skeptical (no DFAD: top-3 hides scores); the panel's
    # tau 1, tau 20 and AC stage 1; label-only, which is both a panel entry (normal_kd) and the sweep's point (normal_kd,
    # skeptical): one setting with the union; fraction 0.5: scratch, label smoothing, normal_kd, skeptical
    assert doc["progress"]["runs_total"] == 4 + 3 + 2 + 4
    doc = h.problem(c.post("/v1/audits", json=h.tiny_audit(t["id"], attacks=["datafree_dfad"], threat={"output": "label"}),
                          headers=h.auth(alice)), 422)
    assert "needs a score for every class" in doc["detail"]
    doc = h.problem(c.post("/v1/audits", json=h.tiny_audit(t["id"], threat={"output": "top0"}), headers=h.auth(alice)), 422)
    assert "top0" in doc["detail"]
    doc = h.problem(c.post("/v1/audits", json=h.tiny_audit(t["id"], sweep={"fractions": [0]}), headers=h.auth(alice)), 422)
    assert "fraction" in doc["detail"]
