"""`kdaudit selftest`: passes here against the stored ranges, fails when a range excludes the measured value."""

import argparse
import json

import pytest
import torch

from kdaudit.distill import selftest
from kdaudit.distill.selftest import load_expected, measure, run_selftest
from kdaudit.selftest_command import register


@pytest.fixture(scope="module")
def result():
    torch.set_num_threads(2)
    return run_selftest()


def test_selftest_passes_with_the_stored_ranges(result):
    assert result.passed, result.table()
    assert {c.name for c in result.checks} == set(load_expected())
    assert "PASSED" in result.table()


def test_selftest_fails_when_a_range_is_tightened_to_exclude_the_measured_value(result):
    measured = measure(result.report)
    tight = load_expected()
    tight["normal_kd_accuracy"] = [measured["normal_kd_accuracy"] + 0.5, 100.0]
    again = run_selftest(tight, report=result.report)
    assert not again.passed
    assert [c.name for c in again.checks if not c.ok] == ["normal_kd_accuracy"]
    assert "FAIL" in again.table()


def test_cli_exit_codes(result, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(selftest, "run_recipe", lambda device="cpu": result.report)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["selftest"])
    assert args.func(args) == 0
    tight = load_expected()
    tight["teacher_accuracy"] = [0.0, 1.0]
    path = tmp_path / "expected.json"
    path.write_text(json.dumps(tight))
    args = parser.parse_args(["selftest", "--expected", str(path), "--json"])
    capsys.readouterr()
    assert args.func(args) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is False and any(c["name"] == "teacher_accuracy" and not c["ok"] for c in out["checks"])

# The API route (operator-only, run on a worker) is tested in tests/test_hardening.py.
