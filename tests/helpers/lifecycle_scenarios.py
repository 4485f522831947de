"""Owners' data scenarios (issue 20), run on both stacks by test_lifecycle.py (embedded: SQLite +
filesystem broker) and test_lifecycle_postgres.py (PostgreSQL + Redis). A `stack` is a dict:
client (TestClient of the API), settings, log (the real worker process's log), sessions.

Imported by path like service_helpers (tests/ is not a package).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from tests.helpers import service as h

FINISHED = ("succeeded", "failed", "cancelled")


# ---------------------------------------------------------------------- helpers


def key_for(stack, tenant: str, **kw: Any) -> tuple[str, str]:
    """A new API key of `tenant` (and its id)."""
    from kdaudit.store import keys

    with stack["sessions"]() as s:
        key, row = keys.create_key(s, tenant, **kw)
    return key, row.id


def stored_files(settings) -> list[Path]:
    """Every regular file in the storage folder except secrets (read from the disk)."""
    root = settings.resolved_storage_dir
    return [p for p in root.rglob("*") if p.is_file() and "secrets" not in p.parts]


def upload_ok(stack, key: str, path: Path) -> dict:
    r = h.upload(stack["client"], key, path)
    assert r.status_code == 201, r.text
    return r.json()


def audit_to_end(stack, key: str, teacher_id: str, **over: Any) -> dict:
    c = stack["client"]
    # force: random-weight teachers fail the teacher sanity gate, and plumbing is what is tested here
    body = h.tiny_audit(teacher_id, attacks=["normal_kd"], force=True, **over)
    r = c.post("/v1/audits", json=body, headers=h.auth(key))
    assert r.status_code == 202, r.text
    aid = r.json()["id"]
    doc = h.wait_status(lambda: c.get(f"/v1/audits/{aid}", headers=h.auth(key)).json(), FINISHED, timeout=240)
    assert doc["status"] == "succeeded", (doc, stack["log"].read_text()[-3000:])
    return doc


def rows_of(stack, audit_id: str) -> dict[str, int]:
    from kdaudit.store.db import get_engine

    out = {}
    with get_engine(stack["settings"].resolved_database_url).connect() as conn:
        for table, col in (("audits", "id"), ("runs", "audit_id"), ("reports", "audit_id"), ("audit_parts", "audit_id")):
            out[table] = conn.execute(text(f"SELECT count(*) FROM {table} WHERE {col} = :i"), {"i": audit_id}).scalar()
    return out


def known_tensor_bytes(path: Path) -> bytes:
    """The raw bytes of the largest tensor in a safetensors file (what a thief would look for)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        name = max(f.keys(), key=lambda k: f.get_tensor(k).numel())
        return f.get_tensor(name).contiguous().numpy().tobytes()


# ---------------------------------------------------------------------- scenarios


def delete_teacher_removes_bytes_but_not_another_tenants(stack, root: Path) -> None:
    c, settings = stack["client"], stack["settings"]
    alice, alice_id = key_for(stack, "alice")
    bob, _ = key_for(stack, "bob")
    src = h.make_teacher_file(root / "shared.safetensors", seed=11)
    ta, tb = upload_ok(stack, alice, src), upload_ok(stack, bob, src)
    sha = ta["sha256"]
    assert ta["id"] != tb["id"] and tb["sha256"] == sha
    assert [p.name for p in stored_files(settings)].count(sha) == 1  # stored once for both tenants

    done = audit_to_end(stack, alice, ta["id"])  # (409 while one runs: delete_with_cancel_stops_a_running_audit)
    r = c.delete(f"/v1/teachers/{ta['id']}", headers=h.auth(bob))
    assert r.status_code == 404  # bob cannot delete alice's teacher (nor learn it exists)
    r = c.delete(f"/v1/teachers/{ta['id']}", headers=h.auth(alice))
    assert r.status_code == 204, r.text
    for url in (f"/v1/teachers/{ta['id']}", f"/v1/audits/{done['id']}", f"/v1/audits/{done['id']}/report",
                f"/v1/audits/{done['id']}/report.html"):  # fmt: skip
        assert c.get(url, headers=h.auth(alice)).status_code == 404, url
    assert c.delete(f"/v1/teachers/{ta['id']}", headers=h.auth(alice)).status_code == 404
    assert rows_of(stack, done["id"]) == {"audits": 0, "runs": 0, "reports": 0, "audit_parts": 0}
    # bob's teacher has the same bytes: they stay, and it still audits
    assert [p.name for p in stored_files(settings)].count(sha) == 1
    assert c.get(f"/v1/teachers/{tb['id']}", headers=h.auth(bob)).status_code == 200
    bob_audit = audit_to_end(stack, bob, tb["id"])
    assert c.get(f"/v1/audits/{bob_audit['id']}/report", headers=h.auth(bob)).status_code == 200

    # the tombstone traces what was deleted, by which key
    from kdaudit.store.models import Tombstone

    with stack["sessions"]() as s:
        stones = {t.id: t for t in s.query(Tombstone).all()}
    assert stones[ta["id"]].sha256 == sha and stones[ta["id"]].deleted_by_key == alice_id
    assert stones[done["id"]].kind == "audit" and stones[done["id"]].teacher_id == ta["id"]

    # an audit delete takes its report; the last teacher naming the bytes takes the file
    assert c.delete(f"/v1/audits/{bob_audit['id']}", headers=h.auth(bob)).status_code == 204
    assert rows_of(stack, bob_audit["id"])["reports"] == 0
    assert c.delete(f"/v1/teachers/{tb['id']}", headers=h.auth(bob)).status_code == 204
    assert sha not in [p.name for p in stored_files(settings)]
    assert not (settings.resolved_storage_dir / sha[:2] / sha[2:4]).exists()


