"""DFME (distill/datafree/dfme.py): the bill, the gradient estimate, logits from probabilities, refusals.

Fast unit tests (untrained teachers where accuracy does not matter); the science is in
tests/test_science_datafree.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from kdaudit.core.errors import InputError
from kdaudit.distill.access import OutputPolicy
from kdaudit.distill.config import AuditConfig, DataFreeSettings, TrainSchedule
from kdaudit.distill.datafree import access_of, plan_datafree, train_datafree
from kdaudit.distill.datafree.dfme import (
    RecoveredLogits,
    dfme_teacher,
    estimate_gradient,
    recover_logits,
    unit_directions,
)
from kdaudit.distill.runner import PolicyView, run_audit
from kdaudit.distill.train import Cohort, Member
from kdaudit.models import build_model
from kdaudit.models.checkpoints import OnnxTeacher
from kdaudit.reporting.html_page import render_report_html

STUDENT = "cnn-4-8-8-16"


@pytest.fixture(scope="module", autouse=True)
def _one_thread_for_every_test(one_thread):
    """Many tiny batches: one torch thread (conftest)."""


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_model("cnn-8-16-16-32", 10, 1).eval()


class Counting(nn.Module):
    """Counts every image forwarded through the teacher."""

    has_features = False

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x):
        self.images += len(x)
        return self.inner(x)


def test_query_count_is_exact_estimation_queries_included(splits, teacher):
    """Per iteration: 5 student batches + 1 generator step of batch x (m + 1) probes; plus selection."""
    for m, budget in ((1, None), (3, 500)):
        counted = Counting(teacher)
        cfg = DataFreeSettings(budget=budget, iterations=5, batch_size=16, checkpoints=2, selection_samples=20, dfme_directions=m)
        plan = plan_datafree("datafree_dfme", cfg, "digits")
        res = train_datafree("datafree_dfme", STUDENT, 0, splits, counted, cfg)
        expected = plan.iterations * (5 * 16 + 1 * 16 * (m + 1)) + plan.checkpoints * 20
        assert res.teacher_queries == counted.images == plan.planned_queries == expected
        assert budget is None or res.teacher_queries <= budget
    assert plan.iterations == (500 - 2 * 20) // (5 * 16 + 16 * 4) == 3  # the budget capped the second run
    assert res.extra["access"] == access_of("datafree_dfme") == "black_box"


def test_query_count_is_exact_for_the_skeptical_form_under_a_budget(splits, teacher):
    counted = Counting(teacher)
    cfg = DataFreeSettings(budget=3_000, batch_size=16, checkpoints=3, selection_samples=30)
    plan = plan_datafree("datafree_dfme_skeptical", cfg, "digits")
    res = train_datafree("datafree_dfme_skeptical", STUDENT, 0, splits, counted, cfg)
    assert res.teacher_queries == counted.images == plan.planned_queries <= 3_000
    assert 3_000 - res.teacher_queries < plan.queries_per_iteration + plan.selection_samples


def test_forward_differences_recover_the_gradient():
    """On a smooth function the estimate points along the true gradient (many directions)."""
    torch.manual_seed(0)
    w_t, w_s = torch.randn(64, 10), torch.randn(64, 10)
    pre = torch.randn(4, 1, 8, 8)
    act = torch.tanh

    def loss(p):  # the estimator's objective: -L1(student, teacher), batch mean
        x = act(p).flatten(1)
        return -(x @ w_s - x @ w_t).abs().mean(1).mean()

    p = pre.clone().requires_grad_(True)
    loss(p).backward()
    est, value = estimate_gradient(pre, act, lambda x: x.flatten(1) @ w_t, lambda x: x.flatten(1) @ w_s,
                                   directions=2000, epsilon=1e-4, rng=torch.Generator().manual_seed(1))
    cos = torch.nn.functional.cosine_similarity(est.flatten(), p.grad.flatten(), dim=0)
    assert cos > 0.8, cos
    assert value == pytest.approx(loss(pre).item(), rel=1e-5)
    u = unit_directions(3, 5, (1, 8, 8), torch.Generator().manual_seed(0))
    assert torch.allclose(u.flatten(2).norm(dim=2), torch.ones(3, 5))


def test_logits_are_recovered_from_probabilities(teacher):
    x = torch.randn(8, 1, 8, 8)
    z = teacher(x)
    view = PolicyView(teacher, OutputPolicy.parse("probs"))
    wrapped = dfme_teacher("datafree_dfme", view)
    assert isinstance(wrapped, RecoveredLogits)
    assert torch.allclose(wrapped(x), z - z.mean(1, keepdim=True), atol=1e-4)
    assert torch.allclose(recover_logits(torch.log_softmax(z, 1)), z - z.mean(1, keepdim=True), atol=1e-5)
    assert dfme_teacher("datafree_dfme", teacher) is teacher  # logits pass through untouched


def test_label_only_endpoints_are_refused_with_a_clear_message(splits, teacher):
    view = PolicyView(teacher, OutputPolicy.parse("label"))
    for attack in ("datafree_dfme", "datafree_dfme_skeptical"):
        with pytest.raises(InputError, match="label-only endpoint.*cannot run"):
            train_datafree(attack, STUDENT, 0, splits, view, DataFreeSettings(iterations=2, batch_size=8))
    with pytest.raises(ValidationError, match="datafree_dfme estimates the generator's gradient"):
        AuditConfig(teacher_arch="cnn-8-16-16-32", attacks=["datafree_dfme"], threat={"output": "label"})

    class LabelEndpoint(nn.Module):
        has_features, is_remote = False, True
        spec = type("Spec", (), {"response": "labels"})()

        def forward(self, x):
            return teacher(x)

    with pytest.raises(InputError, match="label-only endpoint"):
        train_datafree("datafree_dfme", STUDENT, 0, splits, LabelEndpoint(), DataFreeSettings(iterations=2, batch_size=8))


def test_dfme_audits_an_onnx_teacher_on_probabilities(splits, tmp_path):
    """Black box end to end: an ONNX teacher seen through `probs`, normal and skeptical forms."""
    sched = TrainSchedule(epochs=8, batch_size=32, lr=0.05, augment=False)
    trained = Cohort([Member("teacher", "scratch", "cnn-8-16-16-32", 0)], splits, sched).train()[0].model.eval()
    path = tmp_path / "teacher.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(trained, (torch.zeros(2, 1, 8, 8),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    onnx = OnnxTeacher(path, 10, 1, threads=1)
    cfg = AuditConfig(teacher_arch="cnn-8-16-16-32", dataset="digits", students=[STUDENT], seeds=1, device="cpu", force=True,
                      schedule={"epochs": 2},
                      attacks=["datafree_dfme", "datafree_dfme_skeptical"], threat={"output": "probs"},
                      datafree={"iterations": 3, "batch_size": 16, "checkpoints": 2, "selection_samples": 20})
    report = run_audit(cfg, onnx, "onnx-test")
    per_run = 3 * (5 * 16 + 2 * 16) + 2 * 20
    runs = [r for r in report.runs if r.kind.startswith("datafree_dfme")]
    assert len(runs) == 2  # a 3-iteration run may be flagged and retried: every attempt is billed in full
    assert all(r.teacher_queries == per_run * (1 + len(r.retries)) for r in runs), [(r.teacher_queries, len(r.retries)) for r in runs]
    assert all(r.access == "black_box" and r.output == "probs" for r in runs)
    # the budget curve: one point per checkpoint of the last attempt, in the JSON and as a plot in the HTML
    assert all([p.checkpoint for p in r.budget_curve] and len(r.budget_curve) == 2 for r in runs)
    assert {(b.attack, b.student) for b in report.budget} == {(r.kind, r.student) for r in runs if r.status == "ok"}
    page = render_report_html(report)
    assert 'id="h-budget"' in page and "Leakage vs query budget" in page
