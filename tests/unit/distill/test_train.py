"""The cohort trainer: lockstep training equals per-student training; selection uses val only."""

import pytest
import torch

from kdaudit.distill.config import AuditConfig, TrainSchedule
from kdaudit.distill.data import load_splits
from kdaudit.distill.runner import ProgressEvent, plan_runs, run_audit
from kdaudit.distill.train import Cohort, Member, build_member_model, lr_at
from kdaudit.models import build_model

SCHED = TrainSchedule(epochs=2, batch_size=64, lr=0.05, augment=False)


@pytest.fixture(scope="module")
def splits():
    return load_splits("digits")


@pytest.fixture(scope="module")
def teacher(splits):
    torch.manual_seed(0)
    return build_model("cnn-8-8-8-16", 10, 1).eval()


def test_cohort_equals_students_trained_alone(splits, teacher):
    members = [Member(k, k, "cnn-4-8-8-16", 3) for k in ("scratch", "normal_kd", "skeptical")]
    together = Cohort(members, splits, SCHED, reference=teacher, stream_seed=3).train()
    for m, res in zip(members, together, strict=True):
        alone = Cohort([m], splits, SCHED, reference=teacher, stream_seed=3).train()[0]
        assert alone.val_curve == res.val_curve
        for (k, a), (_, b) in zip(alone.model.state_dict().items(), res.model.state_dict().items(), strict=True):
            assert torch.equal(a, b), k
    assert together[0].teacher_queries == 0  # scratch never asks the teacher
    assert together[1].teacher_queries == 2 * (len(splits.x_train) // 64) * 64


def test_one_cycle_schedule_shape():
    lrs = [lr_at(s, 100, 0.1) for s in range(100)]
    assert max(lrs) == pytest.approx(0.1) and lrs[0] < 0.01 and lrs[-1] < 1e-3


def test_late_window_selection_never_picks_early_epochs(splits, teacher):
    m = Member("n", "nasty", "cnn-4-8-8-16", 0, selection="late_window", window=0.25)
    res = Cohort([m], splits, TrainSchedule(epochs=4, batch_size=64, lr=0.05), reference=teacher).train()[0]
    assert res.best_epoch == 4  # the last quarter of 4 epochs is epoch 4 alone


def test_run_audit_progress_resume_and_cancel(splits, teacher):
    cfg = AuditConfig(teacher_arch="cnn-8-8-8-16", students=["cnn-4-8-8-16"], seeds=1, schedule={"epochs": 2},
                      force=True)  # a random teacher: past the sanity gate (distill/gate.py)
    events: list[ProgressEvent] = []
    report = run_audit(cfg, teacher, "x", progress=events.append)
    keys = [r.key for r in plan_runs(cfg)]
    assert [e.run_key for e in events if e.kind == "run_finished"] == keys
    assert sum(e.kind == "epoch_end" for e in events) == 2 * len(keys)
    assert {a.attack for a in report.attacks} == {"normal_kd", "skeptical", "skeptical_e"}

    # resume: finished runs are taken as given, not retrained
    done = {k: r for k, r in zip(keys, report.runs, strict=True) if not k.startswith("skeptical")}
    events.clear()
    again = run_audit(cfg, teacher, "x", progress=events.append, done_runs=done)
    assert {e.run_key for e in events} == {k for k in keys if k.startswith("skeptical")}
    assert again.runs[0] == report.runs[0]

    from kdaudit.core.errors import CancelledError

    with pytest.raises(CancelledError):
        run_audit(cfg, teacher, "x", should_cancel=lambda: True)


def test_cohort_resumes_from_its_epoch_checkpoint_with_identical_results(splits, teacher, tmp_path):
    members = [Member(k, k, "cnn-4-8-8-16", 5) for k in ("scratch", "skeptical")]
    sched = TrainSchedule(epochs=3, batch_size=64, lr=0.05, augment=False)
    ckpt = tmp_path / "seed5.pt"

    class Crash(Exception):
        pass

    def crash_after_epoch_2(ep):
        if ep.epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        Cohort(members, splits, sched, reference=teacher, stream_seed=5).train(crash_after_epoch_2, checkpoint=ckpt)
    assert ckpt.exists()
    seen = []
    resumed = Cohort(members, splits, sched, reference=teacher, stream_seed=5).train(
        lambda ep: seen.append(ep.epoch), checkpoint=ckpt)
    assert set(seen) == {3}  # epochs 1-2 were not trained again
    assert not ckpt.exists()  # removed once training ends
    straight = Cohort(members, splits, sched, reference=teacher, stream_seed=5).train()
    for a, b in zip(resumed, straight, strict=True):
        assert a.val_curve == b.val_curve and a.best_epoch == b.best_epoch and a.teacher_queries == b.teacher_queries
        for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
            assert torch.equal(x, y), k
        assert a.loss_curve == b.loss_curve  # the loss-term history is part of the checkpoint


def test_members_record_their_named_loss_terms_per_epoch(splits, teacher):
    """Each epoch's mean of each loss term, named as the attack registry names them (distill/attacks/)."""
    from kdaudit.distill.attacks import attack_spec

    members = [Member(k, k, "cnn-4-8-8-16", 1) for k in ("scratch", "scratch_ls", "normal_kd", "skeptical")]
    results = Cohort(members, splits, SCHED, reference=teacher, stream_seed=1).train()
    expected = {"scratch": ("ce",), "scratch_ls": ("ce",), "normal_kd": attack_spec("normal_kd").loss_terms,
                "skeptical": attack_spec("skeptical").loss_terms}
    for m, res in zip(members, results, strict=True):
        assert len(res.loss_curve) == SCHED.epochs
        for epoch in res.loss_curve:
            assert tuple(epoch) == expected[m.kind]
            assert all(v is not None and v >= 0 for v in epoch.values())


def test_loss_is_the_sum_of_its_terms_in_order(splits, teacher):
    """The total trains the student: it must be exactly the terms added in order (same numbers as before)."""
    from kdaudit.distill.losses import total_loss

    torch.manual_seed(0)
    x, y = splits.x_train[:32], splits.y_train[:32]
    ref = teacher(x).detach()
    for kind in ("scratch", "normal_kd", "skeptical"):
        m = Member("m", kind, "cnn-4-8-8-16", 0)
        cohort = Cohort([m], splits, SCHED, reference=teacher)
        model = build_member_model(m, splits)
        terms = cohort._loss_terms(m, model, x, y, ref)
        assert torch.equal(cohort._loss(m, model, x, y, ref), total_loss(terms))
