"""Issue 16 over the API (embedded service, audits executed in-process by the worker's own
function): an ONNX teacher uploaded without an architecture, with and without its declared
preprocessing; the sanity gate fails the audit with the suggestion; contract fields validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kdaudit.service.app import create_app  # noqa: E402
from kdaudit.workers.tasks import execute_audit  # noqa: E402
from tests.helpers import service as h  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract_api")
    settings = h.embedded_settings(root, remote_teacher_hosts=["127.0.0.1"])  # the remote teacher's loopback endpoint
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield {"client": client, "settings": settings, "key": h.new_key(settings, "owner"), "root": root}


def _upload_onnx(env, path: Path, **form: str):
    with open(path, "rb") as fh:
        return env["client"].post("/v1/teachers", headers=h.auth(env["key"]), data={"dataset": "digits", **form},
                                  files={"file": (path.name, fh, "application/octet-stream")})


def _audit(env, teacher_id: str) -> tuple[dict, object]:
    c = env["client"]
    body = h.tiny_audit(teacher_id, attacks=["normal_kd"], force=False)
    r = c.post("/v1/audits", headers={**h.auth(env["key"]), "Idempotency-Key": teacher_id}, json=body)
    assert r.status_code == 202, r.text
    audit_id = r.json()["id"]
    execute_audit(audit_id, env["settings"])
    doc = c.get(f"/v1/audits/{audit_id}", headers=h.auth(env["key"])).json()
    return doc, c.get(f"/v1/audits/{audit_id}/report", headers=h.auth(env["key"]))


def test_onnx_teacher_with_declared_preprocessing_is_audited_at_its_accuracy(env, pixel_teacher):
    path, _, own = pixel_teacher
    r = _upload_onnx(env, path, preprocess="none", expected_accuracy=f"{own:.2f}")
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["architecture"] is None and t["format"] == "onnx"
    assert t["preprocess"]["preset"] == "none" and t["expected_accuracy"] == pytest.approx(round(own, 2))
    doc, report = _audit(env, t["id"])
    assert doc["status"] == "succeeded", doc
    teacher = report.json()["teacher"]
    assert abs(teacher["accuracy"] - own) <= 0.5
    assert (teacher["architecture"], teacher["format"], teacher["access"]) == (None, "onnx", "black_box")
    assert teacher["preprocessing"]["preset"] == "none"


def test_remote_teacher_with_a_declared_contract_is_audited_at_its_accuracy(env, pixel_teacher):
    """The owner's model behind an HTTP endpoint that takes [0, 1] pixels: registered with
    `preprocess: none`, the audit sends it what it expects; without it, the gate stops the audit."""
    from kdaudit.teacher_server import start_teacher_server

    _, model, own = pixel_teacher
    server, url = start_teacher_server(model, "logits")
    c, auth = env["client"], h.auth(env["key"])
    try:
        r = c.post("/v1/teachers/remote", headers=auth, json={"url": url, "response": "logits", "dataset": "digits",
                                                              "preprocess": {"preset": "none"},
                                                              "expected_accuracy": round(own, 2)})
        assert r.status_code == 201, r.text
        t = r.json()
        assert t["format"] == "remote-http" and t["preprocess"]["preset"] == "none"
        assert c.get(t["links"]["self"], headers=auth).json()["preprocess"]["preset"] == "none"
        doc, report = _audit(env, t["id"])
        assert doc["status"] == "succeeded", doc
        teacher = report.json()["teacher"]
        assert abs(teacher["accuracy"] - own) <= 0.5
        assert teacher["preprocessing"]["preset"] == "none" and report.json()["config"]["teacher_input"]["preset"] == "none"

        r = c.post("/v1/teachers/remote", headers=auth, json={"url": url, "response": "logits", "dataset": "digits",
                                                              "expected_accuracy": round(own, 2)})
        assert r.status_code == 201 and r.json()["preprocess"]["preset"] == "dataset", r.text
        doc, _ = _audit(env, r.json()["id"])
        assert doc["status"] == "failed" and "did you mean `none`?" in doc["error"]
    finally:
        server.stop()


def test_onnx_teacher_without_its_preprocessing_fails_with_the_suggestion(env, pixel_teacher):
    path, _, own = pixel_teacher
    r = _upload_onnx(env, path, expected_accuracy=f"{own:.2f}")
    assert r.status_code == 201, r.text
    assert r.json()["preprocess"]["preset"] == "dataset"
    doc, report = _audit(env, r.json()["id"])
    assert doc["status"] == "failed"
    assert doc["error"].startswith("teacher sanity check:") and "did you mean `none`?" in doc["error"]
    assert report.status_code == 409 and report.headers["content-type"].startswith("application/problem+json")
    assert "did you mean `none`?" in report.json()["detail"]


def test_contract_fields_are_validated(env, pixel_teacher, tmp_path):
    path, _, _ = pixel_teacher
    r = _upload_onnx(env, path, preprocess="bogus")
    assert r.status_code == 422 and "unknown preprocessing preset" in r.json()["detail"]
    r = _upload_onnx(env, path, preprocess="none", mean="0.5")
    assert r.status_code == 422 and "`preprocess`" in r.json()["detail"]
    r = _upload_onnx(env, path, expected_accuracy="101")
    assert r.status_code == 422
    r = _upload_onnx(env, path, preprocess="imagenet")  # 3 channel means for grey digits
    assert r.status_code == 422 and "1 channel" in r.json()["detail"]
    r = _upload_onnx(env, path, mean="0.1307", std="0.3081")
    assert r.status_code == 201 and r.json()["preprocess"] == {"preset": "custom", "pixel_scale": None,
                                                                "mean": [0.1307], "std": [0.3081]}
    # a weights file still needs its architecture: the message says how to find it
    weights = h.make_teacher_file(tmp_path / "w.safetensors")
    r = _upload_onnx(env, weights)
    assert r.status_code == 422 and "--arch" in r.json()["detail"] and "inspect" in r.json()["detail"]
