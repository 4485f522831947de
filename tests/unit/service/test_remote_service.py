"""Remote teachers through the service: register an HTTP prediction endpoint (POST
/v1/teachers/remote, `kdaudit register-remote`), audit it with a real Celery worker on the
embedded stack, and check the SSRF allowlist (`remote_teacher_hosts`), that header values and
the URL's query string never leave the secret file, and that an endpoint that keeps failing
ends the audit `failed` with the remote teacher's one-line message.

The teacher endpoints are `kdaudit.teacher_server` instances on loopback; the API is a real
uvicorn server in a thread (so the CLI talks HTTP to it), the worker a real child process.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time

import httpx
import pytest

from kdaudit.store import remote_teachers as rt  # noqa: E402
from tests.helpers import service as h  # noqa: E402

pytestmark = pytest.mark.integration

HEADER_SECRET = "hdr-secret-7f3a9c"  # the endpoint's API key (a header)
QUERY_SECRET = "qry-secret-41be02"  # a key in the URL's query string
SECRETS = (HEADER_SECRET, QUERY_SECRET)
STUDENT = "cnn-4-8-8-16"


def _no_secret(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"a secret leaked into {where}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    import torch
    import uvicorn

    from kdaudit.models.registry import build_model
    from kdaudit.service.app import create_app
    from kdaudit.teacher_server import start_teacher_server

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("remote")
    settings = h.embedded_settings(root, remote_teacher_hosts=["127.0.0.1"], heartbeat_seconds=0.5, rate_limit_per_second=0)
    torch.manual_seed(0)
    model = build_model(h.TEACHER_ARCH, 10, 1)
    good, good_url = start_teacher_server(model, "probabilities", require_headers={"X-Api-Key": HEADER_SECRET})
    bad, bad_url = start_teacher_server(model, "logits", fail_every=1)  # every request: 503

    key = h.new_key(settings, "remote-tenant")
    worker_log = root / "worker.log"
    with pytest.MonkeyPatch.context() as mp:
        # one torch thread in the worker: on a busy 2-core box, spinning OpenMP threads make
        # every training step wait (seconds an epoch instead of a fraction of one)
        mp.setenv("OMP_NUM_THREADS", "1")
        worker = h.start_worker(settings, worker_log)
    port = h.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=base, headers=h.auth(key), timeout=30) as c:
            yield {"c": c, "base": base, "key": key, "settings": settings, "good": good, "good_url": good_url,
                   "bad": bad, "bad_url": bad_url, "worker_log": worker_log, "root": root}  # fmt: skip
    finally:
        server.should_exit = True
        thread.join(10)
        log = h.stop_worker(worker, worker_log)
        good.stop()
        bad.stop()
        _no_secret(log, "the worker log")


def _register(c: httpx.Client, url: str, **over) -> httpx.Response:
    return c.post("/v1/teachers/remote", json={"url": url, "response": "logits", "dataset": "digits", **over})


def _wait(c: httpx.Client, audit_id: str, timeout: float = 150) -> dict:
    return h.wait_status(lambda: c.get(f"/v1/audits/{audit_id}").json(), ("succeeded", "failed", "cancelled"), timeout)


def test_register_with_the_cli_audit_and_no_secret_leaks(stack, capsys, monkeypatch):
    from kdaudit.cli import main

    c = stack["c"]
    monkeypatch.setenv("KDA_TEST_TEACHER_KEY", HEADER_SECRET)
    rc = main([
        "register-remote", "--server", stack["base"], "--api-key", stack["key"], "--json",
        "--teacher-url", f"{stack['good_url']}predict?token={QUERY_SECRET}", "--teacher-response", "probabilities",
        "--dataset", "digits", "--teacher-header-env", "X-Api-Key=KDA_TEST_TEACHER_KEY", "--teacher-max-batch", "512",
    ])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    _no_secret(out.out + out.err, "the CLI output")
    teacher = json.loads(out.out)
    public = f"{stack['good_url']}predict?<redacted>"
    assert teacher["format"] == "remote-http" and teacher["architecture"] == "remote"
    assert teacher["filename"] == public and teacher["num_classes"] == 10 and teacher["in_channels"] == 1
    assert teacher["remote"] == {
        "url": public, "response": "probabilities", "timeout_s": 10.0, "max_retries": 4, "backoff_s": 0.5,
        "concurrency": 4, "max_batch": 512, "header_names": ["X-Api-Key"],
    }  # fmt: skip
    assert teacher["sha256"] == rt.spec_sha256(public, "probabilities")

    # the secrets live in one 0600 file (folder 0700), not in the database
    secret = stack["settings"].resolved_storage_dir / "secrets" / f"remote-teacher-{teacher['id']}.json"
    assert secret.stat().st_mode & 0o777 == 0o600 and secret.parent.stat().st_mode & 0o777 == 0o700
    assert HEADER_SECRET in secret.read_text() and QUERY_SECRET in secret.read_text()
    db = (stack["settings"].data_dir / "kdaudit.db").read_bytes()
    assert HEADER_SECRET.encode() not in db and QUERY_SECRET.encode() not in db

    body = h.tiny_audit(teacher["id"], attacks=["normal_kd"], students=[STUDENT], epochs=2, seeds=1)
    r = c.post("/v1/audits", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["config"]["threat"]["output"] == "probs"  # what a probabilities endpoint reveals
    doc = _wait(c, r.json()["id"])
    assert doc["status"] == "succeeded", (doc, stack["worker_log"].read_text()[-3000:])

    rep = c.get(f"/v1/audits/{doc['id']}/report")
    assert rep.status_code == 200
    report = rep.json()
    remote = report["threat"]["remote"]
    assert remote["url"] == public and remote["response"] == "probabilities" and "headers" not in remote
    assert report["teacher"]["sha256"] == teacher["sha256"]
    assert stack["good"].images_served_ok > 0  # the worker really asked the endpoint, with the header
    for path in ("/v1/teachers", f"/v1/teachers/{teacher['id']}", f"/v1/audits/{doc['id']}", "/v1/audits"):
        _no_secret(c.get(path).text, path)
    _no_secret(rep.text, "the report")


def test_hosts_outside_the_allowlist_are_refused(stack):
    c = stack["c"]
    port = stack["good"].server_address[1]
    for url in (f"http://127.0.0.2:{port}/", f"http://localhost:{port}/", "http://169.254.169.254/latest/"):
        r = _register(c, url)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        p = r.json()
        assert p["setting"] == "remote_teacher_hosts" and "remote_teacher_hosts" in p["detail"]
        assert p["type"] == "urn:kdaudit:problem:remote-host-not-allowed"
    for body in ({"url": "ftp://127.0.0.1/x"}, {"url": "http://user:pw@127.0.0.1/"},
                 {"headers": {"Host": "internal"}}, {"url": "http://127.0.0.1/" + "p" * 300}):  # fmt: skip
        r = _register(c, **{"url": stack["good_url"], **body})
        assert r.status_code == 422, (body, r.text)
        assert "pw" not in r.text


def test_disabled_by_default(tmp_path):
    from fastapi.testclient import TestClient

    from kdaudit.service.app import create_app

    settings = h.embedded_settings(tmp_path)
    assert settings.remote_teacher_hosts == []
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        key = h.new_key(settings, "t")
        r = c.post("/v1/teachers/remote", headers=h.auth(key),
                   json={"url": "https://example.com/predict", "response": "labels", "dataset": "digits"})  # fmt: skip
        assert r.status_code == 403 and r.json()["setting"] == "remote_teacher_hosts"
        assert "disabled" in r.json()["detail"] and "KDAUDIT_REMOTE_TEACHER_HOSTS" in r.json()["detail"]


def test_failing_endpoint_fails_the_audit_with_one_line(stack):
    c = stack["c"]
    r = _register(c, stack["bad_url"], max_retries=1, backoff_s=0.01)
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    zskt = c.post("/v1/audits", json=h.tiny_audit(tid, attacks=["datafree_zskt"]))
    assert zskt.status_code == 422 and "grey-box" in zskt.json()["detail"]

    r = c.post("/v1/audits", json=h.tiny_audit(tid, attacks=["normal_kd"], students=[STUDENT], epochs=2, seeds=1))
    assert r.status_code == 202, r.text
    doc = _wait(c, r.json()["id"], timeout=90)
    assert doc["status"] == "failed", doc
    error = doc["error"]
    assert error.startswith(f"remote teacher: {stack['bad_url']} failed 2 times (last: HTTP 503)"), error
    assert "\n" not in error and "Traceback" not in error


# ----------------------------------------------------------------------- the policy itself


def _ips(*xs: str):
    return lambda host, port: [ipaddress.ip_address(x) for x in xs]


def test_allowlist_rules():
    entries = rt.parse_entries(["api.example.com", "teacher.internal:8700", "10.0.0.5:8700", "[::1]:9000"])
    public = _ips("93.184.216.34")
    assert rt.check_url("https://api.example.com/v1", entries, resolver=public).port == 443
    assert rt.check_url("http://API.Example.COM.:8080/", entries, resolver=public).host == "api.example.com"
    assert rt.check_url("http://[::1]:9000/", entries).ip == ipaddress.ip_address("::1")
    # a listed internal name needs its (non-public) address listed too, with a matching port
    assert rt.check_url("http://teacher.internal:8700/", entries, resolver=_ips("10.0.0.5")).port == 8700
    refused = [
        ("http://teacher.internal:8701/", public),  # port not listed
        ("http://api.example.com/", _ips("127.0.0.1")),  # rebinding to loopback
        ("http://api.example.com/", _ips("93.184.216.34", "169.254.169.254")),  # one bad address is enough
        ("http://api.example.com/", _ips("::ffff:10.0.0.5")),  # a mapped private address
        ("http://[::1]:9001/", None),
        ("http://127.0.0.1/", None),
        ("http://2130706433/", None),  # 127.0.0.1 as a number: not a listed name
    ]
    for url, resolver in refused:
        with pytest.raises(rt.RemoteHostNotAllowed, match="remote_teacher_hosts"):
            rt.check_url(url, entries, resolver=resolver)

    def nxdomain(host, port):
        raise OSError("no such host")

    with pytest.raises(rt.RemoteHostUnresolvable):
        rt.check_url("http://api.example.com/", entries, resolver=nxdomain)
    assert rt.check_url("http://api.example.com/", entries, resolver=nxdomain, require_resolution=False)
    with pytest.raises(rt.RemoteHostNotAllowed, match="disabled"):
        rt.check_url("http://api.example.com/", [])
    assert rt.split_setting(" a.example ,B.example:80,, [::1]:9,::1") == ["a.example", "b.example:80", "[::1]:9", "[::1]"]
    assert rt.split_setting('["x.example", "127.0.0.1:1"]') == ["x.example", "127.0.0.1:1"]
    for bad in ("http://x", "*.example.com", "10.0.0.0/8", "host:0", "host:http"):
        with pytest.raises(ValueError):
            rt.parse_entry(bad)


def test_every_connection_is_checked(stack, monkeypatch):
    """DNS rebinding after the check: the worker's client connects only to checked addresses."""
    import torch

    from kdaudit.models.remote_teacher import RemoteTeacherSpec
    from kdaudit.workers.remote_teacher import build_teacher

    port = stack["good"].server_address[1]
    spec = RemoteTeacherSpec(url=f"http://rebind.test:{port}/", response="probabilities", max_retries=0,
                             headers={"X-Api-Key": HEADER_SECRET}).model_dump()  # fmt: skip
    allowed = ["rebind.test", "127.0.0.1"]
    monkeypatch.setattr(rt, "resolve", _ips("127.0.0.1"))
    teacher = build_teacher(spec, 10, allowed)
    x = torch.zeros(3, 1, 8, 8)
    assert teacher(x).shape == (3, 10)
    teacher.close()  # the next forward opens a new connection, resolving again
    monkeypatch.setattr(rt, "resolve", _ips("127.0.0.1", "10.9.8.7"))
    sent = teacher.requests_sent
    with pytest.raises(rt.RemoteHostNotAllowed, match="10.9.8.7"):
        teacher(x)
    assert teacher.requests_sent == sent + 1 and teacher.images_answered == 3  # refused at once, not retried
    teacher.close()
    with pytest.raises(rt.RemoteHostNotAllowed):  # and the pre-check refuses a host no longer listed
        build_teacher(spec, 10, ["127.0.0.1"])