def delete_with_cancel_stops_a_running_audit(stack, root: Path) -> None:
    c, settings = stack["client"], stack["settings"]
    key, _ = key_for(stack, "carol")
    t = upload_ok(stack, key, h.make_teacher_file(root / "long.safetensors", seed=12))
    r = c.post("/v1/audits", json=h.tiny_audit(t["id"], attacks=["normal_kd"], epochs=400, force=True), headers=h.auth(key))
    assert r.status_code == 202, r.text
    aid = r.json()["id"]
    ckpt = settings.data_dir / "checkpoints" / aid
    deadline = time.monotonic() + 120
    while not (ckpt.is_dir() and any(ckpt.iterdir())):  # running, with per-epoch checkpoints on disk
        assert time.monotonic() < deadline, stack["log"].read_text()[-3000:]
        time.sleep(0.2)
    r = c.delete(f"/v1/teachers/{t['id']}", headers=h.auth(key))
    assert r.status_code == 409 and r.json()["audits"] == [aid], r.text
    r = c.delete(f"/v1/audits/{aid}", headers=h.auth(key))
    assert r.status_code == 409, r.text
    r = c.delete(f"/v1/teachers/{t['id']}", params={"cancel": "true"}, headers=h.auth(key))
    assert r.status_code == 204, r.text
    assert c.get(f"/v1/audits/{aid}", headers=h.auth(key)).status_code == 404
    # the worker stops at its next epoch boundary and removes what it wrote after the delete
    deadline = time.monotonic() + 90
    while f"audit {aid} was deleted while it ran" not in stack["log"].read_text():
        assert time.monotonic() < deadline, stack["log"].read_text()[-3000:]
        time.sleep(0.3)
    assert not ckpt.exists()
    assert rows_of(stack, aid) == {"audits": 0, "runs": 0, "reports": 0, "audit_parts": 0}
    assert t["sha256"] not in [p.name for p in stored_files(settings)]
    # the worker's decrypted copy lived in a private temp folder, removed once the model was loaded
    assert not list(Path(tempfile.gettempdir()).glob(f"kdaudit-teacher-*/{t['sha256']}"))


def stored_files_and_reports_are_sealed(stack, root: Path) -> None:
    from kdaudit.store.crypto import keyring
    from kdaudit.store.files import FileStore
    from kdaudit.store.models import ReportRow
    from kdaudit.store.sealed_files import plaintext

    settings = stack["settings"]
    key, _ = key_for(stack, "dora")
    src = h.make_teacher_file(root / "secret.safetensors", seed=13)
    needle = known_tensor_bytes(src)[:256]
    assert needle in src.read_bytes()
    t = upload_ok(stack, key, src)
    stored = settings.resolved_storage_dir / t["sha256"][:2] / t["sha256"][2:4] / t["sha256"]
    raw = stored.read_bytes()
    assert needle not in raw and needle[:32] not in raw and raw[:5] == b"KDAE\x01"
    with plaintext(FileStore(settings.resolved_storage_dir), t["sha256"], keyring(settings)) as plain:
        assert plain.read_bytes() == src.read_bytes()
    done = audit_to_end(stack, key, t["id"])  # the worker opens the sealed file
    with stack["sessions"]() as s:
        body = s.get(ReportRow, done["id"]).body
    assert body["kdaudit_sealed"] and t["sha256"] not in json.dumps(body) and "summary" not in body
    report = stack["client"].get(f"/v1/audits/{done['id']}/report", headers=h.auth(key)).json()
    assert report["teacher"]["sha256"] == t["sha256"]


