"""`kdaudit compare`: per (attack, student) differences, flagged beyond seed noise; verdict change."""

import argparse

import pytest
import torch

from kdaudit.compare_command import register
from kdaudit.distill.compare import compare_reports
from kdaudit.distill.config import AuditConfig
from kdaudit.distill.report import AccuracyStats
from kdaudit.distill.runner import run_audit
from kdaudit.models import build_model


@pytest.fixture(scope="module")
def reports():
    torch.manual_seed(0)
    teacher = build_model("cnn-8-8-8-16", 10, 1).eval()
    base = {"teacher_arch": "cnn-8-8-8-16", "attacks": ["normal_kd"], "seeds": 2, "schedule": {"epochs": 2}, "device": "cpu",
            "force": True}  # a random teacher: past the sanity gate
    a = run_audit(AuditConfig(**base), teacher, "t")
    b = run_audit(AuditConfig(**base, fraction=0.3), teacher, "t")  # the thief has less data
    return a, b


def test_compare_two_real_reports(reports, tmp_path, capsys):
    a, b = reports
    c = compare_reports(a, b)
    assert {(r.attack, r.student) for r in c.rows} == {("scratch", "cnn-4-8-8-16"), ("normal_kd", "cnn-4-8-8-16")}
    for r in c.rows:
        sa = next(x.accuracy for x in [*a.scratch, *a.attacks] if getattr(x, "attack", "scratch") == r.attack)
        sb = next(x.accuracy for x in [*b.scratch, *b.attacks] if getattr(x, "attack", "scratch") == r.attack)
        assert r.diff == pytest.approx(sb.mean - sa.mean, abs=1e-3)
        assert r.flagged == (abs(r.diff) > 2 * max(sa.std, sb.std) and abs(r.diff) > 0.5)
    assert c.verdict_a == a.summary.verdict and c.verdict_b == b.summary.verdict
    assert compare_reports(a, a).rows[0].flagged is False

    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(a.to_json())
    pb.write_text(b.to_json())
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["compare", str(pa), str(pb)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "normal_kd" in out and "verdict:" in out


def test_flag_needs_both_noise_and_half_a_point(reports):
    a, _ = reports
    shifted = a.model_copy(deep=True)
    kd = next(x for x in shifted.attacks if x.attack == "normal_kd")
    kd.accuracy = AccuracyStats(mean=kd.accuracy.mean + 0.4, std=0.0, runs=[kd.accuracy.mean + 0.4])
    a1 = a.model_copy(deep=True)
    next(x for x in a1.attacks if x.attack == "normal_kd").accuracy = AccuracyStats(mean=kd.accuracy.mean - 0.4, std=0.0, runs=[0.0])
    row = next(r for r in compare_reports(a1, shifted).rows if r.attack == "normal_kd")
    assert not row.flagged  # 0.4 pts: under the 0.5-pt minimum
    kd.accuracy = AccuracyStats(mean=kd.accuracy.mean + 3.0, std=0.0, runs=[0.0])
    row = next(r for r in compare_reports(a1, shifted).rows if r.attack == "normal_kd")
    assert row.flagged
    kd.accuracy = AccuracyStats(mean=kd.accuracy.mean, std=5.0, runs=[0.0])
    row = next(r for r in compare_reports(a1, shifted).rows if r.attack == "normal_kd")
    assert not row.flagged  # 3.4 pts but the seeds spread 2 x 5 pts


def test_unreadable_report_is_an_input_error(tmp_path):
    from kdaudit.core.errors import InputError

    bad = tmp_path / "x.json"
    bad.write_text("{}")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["compare", str(bad), str(bad)])
    with pytest.raises(InputError):
        args.func(args)
