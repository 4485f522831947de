"""Divergence watchdog: NaN/inf losses and runs stuck at chance are caught, retried, reported, never averaged in."""

import torch
from torch import nn

from kdaudit.distill.assemble import assemble_report
from kdaudit.distill.config import AuditConfig, TrainSchedule
from kdaudit.distill.data import load_splits
from kdaudit.distill.report import AccuracyStats, Report, RunRecord
from kdaudit.distill.retry import RETRY_PLAN
from kdaudit.distill.runner import plan_runs, run_audit
from kdaudit.distill.train import Cohort, Member, stuck_at_chance
from kdaudit.models import build_model
from kdaudit.reporting.html_page import render_report_html


class NaNOnBrightImages(nn.Module):
    """A teacher whose outputs are NaN for images brighter than `threshold` on average."""

    def __init__(self, inner: nn.Module, threshold: float):
        super().__init__()
        self.inner, self.threshold = inner, threshold

    def forward(self, x):
        out = self.inner(x)
        bright = x.flatten(1).mean(1) > self.threshold
        return torch.where(bright[:, None], torch.full_like(out, float("nan")), out)


def nan_teacher(splits) -> NaNOnBrightImages:
    torch.manual_seed(0)
    inner = build_model("cnn-8-8-8-16", 10, 1).eval()
    threshold = splits.x_train.flatten(1).mean(1).quantile(0.9).item()  # ~10% of images are poisoned
    return NaNOnBrightImages(inner, threshold).eval()


def test_nan_teacher_is_caught_reported_and_not_averaged_in():
    splits = load_splits("digits")
    teacher = nan_teacher(splits)
    cfg = AuditConfig(teacher_arch="cnn-8-8-8-16", force=True, attacks=["normal_kd"], seeds=1, schedule={"epochs": 2}, device="cpu")
    report = run_audit(cfg, teacher, "x")
    kd = next(r for r in report.runs if r.kind == "normal_kd")
    assert kd.status == "diverged" and "non-finite" in (kd.diverged_reason or "")
    assert len(kd.retries) == len(RETRY_PLAN) == 2
    assert "halved" in kd.retries[0].change and "seed" in kd.retries[1].change
    scratch = next(r for r in report.runs if r.kind == "scratch")
    assert scratch.status == "ok" and not scratch.retries and scratch.test_accuracy > 50
    assert report.attacks == []  # nothing averaged in: no number for normal KD at all
    assert report.summary.verdict == "inconclusive" and report.summary.best_attack == "none"
    Report.model_validate_json(report.to_json())
    assert "Diverged runs" in render_report_html(report)


def test_diverged_member_does_not_disturb_its_cohort_mates():
    splits = load_splits("digits")
    teacher = nan_teacher(splits)
    sched = TrainSchedule(epochs=2, batch_size=64, lr=0.05, augment=False)
    members = [Member("s", "scratch", "cnn-4-8-8-16", 1), Member("k", "normal_kd", "cnn-4-8-8-16", 1)]
    together = Cohort(members, splits, sched, reference=teacher, stream_seed=1).train()
    assert together[0].diverged is None and together[1].diverged is not None
    alone = Cohort(members[:1], splits, sched, reference=teacher, stream_seed=1).train()[0]
    assert alone.val_curve == together[0].val_curve
    for (k, a), (_, b) in zip(alone.model.state_dict().items(), together[0].model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_stuck_at_chance_rule():
    assert stuck_at_chance([10.0, 11.5, 9.0], 10)
    assert not stuck_at_chance([10.0, 30.0], 10)
    assert not stuck_at_chance([10.0], 10)  # one epoch is too little to call it


def test_a_diverged_seed_is_excluded_from_the_mean():
    splits = load_splits("digits")
    cfg = AuditConfig(teacher_arch="cnn-8-8-8-16", force=True, attacks=["normal_kd"], seeds=2, device="cpu")
    runs = plan_runs(cfg)
    acc = {"scratch/cnn-4-8-8-16/seed0": 90.0, "scratch/cnn-4-8-8-16/seed1": 92.0,
           "scratch_ls/cnn-4-8-8-16/seed0": 90.5, "scratch_ls/cnn-4-8-8-16/seed1": 91.5,
           "normal_kd/cnn-4-8-8-16/seed0": 95.0, "normal_kd/cnn-4-8-8-16/seed1": 10.0}
    records = {
        r.key: RunRecord(kind=r.kind, student=r.student, seed=r.seed, test_accuracy=acc[r.key], best_epoch=1,
                         val_curve=[acc[r.key]], teacher_queries=0, seconds=1.0,
                         status="diverged" if acc[r.key] == 10.0 else "ok")
        for r in runs
    }
    report = assemble_report(cfg, runs, records, splits, 97.0, "x", torch.device("cpu"), 1.0)
    kd = next(a for a in report.attacks if a.attack == "normal_kd")
    assert kd.accuracy == AccuracyStats.of([95.0]) and kd.excluded_runs == 1
    assert len(report.runs) == 6  # the diverged run is still listed


def test_retries_share_the_runs_query_budget():
    """Every attempt of a run is billed to the same budget: retries get what is left, then stop."""
    splits = load_splits("digits")
    teacher = nan_teacher(splits)
    budget = 1500  # the first attempt's two epochs (2 x 1,024 images) already overspend it
    cfg = AuditConfig(teacher_arch="cnn-8-8-8-16", force=True, attacks=["normal_kd"], seeds=1, schedule={"epochs": 2, "batch_size": 64},
                      device="cpu", threat={"query_budget": budget, "billing": "every"})
    report = run_audit(cfg, teacher, "x")
    kd = next(r for r in report.runs if r.kind == "normal_kd")
    # attempt 1: NaN in epoch 1, 1,024 images billed; retry 1 gets the 476 left and stops after 7 batches
    # (448); 28 left is less than a batch, so the second retry is not run
    assert kd.status == "diverged" and kd.teacher_queries == 1024 + 448 <= budget
    assert len(kd.retries) == 1 and "not retried: 28 of the run's 1,500" in kd.diverged_reason
