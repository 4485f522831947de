"""The remote teacher (models/remote_teacher.py) against real loopback HTTP servers.

Two servers: kdaudit's own `TeacherServer` serving a seeded cnn-4-8-8-16 (with its failure
knobs), and a scripted stdlib server that answers whatever a test tells it to (bad statuses,
malformed bodies). Everything is digits-sized; the whole file takes a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, get_args

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from kdaudit.core.errors import InputError, RemoteTeacherError, TeacherUnavailableError
from kdaudit.distill.datafree import teacher_has_features, teacher_is_torch
from kdaudit.distill.losses import soft_kl
from kdaudit.models import build_model
from kdaudit.models.remote_teacher import RemoteResponse, RemoteTeacher, RemoteTeacherSpec
from kdaudit.teacher_server import RESPONSES, register, start_teacher_server

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cnn-4-8-8-16", 10, 1).eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g)


@contextlib.contextmanager
def served(model: torch.nn.Module, response: str = "logits", **knobs: Any) -> Iterator[tuple[Any, str]]:
    server, url = start_teacher_server(model, response, **knobs)
    try:
        yield server, url
    finally:
        server.stop()


def eventually(pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    """The server bumps its counter just after writing the answer the client already read."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def teacher(url: str, response: str = "logits", **kw: Any) -> RemoteTeacher:
    kw.setdefault("timeout_s", 5)
    kw.setdefault("backoff_s", 0.001)
    return RemoteTeacher(RemoteTeacherSpec(url=url, response=response, **kw), num_classes=10)


def local_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# -- the three response kinds ---------------------------------------------------------------


@pytest.mark.parametrize("max_batch,concurrency", [(8, 3), (256, 4), (1, 1), (5, 8)])
def test_logits_match_local_model_in_order(model, max_batch, concurrency):
    x = images(37)
    with served(model) as (server, url):
        t = teacher(url, max_batch=max_batch, concurrency=concurrency)
        out = t(x)
        assert eventually(lambda: server.images_served_ok == 37)
    assert out.dtype == torch.float32 and out.shape == (37, 10) and out.device == x.device
    assert torch.allclose(out, local_logits(model, x), atol=1e-6)
    assert t.requests_sent == math.ceil(37 / max_batch) and t.requests_failed == 0
    assert t.images_answered == 37
    assert t(torch.zeros(0, 1, 8, 8)).shape == (0, 10) and t.requests_sent == math.ceil(37 / max_batch)
    t.close()


def test_probabilities_become_log_probabilities(model):
    x = images(20)
    with served(model, "probabilities") as (_, url):
        out = teacher(url, "probabilities", max_batch=6)(x)
    ref = F.log_softmax(local_logits(model, x), dim=1)
    assert torch.allclose(out, ref, atol=1e-5)
    student = torch.randn(20, 10)
    assert torch.isfinite(soft_kl(out, student, 4.0))


def test_labels_become_one_hot_log_view(model):
    x = images(23)
    with served(model, "labels") as (_, url):
        out = teacher(url, "labels", max_batch=4, concurrency=2)(x)
    ref = local_logits(model, x).argmax(dim=1)
    assert torch.equal(out.argmax(dim=1), ref)
    assert torch.equal((out == 0).sum(dim=1), torch.ones(23, dtype=torch.long))
    assert bool(((out == 0) | (out == float("-inf"))).all())
    # the KL losses accept the view: the teacher's softmax is the one-hot label
    assert torch.allclose(F.softmax(out, dim=1), F.one_hot(ref, 10).float())
    loss = soft_kl(out, torch.randn(23, 10, requires_grad=True), 4.0)
    assert torch.isfinite(loss)


# -- failures -------------------------------------------------------------------------------


def test_flaky_slow_server_still_answers_each_image_once(model):
    x = images(60)
    # request k fails (503) when k % 3 == 0 and sleeps past the client's timeout when k % 4 == 0
    with served(model, fail_every=3, slow_every=4, slow_seconds=1.5) as (server, url):
        t = teacher(url, max_batch=6, concurrency=3, timeout_s=0.5, max_retries=20)
        out = t(x)
        assert eventually(lambda: server.images_served_ok == 60)
        assert server.requests_seen == t.requests_sent
    assert torch.allclose(out, local_logits(model, x), atol=1e-6)
    assert t.images_answered == 60 == server.images_served_ok
    assert t.requests_failed >= 3  # requests 3, 4, 6, 8, 9, ... cannot have succeeded
    assert t.requests_sent == 10 + t.requests_failed


