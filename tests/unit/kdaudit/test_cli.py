"""`kdaudit protect` and `kdaudit audit` end to end, and their one-line errors."""

import argparse
import json
import subprocess
import sys

import pytest

from kdaudit.cli import main
from kdaudit.distill.report import Report


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rc = main(["protect", "--dataset", "digits", "--arch", "cnn-8-8-8-16", "--teacher-epochs", "2", "--nasty-epochs", "2",
               "--no-verify", "--out", str(d / "nasty.safetensors"), "--normal-out", str(d / "normal.safetensors"),
               "--quiet", "--device", "cpu"])
    assert rc == 0
    return d


def test_protect_writes_both_teachers(teachers, capsys):
    assert (teachers / "nasty.safetensors").stat().st_size > 0
    assert (teachers / "normal.safetensors").stat().st_size > 0


def test_audit_writes_a_valid_report_and_prints_the_table(teachers, capsys):
    out = teachers / "report.json"
    rc = main(["audit", str(teachers / "nasty.safetensors"), "--arch", "cnn-8-8-8-16", "--dataset", "digits",
               "--epochs", "2", "--seeds", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    report = Report.model_validate_json(out.read_text())
    assert report.teacher.architecture == "cnn-8-8-8-16"
    assert report.config["schedule"]["epochs"] == 2
    printed = capsys.readouterr().out
    assert "skeptical" in printed and "verdict" in printed.lower()
    assert json.loads(out.read_text())["schema"] == "kdaudit.report/v1"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdaudit.cli", *args], capture_output=True, text=True, timeout=120)


def test_missing_teacher_file_is_one_line(tmp_path):
    p = run_cli("audit", str(tmp_path / "nope.safetensors"), "--arch", "cnn-8-8-8-16", "--out", str(tmp_path / "r.json"))
    assert p.returncode != 0
    assert p.stderr.startswith("kdaudit: cannot load teacher:")
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_bad_options_are_one_line(teachers, tmp_path):
    p = run_cli("audit", str(teachers / "nasty.safetensors"), "--arch", "cnn-8-8-8-16", "--students", "vgg99")
    assert p.returncode == 2 and "unknown architecture 'vgg99'" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("audit", str(teachers / "nasty.safetensors"), "--arch", "cnn-8-8-8-16", "--seeds", "0")
    assert p.returncode == 2 and p.stderr.startswith("kdaudit: invalid input: seeds")
    # weights of one architecture declared as another
    p = run_cli("audit", str(teachers / "nasty.safetensors"), "--arch", "cnn-4-8-8-16", "--out", str(tmp_path / "r.json"))
    assert p.returncode == 1 and p.stderr.startswith("kdaudit: cannot load teacher:") and "Traceback" not in p.stderr


# ---------------------------------------------------------------- one vocabulary


@pytest.mark.parametrize("argv, instead", [
    (["audit", "t.safetensors", "--budget", "5"], "use --query-budget"),
    (["audit", "t.safetensors", "--output", "top2"], "use --teacher-output"),
    (["protect", "--tau", "2"], "use --temperature"),
    (["register-remote", "--header", "X-Key: v"], "use --teacher-header (NAME=VALUE)"),
    (["serve-teacher", "t.safetensors", "--response", "labels"], "use --teacher-response"),
    (["report", "a1", "--output", "r.json"], "use --out"),
])
def test_a_renamed_flag_says_what_to_use_instead(argv, instead, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and instead in capsys.readouterr().err


AUDIT_FLAGS = ["--attacks", "normal_kd,datafree_dfad", "--students", "cnn-4-8-8-16,cnn-8-8-8-16", "--seeds", "2",
               "--epochs", "3", "--lr", "0.1", "--temperature", "3", "--ac-stage", "2", "--df-iterations", "7",
               "--teacher-output", "probs", "--query-budget", "5000", "--billing", "every", "--sweep-fractions", "0.5,0.25",
               "--sweep-ac-stages", "1,3", "--sweep-grid", "--panel", "standard", "--force", "--expected-accuracy", "91.5",
               "--label-smoothing", "0"]


def test_audit_and_submit_take_the_same_audit_flags_as_typed_api_fields():
    from kdaudit.audit_command import audit_config
    from kdaudit.audit_options import audit_request_fields
    from kdaudit.cli import build_parser
    from kdaudit.service.schemas import AuditCreate

    parser = build_parser()
    local = parser.parse_args(["audit", "t.safetensors", *AUDIT_FLAGS])
    remote = parser.parse_args(["submit", "t1", *AUDIT_FLAGS])
    fields = audit_request_fields(remote)
    assert audit_request_fields(local) == fields
    assert fields["sweep"] == {"fractions": [0.5, 0.25], "ac_stages": [1, 3], "mode": "grid"}
    assert fields["threat"] == {"output": "probs", "query_budget": 5000, "billing": "every"}
    AuditCreate.model_validate_json(json.dumps({"teacher_id": "t1", **fields}), strict=True)  # the API's strict check
    config = audit_config(local)
    assert config.datafree.budget is None and config.threat.query_budget == 5000  # one budget, every attack
    assert config.schedule.epochs == 3 and config.kd.temperature == 3 and config.expected_accuracy == 91.5
    assert fields["label_smoothing"] == 0 and config.label_smoothing is None  # 0: no label-smoothing baseline
    assert audit_config(parser.parse_args(["audit", "t.safetensors"])).label_smoothing == 0.1  # unset: the default
    assert audit_request_fields(parser.parse_args(["submit", "t1"])) == {}  # unset: the server's defaults apply


def test_submit_sends_the_audit_flags(monkeypatch, capsys):
    from kdaudit.service.client import Client

    sent = {}

    def submit(self, teacher_id, *, idempotency_key=None, **options):
        sent.update(options, teacher_id=teacher_id)
        return {"id": "a1", "status": "queued", "progress": {"runs_total": 4}}

    monkeypatch.setattr(Client, "submit", submit)
    assert main(["submit", "t1", "--api-key", "k", "--attacks", "normal_kd", "--sweep-outputs", "top5,label",
                 "--label-smoothing", "0", "--dataset", "folder", "--dataset-name", "shop-photos", "--image-size", "32"]) == 0
    assert sent == {"teacher_id": "t1", "attacks": ["normal_kd"], "sweep": {"outputs": ["top5", "label"]}, "label_smoothing": 0.0,
                    "dataset": "folder", "dataset_name": "shop-photos", "image_size": 32}
    assert capsys.readouterr().out.strip() == "a1"


def test_remote_teacher_flags_take_one_header_syntax(monkeypatch):
    from kdaudit.cli import build_parser
    from kdaudit.core.errors import InputError
    from kdaudit.remote_teacher_args import remote_teacher_fields

    monkeypatch.setenv("KDA_TEST_KEY", "s3cret")
    parser = build_parser()
    remote = ["--teacher-url", "http://127.0.0.1:9/", "--teacher-response", "labels", "--teacher-header", "X-A=b=c",
              "--teacher-header-env", "X-Key=KDA_TEST_KEY", "--teacher-max-retries", "2", "--teacher-max-batch", "64"]
    expected = {"url": "http://127.0.0.1:9/", "response": "labels", "headers": {"X-A": "b=c", "X-Key": "s3cret"},
                "max_retries": 2, "max_batch": 64}
    assert remote_teacher_fields(parser.parse_args(["audit", *remote])) == expected
    assert remote_teacher_fields(parser.parse_args(["register-remote", "--dataset", "digits", *remote])) == expected
    with pytest.raises(InputError, match="NAME=VALUE"):
        remote_teacher_fields(parser.parse_args(["audit", "--teacher-url", "http://x/", "--teacher-header", "X-A: b"]))


def test_serve_embedded_ignores_the_production_settings(monkeypatch, tmp_path):
    from kdaudit.service_state import apply_state_options
    from kdaudit.store.settings import get_service_settings

    monkeypatch.setenv("KDAUDIT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KDAUDIT_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("KDAUDIT_BROKER_URL", "redis://127.0.0.1:1/0")
    try:
        apply_state_options(argparse.Namespace(data_dir=str(tmp_path), embedded=True))
        settings = get_service_settings()
        assert settings.embedded and settings.database_url is None and settings.data_dir == tmp_path.resolve()
    finally:
        monkeypatch.undo()
        get_service_settings.cache_clear()
