"""An audit split by seed across workers gives the report a single process gives."""

from __future__ import annotations

import torch

from kdaudit.distill.config import AuditConfig
from kdaudit.distill.runner import ProgressEvent, run_audit
from kdaudit.models import build_model


def test_parts_by_seed_then_assembly_equal_one_process():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = build_model("cnn-8-16-16-32", 10, 1).eval()
    cfg = AuditConfig(teacher_arch="cnn-8-16-16-32", force=True, seeds=2, schedule={"epochs": 1}, attacks=["normal_kd", "skeptical"],
                      sweep={"outputs": ["label"]})
    whole = run_audit(cfg, teacher, "t")
    done: dict = {}

    def keep(e: ProgressEvent) -> None:
        if e.kind == "run_finished":
            done[e.run_key] = e.record

    for seed in (1, 0):  # parts may finish in any order
        assert run_audit(cfg, teacher, "t", only_seeds={seed}, progress=keep, done_runs=dict(done)) is None
    trained = []
    assembled = run_audit(cfg, teacher, "t", done_runs=done,
                          progress=lambda e: trained.append(e.run_key) if e.kind == "run_started" else None)
    assert trained == []  # the assembling part trains nothing
    assert [r.test_accuracy for r in assembled.runs] == [r.test_accuracy for r in whole.runs]
    timing = {"theft_cost": True, "headline": True, "worst_case": {"cost"}}  # seconds differ between runs
    assert assembled.summary.model_dump(exclude=timing) == whole.summary.model_dump(exclude=timing)


def test_assembly_reuses_the_test_answers_of_the_same_teacher():
    """A remote teacher must not be billed the test split again when the last part assembles."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    inner = build_model("cnn-8-16-16-32", 10, 1).eval()
    calls: list[int] = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return inner(x)

    teacher = Counting()
    cfg = AuditConfig(teacher_arch="cnn-8-16-16-32", force=True, seeds=1, schedule={"epochs": 1}, attacks=["normal_kd"],
                      threat={"billing": "every"})
    done: dict = {}
    run_audit(cfg, teacher, "t", only_seeds={0}, progress=lambda e: done.update({e.run_key: e.record}) if e.kind == "run_finished" else None)
    before = list(calls)
    report = run_audit(cfg, teacher, "t", done_runs=done)
    assert calls == before and report.threat.evaluation_queries == 597