def rotation_keeps_old_files_readable(stack, root: Path) -> None:
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from kdaudit.service.app import create_app
    from kdaudit.store.crypto import StorageKeyError, keyring, new_key, sealed_key_id
    from kdaudit.store.files import FileStore
    from kdaudit.store.models import ReportRow
    from kdaudit.store.rotation import rotate
    from kdaudit.store.sealed_files import plaintext

    settings = stack["settings"]
    key, _ = key_for(stack, "erin")
    old_ring = keyring(settings)
    t_old = upload_ok(stack, key, h.make_teacher_file(root / "old.safetensors", seed=14))
    done = audit_to_end(stack, key, t_old["id"])
    old_keys = (settings.storage_keys.get_secret_value() if settings.storage_keys
                else (settings.data_dir / "storage.key").read_text().strip().replace("\n", ","))  # fmt: skip
    fresh = new_key()
    rotated = settings.model_copy(update={"storage_keys": SecretStr(f"{fresh},{old_keys}")})
    only_new = settings.model_copy(update={"storage_keys": SecretStr(fresh)})
    files = FileStore(settings.resolved_storage_dir)
    with TestClient(create_app(rotated), raise_server_exceptions=False) as c2:
        # old things still open under the new keyring; new uploads are sealed with the new key
        assert c2.get(f"/v1/audits/{done['id']}/report", headers=h.auth(key)).status_code == 200
        t_new = h.upload(c2, key, h.make_teacher_file(root / "new.safetensors", seed=15)).json()
    new_id = keyring(rotated).primary_id.hex()
    assert sealed_key_id(files.path_for(t_new["sha256"])) == new_id
    assert sealed_key_id(files.path_for(t_old["sha256"])) == old_ring.primary_id.hex()
    result = rotate(rotated)
    assert result.files >= 1 and result.reports >= 1 and result.key_id == new_id
    assert sealed_key_id(files.path_for(t_old["sha256"])) == new_id
    with stack["sessions"]() as s:
        assert s.get(ReportRow, done["id"]).body["kid"] == new_id
    assert rotate(rotated).files == 0  # idempotent
    # after rotation the old key can go: everything opens with the new key alone
    with TestClient(create_app(only_new), raise_server_exceptions=False) as c3:
        r = c3.get(f"/v1/audits/{done['id']}/report", headers=h.auth(key))
        assert r.status_code == 200 and r.json()["teacher"]["sha256"] == t_old["sha256"]
    with plaintext(files, t_old["sha256"], keyring(only_new)) as p:
        assert p.stat().st_size == t_old["size_bytes"]
    try:
        with plaintext(files, t_old["sha256"], old_ring):
            raise AssertionError("the old key alone must no longer open a re-sealed file")
    except StorageKeyError:
        pass
    # put the stack back on its own keys: re-seal under them
    back = settings.model_copy(update={"storage_keys": SecretStr(f"{old_keys},{fresh}")})
    rotate(back)


def trail_lists_each_action_once(stack, root: Path) -> None:
    c = stack["client"]
    key, key_id = key_for(stack, "frank")
    spare, spare_id = key_for(stack, "frank", name="spare")
    t = upload_ok(stack, key, h.make_teacher_file(root / "trail.safetensors", seed=16))
    assert c.get(f"/v1/teachers/{t['id']}", headers=h.auth(key)).status_code == 200
    done = audit_to_end(stack, key, t["id"])
    assert c.get(f"/v1/audits/{done['id']}/report", headers=h.auth(key)).status_code == 200
    assert c.get(f"/v1/audits/{done['id']}/report.html", headers=h.auth(key)).status_code == 200
    assert c.delete(f"/v1/keys/{spare_id}", headers=h.auth(key)).status_code == 200
    assert c.delete(f"/v1/keys/{spare_id}", headers=h.auth(key)).status_code == 200  # again: no second event
    assert c.delete(f"/v1/audits/{done['id']}", headers=h.auth(key)).status_code == 204
    assert c.delete(f"/v1/teachers/{t['id']}", headers=h.auth(key)).status_code == 204
    r = c.get("/v1/events", headers=h.auth(key))
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert Counter(e["action"] for e in items) == Counter({
        "teacher.upload": 1, "teacher.read": 1, "report.download": 2, "key.revoke": 1, "audit.delete": 1,
        "teacher.delete": 1,
    })  # fmt: skip
    assert {e["detail"]["format"] for e in items if e["action"] == "report.download"} == {"json", "html"}
    assert all(e["key_id"] == key_id and e["actor"] == "api" and e["address"] and e["request_id"] for e in items)
    assert [e["at"] for e in items] == sorted((e["at"] for e in items), reverse=True)
    assert key not in r.text and spare not in r.text  # never a key
    # another tenant sees none of it
    other, _ = key_for(stack, "grace")
    assert c.get("/v1/events", headers=h.auth(other)).json()["total"] == 0
    assert c.get("/v1/events", params={"action": "teacher.read"}, headers=h.auth(key)).json()["total"] == 1


