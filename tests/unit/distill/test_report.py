"""The kdaudit.report/v1 schema, the intervals and both verdict rules (leakage, protection) on hand-built numbers."""

import json

import pytest

from kdaudit.distill.intervals import MIN_EFFECT_PTS, compare, seeds_to_settle
from kdaudit.distill.report import AccuracyStats, AttackResult, Report, delta_acc
from kdaudit.distill.verdicts import Baselines, headline, judge


def decide_verdict(scratch, attacks, smooth=None):
    """The leakage verdict as the runner computes it: (best attack, verdict)."""
    leak, _ = judge(attacks, Baselines(scratch, smooth or {}, teacher_accuracy=99.0, test_size=597))
    return leak.best, leak.verdict


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
        ([97.0, 97.2, 97.1], [99.0, 99.2, 99.1], "leaks", "skeptical"),     # +2 pts over scratch, tiny noise
        ([90.0, 91.0, 90.5], [92.0, 92.4, 92.2], "resists", "skeptical"),   # everything well below scratch
        ([97.0, 97.4, 97.2], [97.2, 97.6, 97.4], "inconclusive", "skeptical"),  # under the minimum effect
        ([96.0, 100.0, 98.0], [90.0, 91.0, 90.5], "inconclusive", "normal_kd"),  # +1 pt but std 2: noise
        ([97.0, 97.2], [99.0, 99.2], "leaks", "skeptical"),  # two seeds with tight spreads can settle it
        ([97.0, 97.2], [98.6, 99.6], "inconclusive", "skeptical"),  # two seeds, one spread: Welch df ~1, far too wide
        ([97.1], [99.1], "inconclusive", "skeptical"),  # one seed never concludes
    ],
)
def test_verdict_rule(kd_runs, sk_runs, expected, best):
    scratch = {"s": AccuracyStats.of([97.0, 97.2, 97.1][: len(kd_runs)])}
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


# ---------------------------------------------------------------- intervals


def test_welch_interval_matches_scipy():
    from scipy import stats

    a, b = [93.3, 93.9, 94.5], [97.1, 98.7, 99.2]
    c = compare("normal_kd", a, "scratch", b, "s")
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert c.interval.low == pytest.approx(ci.low, abs=1e-3) and c.interval.high == pytest.approx(ci.high, abs=1e-3)
    assert c.outcome == "lower" and c.seeds_needed is None  # settled: nothing more to ask for


def test_accuracy_stats_carry_a_t_interval():
    from scipy import stats

    runs = [90.0, 92.0, 94.0]
    lo, hi = stats.t.interval(0.95, 2, loc=92.0, scale=2.0 / 3**0.5)
    ci = AccuracyStats.of(runs).ci95
    assert (ci.low, ci.high) == (pytest.approx(lo, abs=1e-3), pytest.approx(hi, abs=1e-3))
    assert AccuracyStats.of([91.0]).ci95 is None


def test_borderline_intervals():
    # the interval excludes zero but the difference is under the minimum effect: not an effect
    tiny = compare("a", [97.5, 97.6, 97.55], "b", [97.0, 97.05, 97.1], "s")
    assert tiny.interval.low > 0 and tiny.diff < MIN_EFFECT_PTS and tiny.outcome == "unsettled"
    assert tiny.seeds_needed is None  # no number of seeds makes 0.5 pts a 1-pt effect
    # a big difference whose interval just includes zero: unsettled, and more seeds would likely settle it
    wide = compare("a", [95.0, 99.0, 97.0], "b", [94.0, 96.0, 95.0], "s")
    assert wide.interval.low < 0 < wide.interval.high and wide.outcome == "unsettled"
    assert wide.seeds_needed is not None and wide.seeds_needed > 3
    n = wide.seeds_needed  # with that many seeds and the same spreads, the interval excludes zero
    again = compare("a", [97.0 + 2.0 * x for x in _unit(n)], "b", [95.0 + 1.0 * x for x in _unit(n)], "s")
    assert again.outcome == "higher"
    assert seeds_to_settle(0.4, 1.0, 1.0, 3) is None


def _unit(n: int) -> list[float]:
    """n values with mean 0 and sample std 1."""
    import statistics

    raw = [float(i) for i in range(n)]
    m, s = statistics.fmean(raw), statistics.stdev(raw)
    return [(x - m) / s for x in raw]


# ---------------------------------------------------------------- protection rule


