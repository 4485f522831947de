"""The kdaudit.report/v1 schema and the verdict rule."""

import json

import pytest

from kdaudit.distill.report import AccuracyStats, AttackResult, Report, decide_verdict, delta_acc


def attack(name: str, runs: list[float], scratch_mean: float, student: str = "s") -> AttackResult:
    stats = AccuracyStats.of(runs)
    return AttackResult(attack=name, student=student, accuracy=stats, delta_base=round(stats.mean - scratch_mean, 3),
                        teacher_queries=100, seconds=1.0)


def test_accuracy_stats_mean_and_sample_std():
    s = AccuracyStats.of([90.0, 92.0, 94.0])
    assert (s.mean, s.std, s.runs) == (92.0, 2.0, [90.0, 92.0, 94.0])
    assert AccuracyStats.of([91.0]).std == 0.0


@pytest.mark.parametrize(
    ("kd_runs", "sk_runs", "expected", "best"),
    [
        ([97.0, 97.2], [99.0, 99.2], "leaks", "skeptical"),     # +2 pts over scratch, tiny noise
        ([90.0, 91.0], [92.0, 92.4], "resists", "skeptical"),   # everything well below scratch
        ([97.0, 97.4], [97.2, 97.6], "inconclusive", "skeptical"),  # within 0.5 pts
        ([96.0, 100.0], [90.0, 91.0], "inconclusive", "normal_kd"),  # +1 pt but std 2.8: noise
    ],
)
def test_verdict_rule(kd_runs, sk_runs, expected, best):
    scratch = {"s": AccuracyStats.of([97.0, 97.2])}
    attacks = [attack("normal_kd", kd_runs, 97.1), attack("skeptical", sk_runs, 97.1)]
    got_best, verdict = decide_verdict(scratch, attacks)
    assert verdict == expected
    assert got_best.attack == best


def test_delta_acc_uses_the_better_skeptical_variant():
    attacks = [attack("normal_kd", [90.0], 95.0), attack("skeptical", [94.0], 95.0), attack("skeptical_e", [95.5], 95.0)]
    assert delta_acc(attacks, "s") == 5.5
    assert delta_acc(attacks[:1], "s") is None


def test_report_json_round_trip_keeps_the_schema_tag():
    scratch = {"s": AccuracyStats.of([97.0, 97.2])}
    attacks = [attack("normal_kd", [97.0, 97.2], 97.1)]
    best, verdict = decide_verdict(scratch, attacks)
    report = Report.model_validate({
        "teacher": {"architecture": "cnn-8-8-8-16", "sha256": "ab" * 32, "accuracy": 99.0, "num_classes": 10},
        "dataset": {"name": "digits", "train_size": 1080, "val_size": 120, "test_size": 597, "fraction": 1.0},
        "scratch": [{"student": "s", "accuracy": scratch["s"].model_dump()}],
        "attacks": [a.model_dump() for a in attacks],
        "summary": {"delta_acc": None, "best_attack": best.attack, "best_student": "s", "verdict": verdict},
        "config": {"seeds": 2},
        "environment": {"kdaudit": "0.1.0", "torch": "2.13.0", "device": "cpu"},
    })
    doc = json.loads(report.to_json())
    assert doc["schema"] == "kdaudit.report/v1"
    assert set(doc) >= {"teacher", "dataset", "scratch", "attacks", "summary", "config", "environment"}
    assert Report.model_validate_json(report.to_json()) == report