def expired_and_revoked_keys_get_401(stack, root: Path) -> None:
    from sqlalchemy import update

    from kdaudit.store.models import ApiKey, utcnow

    c = stack["client"]
    expired, _ = key_for(stack, "heidi", expires_at=utcnow() - timedelta(seconds=1))
    assert c.get("/v1/teachers", headers=h.auth(expired)).status_code == 401
    key, key_id = key_for(stack, "heidi", name="laptop", expires_at=utcnow() + timedelta(days=1))
    other, other_id = key_for(stack, "heidi", name="ci")
    assert c.get("/v1/teachers", headers=h.auth(key)).status_code == 200
    listed = {k["id"]: k for k in c.get("/v1/keys", headers=h.auth(key)).json()["items"]}
    assert listed[key_id]["current"] and listed[key_id]["name"] == "laptop" and listed[key_id]["last_used_at"]
    assert listed[key_id]["status"] == "active" and listed[other_id]["status"] == "active"
    assert any(k["status"] == "expired" for k in listed.values())
    # an expiry moved into the past behind the API's back: refused once the key cache (at most
    # auth_cache_seconds) has let go of it
    with stack["sessions"]() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id).values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    time.sleep(stack["settings"].auth_cache_seconds + 0.2)
    assert c.get("/v1/teachers", headers=h.auth(key)).status_code == 401
    # a tenant revokes its own key; the next request with it is refused
    assert c.get("/v1/teachers", headers=h.auth(other)).status_code == 200
    intruder, _ = key_for(stack, "ivan")
    assert c.delete(f"/v1/keys/{other_id}", headers=h.auth(intruder)).status_code == 404  # not theirs
    r = c.delete(f"/v1/keys/{other_id}", headers=h.auth(other))  # revoking the key you call with
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert c.get("/v1/teachers", headers=h.auth(other)).status_code == 401  # at once: no cache grace here
    # a key that expires while cached is dropped from the cache at its own expiry
    soon, _ = key_for(stack, "heidi", expires_at=utcnow() + timedelta(seconds=1))
    assert c.get("/v1/teachers", headers=h.auth(soon)).status_code == 200
    time.sleep(1.1)
    assert c.get("/v1/teachers", headers=h.auth(soon)).status_code == 401


def cli_keys_and_trail(stack, root: Path) -> None:
    """`kdaudit keys create|list|revoke --id` against the stack's database, in a subprocess."""
    c, settings = stack["client"], stack["settings"]
    env = dict(os.environ, KDAUDIT_DATA_DIR=str(settings.data_dir))
    if settings.database_url:
        env["KDAUDIT_DATABASE_URL"] = settings.database_url
    else:
        env.pop("KDAUDIT_DATABASE_URL", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kdaudit.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    r = cli("keys", "create", "--tenant", "judy", "--name", "ci", "--expires-in-days", "30")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert c.get("/v1/teachers", headers=h.auth(key)).status_code == 200
    r = cli("keys", "list", "--tenant", "judy", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["name"] == "ci" and row["status"] == "active" and row["expires_at"] and key not in r.stdout
    r = cli("keys", "revoke", "--id", row["id"])
    assert r.returncode == 0, r.stderr
    time.sleep(settings.auth_cache_seconds + 0.2)  # revoked in another process: the API's key cache TTL
    assert c.get("/v1/teachers", headers=h.auth(key)).status_code == 401
    assert cli("keys", "revoke", "--id", row["id"]).returncode == 1  # already revoked
    from kdaudit.store import events, keys

    with stack["sessions"]() as s:
        tenant = keys.tenant_by_name(s, "judy")
        items, _ = events.list_events(s, tenant.id, 100, 0)
    assert Counter((e.action, e.actor) for e in items) == Counter({("key.create", "cli"): 1, ("key.revoke", "cli"): 1})


#: the scenarios both stacks (embedded SQLite + filesystem broker, PostgreSQL + Redis) run as they are
SHARED = (
    delete_teacher_removes_bytes_but_not_another_tenants,
    delete_with_cancel_stops_a_running_audit,
    rotation_keeps_old_files_readable,
    trail_lists_each_action_once,
    expired_and_revoked_keys_get_401,
    cli_keys_and_trail,
)