def test_always_failing_server_raises_unavailable(model):
    with served(model, fail_every=1) as (_, url):
        t = teacher(url, max_batch=5, concurrency=2, max_retries=3)
        with pytest.raises(TeacherUnavailableError) as ei:
            t(images(20))
    msg = str(ei.value)
    assert ei.value.context == "remote teacher"
    assert msg.startswith(f"{url} failed 4 times (last: HTTP 503); 0 of 20 images answered")
    assert "\n" not in msg
    assert t.images_answered == 0 and t.requests_sent == t.requests_failed
    assert 4 <= t.requests_sent <= 8  # the second worker stops once the first chunk gives up


def test_unavailable_message_counts_images_answered_before_giving_up():
    def script(n: int, doc: dict) -> tuple[int, Any, dict]:
        if n <= 2:
            return 200, {"outputs": [[0.0] * 10] * doc["shape"][0]}, {}
        return 503, b"overloaded", {}

    with scripted(script) as (_, url):
        t = teacher(url, max_batch=500, concurrency=1, max_retries=2)
        with pytest.raises(TeacherUnavailableError, match=r"failed 3 times \(last: HTTP 503\); 1,000 of 2,000 images"):
            t(torch.zeros(2000, 1, 2, 2))
    assert t.images_answered == 1000 and t.requests_sent == 5 and t.requests_failed == 3


def test_connection_refused_is_retried_then_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = teacher(f"http://127.0.0.1:{port}/", max_retries=1)
    with pytest.raises(TeacherUnavailableError, match=r"failed 2 times \(last: ConnectError"):
        t(images(3))
    assert t.requests_sent == 2


def test_429_honours_retry_after():
    def script(n: int, doc: dict) -> tuple[int, Any, dict]:
        if n == 1:
            return 429, {"error": "slow down"}, {"Retry-After": "0.4"}
        return 200, {"outputs": [[1.0] * 10] * doc["shape"][0]}, {}

    with scripted(script) as (_, url):
        t = teacher(url, backoff_s=0.0)
        start = time.monotonic()
        out = t(images(4))
        elapsed = time.monotonic() - start
    assert elapsed >= 0.4 and torch.equal(out, torch.ones(4, 10))
    assert t.requests_sent == 2 and t.requests_failed == 1 and t.images_answered == 4


@pytest.mark.parametrize("status", [400, 404, 413, 301])
def test_client_errors_are_not_retried(status):
    with scripted(lambda n, doc: (status, b"bad request: \n  unknown field 'inputs'", {})) as (server, url):
        t = teacher(url, max_retries=5)
        with pytest.raises(RemoteTeacherError) as ei:
            t(images(3))
    assert isinstance(ei.value, InputError) and ei.value.context == "remote teacher"
    assert f"HTTP {status}" in str(ei.value) and "unknown field 'inputs'" in str(ei.value)
    assert t.requests_sent == 1 and server.n == 1 and t.requests_failed == 1


