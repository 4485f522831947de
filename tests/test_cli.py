"""`kdaudit protect` and `kdaudit audit` end to end, and their one-line errors."""

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