def _world(scratch_runs, kd_runs, sk_runs, *, ls_runs=None, teacher=99.0):
    scratch = {"s": AccuracyStats.of(scratch_runs)}
    smooth = {"s": AccuracyStats.of(ls_runs)} if ls_runs else {}
    mean = scratch["s"].mean
    attacks = [attack("normal_kd", kd_runs, mean), attack("skeptical", sk_runs, mean)]
    base = Baselines(scratch, smooth, teacher_accuracy=teacher, num_classes=10, test_size=597)
    leak, protection = judge(attacks, base, setting="full logits, 25% of the data", variant="base")
    return leak, protection, base


def test_protection_broken_names_the_attack_and_its_gain_over_normal_kd():
    leak, p, _ = _world([93.0, 94.3, 93.9], [83.2, 83.7, 83.4], [93.1, 93.9, 93.2])
    assert p.verdict == "broken" and p.attack == "skeptical"
    assert p.attack_vs_normal_kd.diff == pytest.approx(9.967, abs=1e-3) and p.attack_vs_normal_kd.outcome == "higher"
    assert p.normal_kd_vs_scratch.outcome == "lower" and p.setting == "full logits, 25% of the data"
    line = headline(p, leak, 3)
    assert line.startswith("Protection BROKEN: normal distillation falls 10.3 pts below") and "skeptical student recovers to 93.4%" in line
    assert "+10.0 pts over normal KD" in line and line.endswith("(3 seeds, 95% Welch intervals).") and line.count(". ") == 0


def test_protection_holds_when_every_attack_stays_below_scratch():
    _, p, _ = _world([97.0, 97.6, 97.3], [85.0, 85.6, 85.3], [90.0, 90.4, 90.2])
    assert p.verdict == "holds" and p.attack == "skeptical"  # the strongest attack is named even when it fails


def test_protection_none_when_normal_kd_is_not_below_scratch():
    leak, p, _ = _world([90.0, 91.0, 90.4], [96.5, 97.0, 96.8], [96.0, 96.6, 96.1], ls_runs=[91.0, 91.5, 91.1])
    assert p.verdict == "none" and leak.verdict == "leaks" and leak.best.attack == "normal_kd"
    line = headline(p, leak, 3)
    assert line.startswith("No protection: normal distillation is not below") and "the teacher LEAKS" in line
    assert "over a label-smoothing student" in line


def test_protection_borderline_and_one_seed_are_inconclusive():
    # normal KD 2 pts below scratch, but the spread leaves the interval across zero: say how many seeds would settle it
    _, p, _ = _world([95.0, 99.0, 97.0], [93.0, 97.5, 95.0], [97.0, 97.2, 96.9])
    assert p.verdict == "inconclusive" and p.seeds_needed is not None and p.seeds_needed > 3
    # normal KD settled below, skeptical neither settled below scratch nor settled above normal KD
    _, p, _ = _world([97.0, 97.4, 97.2], [93.0, 93.4, 93.2], [91.0, 97.0, 95.5])
    assert p.verdict == "inconclusive" and p.attack == "skeptical"
    # one seed: nothing is settled, whatever the numbers
    _, p, _ = _world([97.0], [85.0], [97.0])
    assert p.verdict == "inconclusive"


def test_a_teacher_at_chance_never_gives_a_conclusive_verdict():
    leak, p, _ = _world([70.0, 70.5, 70.2], [80.0, 80.4, 80.1], [81.0, 81.2, 81.1], teacher=11.0)
    assert leak.verdict == "inconclusive" and p.verdict == "inconclusive" and "at chance" in leak.reason


def test_leaks_needs_the_label_smoothing_baseline_beaten_too():
    leak, _, _ = _world([90.0, 90.4, 90.2], [92.0, 92.3, 92.1], [91.0, 91.2, 91.1], ls_runs=[91.6, 92.2, 92.4])
    assert leak.verdict == "inconclusive" and "regularisation" in leak.reason


def test_protection_none_when_normal_kd_is_above_scratch_on_average_even_with_a_wide_interval():
    # measured on digits (10% of the data, 2 threads): one normal-KD seed at 86 widens the interval below -1 pt
    _, p, _ = _world([82.747, 82.747, 85.93], [86.097, 92.127, 92.63], [90.117, 89.28, 90.787])
    assert p.normal_kd_vs_scratch.interval.low < -MIN_EFFECT_PTS and p.verdict == "none"
