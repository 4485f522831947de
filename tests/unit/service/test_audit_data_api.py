"""What an API audit trains on and against (issues 16 and 17), run in-process by the worker's own
function on the embedded stack: the label-smoothing baseline switch, and image-folder datasets
named from the operator's `folder_datasets_dir`, never by a path the tenant chooses."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from kdaudit.service.app import create_app  # noqa: E402
from kdaudit.workers.tasks import execute_audit  # noqa: E402
from tests.helpers import service as h  # noqa: E402
from tests.helpers.contract import write_digits_folder  # noqa: E402

FOLDER = "digits-png"


@pytest.fixture(scope="module")
def env(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("audit_data")
    write_digits_folder(root / "datasets" / FOLDER)
    (root / "secret" / "train").mkdir(parents=True)  # a folder outside the dataset root
    (root / "datasets" / "not-a-dataset").mkdir()  # no train/ and test/
    settings = h.embedded_settings(root, folder_datasets_dir=root / "datasets")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = h.new_key(settings, "owner")
        # briefly trained: the sanity gate passes it, so no audit here needs `force`
        r = h.upload(client, key, h.make_trained_teacher_file(root / "t.safetensors"))
        assert r.status_code == 201, r.text
        yield {"client": client, "settings": settings, "key": key, "teacher": r.json()["id"], "root": root}


def _submit(env, **over):
    body = h.tiny_audit(env["teacher"], attacks=["normal_kd"], force=False, **over)
    return env["client"].post("/v1/audits", headers=h.auth(env["key"]), json=body)


def _run(env, **over) -> tuple[dict, dict]:
    """Submit, execute in this process; (the audit resource, its report)."""
    r = _submit(env, **over)
    assert r.status_code == 202, r.text
    audit_id = r.json()["id"]
    execute_audit(audit_id, env["settings"])
    c, auth = env["client"], h.auth(env["key"])
    doc = c.get(f"/v1/audits/{audit_id}", headers=auth).json()
    assert doc["status"] == "succeeded", doc
    report = c.get(f"/v1/audits/{audit_id}/report", headers=auth)
    assert report.status_code == 200, report.text
    return doc, report.json()


def test_label_smoothing_baseline_is_on_by_default_and_can_be_turned_off(env):
    r = _submit(env)
    assert r.status_code == 202, r.text
    assert r.json()["config"]["label_smoothing"] == 0.1  # as in the CLI
    assert r.json()["progress"]["runs_total"] == 3  # scratch, label smoothing, normal_kd
    for off in (None, 0):
        r = _submit(env, label_smoothing=off, seeds=2)
        assert r.status_code == 202 and r.json()["config"]["label_smoothing"] is None, r.text
    doc = h.problem(_submit(env, label_smoothing=1.0), 422)
    assert "label_smoothing" in str(doc["errors"])

    doc, report = _run(env, label_smoothing=None)
    assert doc["progress"]["runs_total"] == 2  # scratch, normal_kd
    assert sorted(run["kind"] for run in report["runs"]) == ["normal_kd", "scratch"]
    assert report["label_smoothing"] == [] and report["config"]["label_smoothing"] is None
    assert all(a["vs_label_smoothing"] is None for a in report["attacks"])


def test_an_operator_image_folder_is_audited_by_name(env):
    doc, report = _run(env, dataset="folder", dataset_name=FOLDER)
    assert doc["config"]["dataset"] == "folder"
    assert report["dataset"]["class_names"] == [f"digit{i}" for i in range(10)]
    assert report["dataset"]["skipped_files"] == 1  # the broken PNG
    assert report["teacher"]["accuracy"] > 50  # the teacher's own task: the gate passed without force


@pytest.mark.parametrize("name", ["../secret", "/etc", "..", ".hidden", "a/b", "a\\b", "missing", ""])
def test_a_folder_is_named_never_a_path(env, name):
    doc = h.problem(_submit(env, dataset="folder", dataset_name=name), 422)
    if name == "missing":
        assert "no image-folder dataset named 'missing'" in doc["detail"] and FOLDER in doc["detail"]


def test_folder_fields_go_together(env):
    assert "needs `dataset_name`" in h.problem(_submit(env, dataset="folder"), 422)["detail"]
    assert "for dataset 'folder'" in h.problem(_submit(env, dataset_name=FOLDER), 422)["detail"]
    assert "for dataset 'folder'" in h.problem(_submit(env, image_size=8), 422)["detail"]
    doc = h.problem(_submit(env, dataset="folder", dataset_name=FOLDER, image_size=2), 422)
    assert "image_size" in str(doc["errors"])
    doc = h.problem(_submit(env, dataset="folder", dataset_name="not-a-dataset"), 422)
    assert "train/<class>/" in doc["detail"] and str(env["root"]) not in doc["detail"]  # the server's path stays private


def test_folder_datasets_are_off_unless_the_operator_sets_a_root(tmp_path):
    from kdaudit.core.errors import InputError
    from kdaudit.distill.folder_data import named_folder

    with pytest.raises(InputError, match="folder_datasets_dir"):
        named_folder(None, FOLDER)
    (tmp_path / FOLDER).mkdir()
    assert named_folder(tmp_path, FOLDER) == tmp_path / FOLDER
    with pytest.raises(InputError, match="never a path"):
        named_folder(tmp_path, "../" + FOLDER)
