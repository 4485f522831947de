"""Fidelity metrics: agreement, agreement on the teacher's mistakes, per-class gap, KL(T||S)."""

import math

import pytest
import torch

from kdaudit.distill.config import AuditConfig
from kdaudit.distill.fidelity import fidelity_metrics
from kdaudit.distill.report import Fidelity
from kdaudit.distill.runner import run_audit
from kdaudit.models import build_model
from kdaudit.reporting.html_page import render_report_html


def onehot(preds: list[int], c: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), c).float() * 5.0


def test_agreement_on_mistakes_hand_made_example():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    teacher = onehot([0, 1, 2, 1, 2, 0])  # right on 0-2, wrong on 3-5 (predicts 1, 2, 0)
    student = onehot([0, 1, 1, 1, 2, 2])  # copies mistakes 3 and 4, not 5; wrong on image 2
    f = fidelity_metrics(teacher, student, y, 3)
    assert f.teacher_mistakes == 3
    assert f.mistake_agreement == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert f.agreement == pytest.approx(100 * 4 / 6, abs=1e-3)  # disagree on images 2 and 5
    # class 0: teacher 1/2, student 1/2; class 1: 1/2 vs 1/2; class 2: teacher 1/2, student 1/2 (image 5)
    assert f.class_gap == [0.0, 0.0, 0.0]
    assert f.kl is not None and f.kl > 0
    same = fidelity_metrics(teacher, teacher, y, 3)
    assert same.agreement == 100.0 and same.mistake_agreement == 100.0 and same.kl == pytest.approx(0.0, abs=1e-6)


def test_class_gap_kl_and_non_finite_teacher_rows():
    y = torch.tensor([0, 0, 1, 1])
    teacher = onehot([0, 0, 1, 1], 2)
    student = onehot([0, 1, 1, 1], 2)
    f = fidelity_metrics(teacher, student, y, 2)
    assert f.class_gap == [50.0, 0.0] and f.max_class_gap == 50.0 and f.mistake_agreement is None
    t, s = torch.log_softmax(teacher, 1), torch.log_softmax(student, 1)
    expected = (t.exp() * (t - s)).sum(1).mean().item()
    assert f.kl == pytest.approx(expected, rel=1e-4)
    teacher[1] = float("nan")  # a poisoned output is left out, never turns the record into NaN
    g = fidelity_metrics(teacher, student, y, 2)
    assert g.images == 3 and g.agreement == 100.0 and math.isfinite(g.kl)


def test_mean_over_seeds():
    a = Fidelity(agreement=90, mistake_agreement=50, teacher_mistakes=4, class_gap=[1, 3], max_class_gap=3, kl=0.2, images=10)
    b = Fidelity(agreement=80, mistake_agreement=None, teacher_mistakes=4, class_gap=[3, 1], max_class_gap=3, kl=0.4, images=10)
    m = Fidelity.mean_of([a, b])
    assert m.agreement == 85 and m.mistake_agreement == 50 and m.class_gap == [2, 2] and m.kl == pytest.approx(0.3)
    assert Fidelity.mean_of([]) is None


def test_fidelity_in_a_real_tiny_audit_report_and_html():
    torch.manual_seed(0)
    teacher = build_model("cnn-8-8-8-16", 10, 1).eval()
    cfg = AuditConfig(teacher_arch="cnn-8-8-8-16", seeds=1, schedule={"epochs": 2}, device="cpu", force=True)  # random teacher
    report = run_audit(cfg, teacher, "x")
    for r in report.runs:
        assert r.fidelity is not None and r.fidelity.images == report.dataset.test_size
        assert len(r.fidelity.class_gap) == 10
    skept = next(r for r in report.runs if r.kind == "skeptical")
    assert skept.fidelity_ensemble is not None
    for a in report.attacks:
        assert a.fidelity is not None and 0 <= a.fidelity.agreement <= 100
    assert report.scratch[0].fidelity is not None
    again = type(report).model_validate_json(report.to_json())
    assert again.attacks[0].fidelity == report.attacks[0].fidelity
    html = render_report_html(report)
    assert "agreement on the teacher" in html.lower()


def test_log_space_views_with_hidden_classes_still_count():
    """A remote teacher answering labels or probabilities gives -inf scores; those rows count."""
    from kdaudit.distill.access import OutputPolicy

    torch.manual_seed(0)
    t, s, y = torch.randn(40, 10) * 3, torch.randn(40, 10), torch.randint(0, 10, (40,))
    full = fidelity_metrics(t, s, y, 10)
    for spec in ("label", "top2", "probs"):
        f = fidelity_metrics(OutputPolicy.parse(spec).apply(t), s, y, 10)
        assert f.images == 40 and f.agreement == full.agreement and f.kl is not None
