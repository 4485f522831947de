"""The paper's effect, reproduced on scikit-learn digits in a few minutes on 2 CPU cores.

A nasty teacher (Ma et al. 2021) keeps its accuracy but poisons normal KD; the skeptical
student (Kundu et al. 2021) recovers the scratch-level accuracy from it, and costs little
against a normal teacher. The audits use `kdaudit demo`'s setting (the thief holds
DEMO_FRACTION of the data, DEMO_SEEDS seeds), where both verdicts settle: the normal
teacher LEAKS and has no protection, the nasty teacher's protection is BROKEN by the skeptical
student. Measured values are in the README. "Skeptical" below is max(skeptical, skeptical_e),
the report's Delta_acc definition.
"""

from __future__ import annotations

import pytest
import torch

from kdaudit.demo import DEMO_FRACTION, DEMO_SEEDS
from kdaudit.distill.config import AuditConfig
from kdaudit.distill.protect import ProtectConfig
from kdaudit.distill.runner import run_audit
from kdaudit.models.checkpoints import load_teacher

pytestmark = pytest.mark.science
#: the nasty teacher's leakage verdict in the demo setting: the skeptical student gets back to scratch level
#: (measured +2.4 pts over scratch, 3 seeds, interval across zero), not clearly beyond it
NASTY_LEAKAGE = "inconclusive"


@pytest.fixture(scope="module")
def audits(digits_teachers):
    torch.set_num_threads(2)
    prot = digits_teachers
    reports = {}
    for name, path in (("normal", prot.normal_path), ("nasty", prot.nasty_path)):
        teacher = load_teacher(path, prot_arch(), 10, 1)
        cfg = AuditConfig(teacher_arch=prot_arch(), dataset="digits", students=["cnn-4-8-8-16"],
                          attacks=["normal_kd", "skeptical"], seeds=DEMO_SEEDS, fraction=DEMO_FRACTION, device="cpu")
        reports[name] = run_audit(cfg, teacher, "test")
    return prot, reports


def prot_arch() -> str:
    return ProtectConfig(dataset="digits").arch


def mean(report, attack: str) -> float:
    return next(a.accuracy.mean for a in report.attacks if a.attack == attack)


def skeptical(report) -> float:
    return max(mean(report, "skeptical"), mean(report, "skeptical_e"))


def test_nasty_teacher_keeps_its_accuracy(audits):
    prot, reports = audits
    assert reports["nasty"].teacher.accuracy >= reports["normal"].teacher.accuracy - 3.0
    assert reports["normal"].teacher.accuracy >= 97.0


def test_normal_kd_from_nasty_teacher_falls_below_scratch(audits):
    _, r = audits
    scratch = r["nasty"].scratch[0].accuracy.mean
    assert mean(r["nasty"], "normal_kd") <= scratch - 3.0


def test_skeptical_student_defeats_the_nasty_teacher(audits):
    _, r = audits
    scratch = r["nasty"].scratch[0].accuracy.mean
    assert skeptical(r["nasty"]) >= mean(r["nasty"], "normal_kd") + 3.0
    assert skeptical(r["nasty"]) >= scratch - 1.5  # back to scratch level (measured +2.4 with 10% of the data)
    assert r["nasty"].summary.delta_acc >= 3.0


def test_skeptical_student_matches_normal_kd_on_a_normal_teacher(audits):
    _, r = audits
    # with 10% of the data the skeptical student pays a little for its shallow teacher exit (measured -2.2 pts)
    assert abs(skeptical(r["normal"]) - mean(r["normal"], "normal_kd")) <= 3.0


def test_reports_record_every_run_and_the_verdict_rules(audits):
    _, r = audits
    for report in r.values():
        assert len(report.runs) == DEMO_SEEDS * 4  # seeds x (scratch, label smoothing, normal_kd, skeptical)
        assert all(len(run.val_curve) == report.config["schedule"]["epochs"] for run in report.runs)
        assert "Welch" in report.summary.rule and "BROKEN" in report.summary.protection_rule
        assert report.label_smoothing and report.summary.headline


def test_the_nasty_teachers_protection_is_broken_by_the_skeptical_student(audits):
    _, r = audits
    s = r["nasty"].summary
    assert s.protection == "broken"
    p = s.protection_detail
    assert p.attack in {"skeptical", "skeptical_e"} and p.normal_kd_vs_scratch.outcome == "lower"
    assert p.attack_vs_normal_kd.outcome == "higher" and p.attack_vs_normal_kd.diff >= 3.0
    assert s.headline.startswith("Protection BROKEN")
    assert s.verdict == NASTY_LEAKAGE  # what the demo setting gives (README)


def test_the_normal_teacher_leaks_and_has_no_protection(audits):
    _, r = audits
    s = r["normal"].summary
    assert s.protection == "none"
    assert s.verdict == "leaks"  # settled above scratch and above label smoothing
    best = next(a for a in r["normal"].attacks if a.attack == s.best_attack)
    assert best.vs_scratch.outcome == "higher" and best.vs_label_smoothing.outcome == "higher"
    assert s.headline.startswith("No protection") and "LEAKS" in s.headline