BAD = {
    "not json": ("logits", b"<html>oops</html>", "not JSON"),
    "wrong key": ("logits", {"logits": [[0.0] * 10] * 3}, "key 'outputs'"),
    "not an object": ("logits", [[0.0] * 10] * 3, "JSON object"),
    "too few rows": ("logits", {"outputs": [[0.0] * 10] * 2}, "expected shape (3, 10)"),
    "too few classes": ("logits", {"outputs": [[0.0] * 9] * 3}, "expected shape (3, 10)"),
    "ragged": ("logits", {"outputs": [[0.0] * 10, [0.0] * 9, [0.0] * 10]}, "array of numbers"),
    "strings": ("logits", {"outputs": [["a"] * 10] * 3}, "array of numbers"),
    "nan": ("logits", b'{"outputs": [[NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0,0,0,0,0,0,0,0,0,0], [0,0,0,0,0,0,0,0,0,0]]}', "NaN"),
    "prob > 1": ("probabilities", {"outputs": [[1.5] + [0.0] * 9] * 3}, "[0, 1]"),
    "prob sum 2": ("probabilities", {"outputs": [[0.5] * 4 + [0.0] * 6] * 3}, "sum"),
    "prob all zero": ("probabilities", {"outputs": [[0.0] * 10] * 3}, "sum"),
    "label range": ("labels", {"labels": [0, 10, 3]}, "[0, 9]"),
    "label negative": ("labels", {"labels": [0, -1, 3]}, "[0, 9]"),
    "label float": ("labels", {"labels": [0, 1.5, 3]}, "integers"),
    "label count": ("labels", {"labels": [0, 1]}, "list of 3"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_responses_are_input_errors(case):
    kind, body, fragment = BAD[case]
    with scripted(lambda n, doc: (200, body, {})) as (server, url):
        t = teacher(url, kind, max_retries=5)
        with pytest.raises(RemoteTeacherError) as ei:
            t(images(3))
    assert fragment in str(ei.value)
    assert t.requests_sent == 1 and server.n == 1 and t.images_answered == 0


def test_partial_probability_rows_are_accepted():
    top2 = [[0.7, 0.2] + [0.0] * 8] * 3
    with scripted(lambda n, doc: (200, {"outputs": top2}, {})) as (_, url):
        out = teacher(url, "probabilities")(images(3))
    assert torch.allclose(out[:, :2].exp(), torch.tensor([[0.7, 0.2]] * 3))
    assert bool((out[:, 2:] == float("-inf")).all())


# -- secrets and configuration --------------------------------------------------------------


def test_headers_are_sent_and_never_shown(model):
    secret = "Bearer s3cret-key"
    x = images(5)
    with served(model, require_headers={"Authorization": secret}) as (_, url):
        with pytest.raises(RemoteTeacherError, match="HTTP 401") as ei:
            teacher(url)(x)
        assert "s3cret" not in str(ei.value)
        t = teacher(url + "?key=also-secret", headers={"Authorization": secret})
        assert torch.allclose(t(x), local_logits(model, x), atol=1e-6)
    for shown in (repr(t.spec), str(t), json.dumps(t.spec.public_dict())):
        assert "s3cret" not in shown and "also-secret" not in shown
    public = t.spec.public_dict()
    assert "headers" not in public and public["url"] == url + "?<redacted>"
    assert set(public) == set(RemoteTeacherSpec.model_fields) - {"headers"}


@pytest.mark.parametrize(
    "kw",
    [
        {"url": "ftp://example.org/"},
        {"url": "127.0.0.1:8700"},
        {"url": "http://user:pw@127.0.0.1/"},
        {"url": "http://127.0.0.1:99999/"},
        {"url": "http://127.0.0.1/", "timeout_s": 0},
        {"url": "http://127.0.0.1/", "max_retries": 21},
        {"url": "http://127.0.0.1/", "concurrency": 0},
        {"url": "http://127.0.0.1/", "max_batch": 0},
        {"url": "http://127.0.0.1/", "response": "scores"},
        {"url": "http://127.0.0.1/", "headers": {"X-Key": "a\r\nInjected: 1"}},
        {"url": "http://127.0.0.1/", "retries": 3},
    ],
)
def test_spec_rejects_bad_settings(kw):
    with pytest.raises(ValidationError):
        RemoteTeacherSpec(**kw)


def test_remote_teacher_is_black_box_only():
    t = RemoteTeacher(RemoteTeacherSpec(url="https://api.example.org/v1/predict"), 10)
    assert t.is_remote and not t.has_features and not list(t.parameters())
    assert not teacher_is_torch(t) and not teacher_has_features(t)
    assert set(get_args(RemoteResponse)) == set(RESPONSES)
    with pytest.raises(RemoteTeacherError):
        RemoteTeacher(RemoteTeacherSpec(url="http://127.0.0.1/"), 0)


def test_server_rejects_bad_requests(model):
    import httpx

    with served(model, max_images=4) as (server, url):
        assert httpx.get(url).json()["protocol"] == "kdaudit-remote-teacher/1"
        assert httpx.post(url, content=b"{").status_code == 400
        assert httpx.post(url, json={"inputs": [[[[0.0]]]], "shape": [1, 1, 1]}).status_code == 400
        assert httpx.post(url, json={"inputs": [[[[0.0]]]], "shape": [2, 1, 1, 1]}).status_code == 400
        assert httpx.post(url, json={"inputs": [], "shape": [5, 1, 8, 8]}).status_code == 413
        r = httpx.post(url, json={"inputs": torch.zeros(1, 3, 8, 8).tolist(), "shape": [1, 3, 8, 8]})
        assert r.status_code == 400 and "cannot run" in r.json()["error"]
        assert server.images_served_ok == 0


def test_register_adds_serve_teacher_command():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve-teacher", "t.safetensors", "--arch", "cnn-4-8-8-16"])
    assert (args.dataset, args.teacher_response, args.host, args.port) == ("digits", "logits", "127.0.0.1", 8700)
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve-teacher", "t.safetensors", "--arch", "x", "--teacher-response", "scores"])


# -- a scripted server ----------------------------------------------------------------------


class _ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        srv: Any = self.server
        with srv.lock:
            srv.n += 1
            n = srv.n
        status, payload, headers = srv.script(n, json.loads(raw))
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def scripted(script: Callable[[int, dict], tuple[int, Any, dict]]) -> Iterator[tuple[Any, str]]:
    """A loopback server answering request n (1-based) with script(n, request_json)."""
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedHandler)
    server.daemon_threads = True
    server.script, server.n, server.lock = script, 0, threading.Lock()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
