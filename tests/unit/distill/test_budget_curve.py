"""The leakage-vs-query-budget curve (distill/budget_curve.py, distill/budget_table.py, prefix_choices in
distill/datafree/selection.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdaudit.distill.budget_curve import evaluate_curve
from kdaudit.distill.budget_table import BudgetPoint, budget_summary, milestones
from kdaudit.distill.config import DataFreeSettings
from kdaudit.distill.datafree import train_datafree
from kdaudit.distill.datafree.selection import prefix_choices
from kdaudit.distill.train import accuracy, predict
from kdaudit.models import build_model


def curve(*pts: tuple[int, float]) -> list[BudgetPoint]:
    return [BudgetPoint(queries=q, accuracy=a, checkpoint=i + 1) for i, (q, a) in enumerate(pts)]


def test_milestones_read_the_last_point_within_each_budget_and_never_extrapolate():
    c = curve((4_000, 20.0), (9_000, 30.0), (60_000, 50.0), (120_000, 70.0))
    rows = milestones(c)
    assert [(r.budget, r.reached, r.queries, r.accuracy) for r in rows] == [
        (10_000, True, 9_000, 30.0), (100_000, True, 60_000, 50.0), (1_000_000, False, 120_000, 70.0)]
    assert milestones(curve((20_000, 40.0)), [10_000])[0].accuracy is None  # nothing affordable


def test_summary_averages_over_the_seeds_that_reached_the_budget():
    class Run:
        def __init__(self, kind, seed, c, status="ok"):
            self.kind, self.student, self.seed, self.budget_curve, self.status = kind, "s", seed, c, status

    runs = [Run("datafree_dfme", 0, curve((9_000, 30.0), (200_000, 60.0))),
            Run("datafree_dfme", 1, curve((8_000, 40.0), (90_000, 50.0))),
            Run("datafree_dfme", 2, curve((8_000, 99.0)), status="diverged"),
            Run("normal_kd", 0, [])]
    (s,) = budget_summary(runs)
    assert (s.attack, s.seeds) == ("datafree_dfme", 2)
    assert [(c.runs, c.accuracy_mean) for c in s.cells] == [(2, 35.0), (1, 30.0), (0, None)]  # seed 1 stopped at 90k


class Fixed(nn.Module):
    """A 'student' that always answers class `c`."""

    def __init__(self, c: int):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(float(c)), requires_grad=False)

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), int(self.c.item())), 10).float()


def test_prefix_choices_use_only_the_pool_gathered_so_far():
    """Checkpoint 1 is best on pool 1 (class 0); checkpoint 2 wins once pool 2 (class 1) is in."""
    x = [torch.zeros(4, 1), torch.zeros(4, 1)]
    t = [torch.tensor([0, 0, 0, 0]), torch.tensor([1, 1, 1, 1])]
    snaps = [Fixed(0).state_dict(), Fixed(1).state_dict()]
    assert prefix_choices(Fixed(0), snaps, x, t) == [0, 1]  # ties (50/50 on the full pool) go to the later one


def test_a_data_free_run_carries_its_curve_and_the_last_point_is_the_reported_student(splits):
    torch.manual_seed(0)
    teacher = build_model("cnn-8-16-16-32", 10, 1).eval()
    cfg = DataFreeSettings(iterations=6, batch_size=16, checkpoints=3, selection_samples=20)
    res = train_datafree("datafree_dfad", "cnn-4-8-8-16", 0, splits, teacher, cfg)
    info = res.extra["budget_curve"]
    per_check = 2 * 6 * 16 + 20  # two iterations of (5 + 1) x 16, then the selection pool
    assert info["queries"] == [per_check, 2 * per_check, 3 * per_check]
    assert info["choice"][-1] == res.best_epoch - 1
    points = evaluate_curve(res.model, res.extra, splits.x_test, splits.y_test)
    assert [p.queries for p in points] == info["queries"]
    assert points[-1].accuracy == round(accuracy(predict(res.model, splits.x_test), splits.y_test), 3)


def test_data_available_runs_get_a_curve_that_ends_at_their_reported_accuracy(tmp_path):
    """A KD run's curve (distill/train.py): one point per epoch, queries growing by the images sent,
    accuracy = the test accuracy of the snapshot the validation rule held then, so the last point is the
    run's own reported accuracy; scratch runs ask no teacher and have none; the report's budget table
    carries the data-available rule."""
    from kdaudit.distill.budget_table import DATA_CURVE_RULE
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.runner import run_audit

    torch.manual_seed(0)
    teacher = build_model("cnn-8-16-16-32", 10, 1)
    cfg = AuditConfig(teacher_arch="cnn-8-16-16-32", dataset="digits", students=["cnn-4-8-8-16"], seeds=1, device="cpu",
                      force=True, schedule={"epochs": 3}, attacks=["normal_kd"], fraction=0.3)  # fmt: skip
    report = run_audit(cfg, teacher, "random-teacher")
    kd = [r for r in report.runs if r.kind == "normal_kd"]
    assert kd and all(len(r.budget_curve) == 3 for r in kd)
    for r in kd:
        qs = [p.queries for p in r.budget_curve]
        assert qs[0] > 0 and qs == sorted(qs) and qs[-1] == r.teacher_queries
        assert r.budget_curve[-1].accuracy == pytest.approx(r.test_accuracy, abs=0.01)
        assert r.budget_curve[-1].checkpoint == r.best_epoch
    assert all(not r.budget_curve for r in report.runs if r.kind.startswith("scratch"))
    rows = [b for b in report.budget if b.attack == "normal_kd"]
    assert rows and rows[0].rule == DATA_CURVE_RULE
