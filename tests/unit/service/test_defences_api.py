"""POST /v1/defences (issue 19): a defence comparison is an audit of kind 'defend', run by the
audit job on the embedded stack (in-process, like test_audit_data_api.py), its report the
`kdaudit.defences/v1` matrix as JSON and as an HTML page. Serving-time defences only, tiny
epochs and data, two seeds, a briefly trained teacher (the sanity gate refuses random ones)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from kdaudit.service.app import create_app
from kdaudit.workers.tasks import execute_audit
from tests.helpers import service as h

DEFENCES = ["none", "top1", "round1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("defences_api")
    settings = h.embedded_settings(root)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = h.new_key(settings, "owner")
        r = h.upload(client, key, h.make_trained_teacher_file(root / "t.safetensors"))
        assert r.status_code == 201, r.text
        yield {"client": client, "settings": settings, "key": key, "teacher": r.json()["id"], "root": root}


def _body(env, **over) -> dict:
    return {"teacher_id": env["teacher"], "defences": DEFENCES, "seeds": 2, "epochs": 1, "fraction": 0.5,
            "device": "cpu", **over}


def test_a_defence_comparison_runs_like_an_audit_and_reports_its_matrix(env):
    c, auth = env["client"], h.auth(env["key"])
    r = c.post("/v1/defences", headers={**auth, "Idempotency-Key": "defend-1"}, json=_body(env))
    assert r.status_code == 202, r.text
    doc = r.json()
    assert doc["kind"] == "defend" and doc["status"] == "queued" and r.headers["Location"] == f"/v1/audits/{doc['id']}"
    assert doc["config"]["defences"] == DEFENCES and doc["progress"]["runs_total"] > 0
    again = c.post("/v1/defences", headers={**auth, "Idempotency-Key": "defend-1"}, json=_body(env))
    assert again.status_code == 202 and again.json()["id"] == doc["id"] and again.headers["Idempotent-Replayed"] == "true"

    assert execute_audit(doc["id"], env["settings"]) == "succeeded"
    done = c.get(f"/v1/audits/{doc['id']}", headers=auth).json()
    assert done["status"] == "succeeded" and done["kind"] == "defend" and done["progress"]["fraction"] == 1.0
    listed = c.get("/v1/audits", headers=auth).json()["items"]
    assert any(a["id"] == doc["id"] and a["kind"] == "defend" for a in listed)

    matrix = c.get(f"/v1/audits/{doc['id']}/report", headers=auth)
    assert matrix.status_code == 200, matrix.text
    m = matrix.json()
    assert m["schema"] == "kdaudit.defences/v1"
    assert [row["name"] for row in m["rows"]] == DEFENCES
    assert m["recommendation"]["rule"] and "defence" in m["recommendation"]
    assert all(row["attacks"] for row in m["rows"])

    page = c.get(f"/v1/audits/{doc['id']}/report.html", headers=auth)
    assert page.status_code == 200, page.text
    assert 'id="defence-matrix"' in page.text and "<svg" in page.text and "round1" in page.text
    assert m["recommendation"]["rule"].split(",")[0] in page.text

    assert c.delete(f"/v1/audits/{doc['id']}", headers=auth).status_code == 204


def test_a_bad_defence_spec_is_refused_at_the_edge(env):
    doc = h.problem(env["client"].post("/v1/defences", headers=h.auth(env["key"]),
                                       json=_body(env, defences=["none", "top1+round1"])), 422)
    assert "defences" in str(doc["errors"]) and "two serving policies" in doc["detail"]
    doc = h.problem(env["client"].post("/v1/defences", headers=h.auth(env["key"]),
                                       json=_body(env, defences=["shiny"])), 422)
    assert "unknown output policy" in doc["detail"]
    h.problem(env["client"].post("/v1/defences", headers=h.auth(env["key"]), json=_body(env, epochs="1x")), 422)


def test_a_nasty_teacher_needs_weights_the_service_holds(env):
    """An ONNX teacher is a black box: no nasty teacher can be trained from it (422, before anything is queued)."""
    pytest.importorskip("onnx")
    from kdaudit.models.registry import build_model
    from tests.helpers.contract import export_onnx

    c, auth = env["client"], h.auth(env["key"])
    path = export_onnx(build_model(h.TEACHER_ARCH, 10, 1).eval(), env["root"] / "t.onnx")
    with open(path, "rb") as fh:
        r = c.post("/v1/teachers", headers=auth, data={"dataset": "digits"},
                   files={"file": (path.name, fh, "application/octet-stream")})
    assert r.status_code == 201, r.text
    doc = h.problem(c.post("/v1/defences", headers=auth, json=_body(env, teacher_id=r.json()["id"],
                                                                      defences=["none", "nasty@0.04+top1"])), 422)
    assert "nasty@0.04+top1" in doc["detail"] and "weights" in doc["detail"]
    ok = c.post("/v1/defences", headers=auth, json=_body(env, teacher_id=r.json()["id"], defences=["none", "top1"]))
    assert ok.status_code == 202, ok.text


def test_the_web_ui_offers_a_defence_comparison(env):
    page = env["client"].get("/")
    assert page.status_code == 200 and 'id="defend-form"' in page.text and "nasty+top1" in page.text
    script = env["client"].get("/static/defences.js")
    assert script.status_code == 200 and "/v1/defences" in script.text


def test_a_queued_comparison_is_cancelled_like_an_audit(env):
    c, auth = env["client"], h.auth(env["key"])
    r = c.post("/v1/defences", headers=auth, json=_body(env))
    assert r.status_code == 202, r.text
    aid = r.json()["id"]
    assert c.post(f"/v1/audits/{aid}/cancel", headers=auth).json()["status"] == "cancelled"
    assert execute_audit(aid, env["settings"]).startswith("skipped")
    assert c.get(f"/v1/audits/{aid}/report", headers=auth).status_code == 409


def test_a_remote_teacher_is_refused_with_a_reason():
    """Serving defences are applied to the teacher's own scores; a remote endpoint's answers are already
    served, so the comparison is refused at the edge (422), never run on the wrong scores."""
    from types import SimpleNamespace

    from kdaudit.service.defence_plan import DefenceCreate, build_defend_config
    from kdaudit.service.problems import Problem
    from kdaudit.store.remote_teachers import REMOTE_FORMAT

    teacher = SimpleNamespace(id="t1", format=REMOTE_FORMAT, architecture=None, dataset="digits")
    with pytest.raises(Problem) as e:
        build_defend_config(DefenceCreate(teacher_id="t1", defences=["top1"]), teacher)
    assert e.value.status == 422 and "remote teacher" in str(e.value.detail)


def test_a_redelivered_comparison_keeps_the_runs_its_earlier_attempt_recorded(env):
    """The worker's side of resume (workers/defend_job.py): runs recorded under `<stage>:<run key>` by an
    earlier attempt are handed back to the engine by stage and not trained again, so the matrix holds
    those very records (one of them marked here with an accuracy no training gives)."""
    from kdaudit.store import repo
    from kdaudit.store.db import session_factory

    c, auth, settings = env["client"], h.auth(env["key"]), env["settings"]
    first = c.post("/v1/defences", headers={**auth, "Idempotency-Key": "resume-a"}, json=_body(env, seeds=1)).json()["id"]
    assert execute_audit(first, settings) == "succeeded"
    second = c.post("/v1/defences", headers={**auth, "Idempotency-Key": "resume-b"}, json=_body(env, seeds=1)).json()["id"]
    with session_factory(settings.resolved_database_url)() as s:
        earlier = repo.done_runs(s, first)
        assert earlier and all(":" in k and k.split(":")[0].startswith("owner/") for k in earlier)
        marked = next(k for k, r in earlier.items() if r["kind"] == "normal_kd")
        for key, record in earlier.items():  # what the second audit's crashed first attempt had recorded
            repo.record_run(s, second, key, {**record, "test_accuracy": 12.5} if key == marked else record)
        s.commit()
    assert execute_audit(second, settings) == "succeeded"
    rows = c.get(f"/v1/audits/{second}/report", headers=auth).json()["rows"]
    kd = [cell for r in rows for cell in r["attacks"] if cell["attack"] == "normal_kd" and r["name"] == "none"]
    assert kd and kd[0]["accuracy"]["runs"] == [12.5], kd  # the recorded run, not a retrained one
