"""Data-free attacks (ZSKT grey-box, DFAD black-box, and their skeptical variants) on digits, CPU.

The teacher is a cnn-16-32-32-64 trained normally for 30 epochs (99.8% test, ~7 s on one
thread). Students are cnn-4-8-8-16. Measured on 2 shared CPU cores, torch 1 thread, seed 0
(see each test for its figure and the bound it asserts).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from kdaudit.core.errors import InputError
from kdaudit.distill.config import AuditConfig, DataFreeSettings, TrainSchedule
from kdaudit.distill.datafree import (
    COLLAPSE_TOP2_SHARE,
    DATAFREE_RETRY_PLAN,
    attention_loss,
    check_teacher,
    generator_collapse,
    input_range,
    plan_datafree,
    reference_iterations,
    retry_datafree,
    train_datafree,
    watchdog_reason,
)
from kdaudit.distill.oracle import QueryBudgetExhausted, TeacherOracle
from kdaudit.distill.report import Report
from kdaudit.distill.runner import ProgressEvent, run_audit
from kdaudit.distill.train import Cohort, Member, accuracy, predict
from kdaudit.models.checkpoints import OnnxTeacher
from kdaudit.models.generator import Generator
from kdaudit.models.multi_exit import MultiExitNet

TEACHER = "cnn-16-32-32-64"
STUDENT = "cnn-4-8-8-16"


@pytest.fixture(scope="module", autouse=True)
def _one_thread_for_every_test(one_thread):
    """Data-free steps are many tiny batches: every test here runs on one torch thread (conftest)."""


@pytest.fixture(scope="module")
def teacher(splits, one_thread):
    sched = TrainSchedule(epochs=30, batch_size=32, lr=0.05, augment=False)
    res = Cohort([Member("teacher", "scratch", TEACHER, 0)], splits, sched).train()[0]
    model = res.model.eval()
    assert accuracy(predict(model, splits.x_test), splits.y_test) >= 97.0
    return model


@pytest.fixture(scope="module")
def onnx_teacher(teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(teacher, (torch.zeros(2, 1, 8, 8),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return OnnxTeacher(path, 10, 1, threads=1)


class Counting(nn.Module):
    """Wraps a teacher and counts every image forwarded through it (logits or features)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.has_features = getattr(inner, "has_features", True)
        self.images = 0

    def forward(self, x):
        self.images += len(x)
        return self.inner(x)

    def forward_with_features(self, x):
        self.images += len(x)
        return self.inner.forward_with_features(x)


def test_generator_matches_the_teacher_input_range(splits):
    low, high = input_range(splits)
    for size, ch in ((8, 1), (28, 1), (32, 3), (7, 2)):
        lo, hi = low[:1] * ch, high[:1] * ch
        g = Generator(16, size, ch, lo, hi, width=8)
        x = g(torch.randn(5, 16) * 10)  # saturate tanh
        assert x.shape == (5, ch, size, size)
        assert x.min() >= lo[0] - 1e-5 and x.max() <= hi[0] + 1e-5
    # digits: pixel 0 and 1 standardised with the training statistics
    assert low[0] < 0 < high[0]


def test_zskt_student_beats_chance(splits, teacher):
    """ZSKT (grey-box, 150 pseudo batches, 24,320 queries): measured 30.8% (seed 0) with this build's
    teacher (49.1% with an earlier build's), ~12 s. Bound: >= 20%, twice chance (10%): ZSKT at this
    tiny scale is seed- and teacher-sensitive, so the bound leaves room below the measured value."""
    res = train_datafree("datafree_zskt", STUDENT, 0, splits, teacher)
    acc = accuracy(predict(res.model, splits.x_test), splits.y_test)
    assert acc >= 20.0, acc
    assert res.diverged is None, res.diverged  # healthy: the watchdog stays quiet
    assert len(res.extra["generated_class_counts"]) == 20
    assert res.teacher_queries == plan_datafree("datafree_zskt", DataFreeSettings(), "digits").planned_queries == 24_320


def test_dfad_with_teacher_gradient_beats_chance(splits, teacher):
    """DFAD as in the official code (generator backpropagates through the teacher, grey-box),
    400 iterations, 158,720 queries: measured 87.6% / 85.9% (seed 0, two runs), ~18 s. Bound: >= 60%.
    The black-box default reaches 41% in the same budget (teacher outputs as constants)."""
    res = train_datafree("datafree_dfad", STUDENT, 0, splits, teacher, DataFreeSettings(dfad_teacher_gradient=True))
    assert res.extra["access"] == "grey_box"
    assert accuracy(predict(res.model, splits.x_test), splits.y_test) >= 60.0
    assert res.diverged is None, res.diverged


def test_query_count_equals_images_sent_and_respects_budget(splits, teacher):
    for attack, budget in (("datafree_dfad", 5_000), ("datafree_zskt_skeptical", 3_000), ("datafree_dfad_skeptical", 2_345)):
        counted = Counting(teacher)
        cfg = DataFreeSettings(budget=budget, batch_size=32, checkpoints=3, selection_samples=50)
        plan = plan_datafree(attack, cfg, "digits")
        res = train_datafree(attack, STUDENT, 1, splits, counted, cfg)
        assert res.teacher_queries == counted.images == plan.planned_queries <= budget
        assert res.diverged is None, (attack, res.diverged)
        assert budget - res.teacher_queries < plan.queries_per_iteration + plan.selection_samples  # the budget is used
    # an iteration cap below the budget wins, and is counted just as exactly
    counted = Counting(teacher)
    res = train_datafree("datafree_zskt", STUDENT, 1, splits, counted,
                         DataFreeSettings(budget=10**6, iterations=4, batch_size=16, checkpoints=2, selection_samples=20))
    assert res.teacher_queries == counted.images == 4 * 2 * 16 + 2 * 20


def test_budget_too_small_is_a_clear_error():
    with pytest.raises(InputError, match="too small"):
        plan_datafree("datafree_dfad", DataFreeSettings(budget=100), "digits")


def test_teacher_access_refuses_to_overspend(teacher):
    """The data-free trainer's meter is the one query meter (distill/oracle.py), opened black-box."""
    access = TeacherOracle(teacher, budget=10)
    access.logits(torch.zeros(10, 1, 8, 8))
    with pytest.raises(QueryBudgetExhausted, match="budget"):
        access.logits(torch.zeros(1, 1, 8, 8))
    assert access.queries == 10
    with pytest.raises(RuntimeError, match="black-box"):
        TeacherOracle(teacher).logits_features(torch.zeros(1, 1, 8, 8), grad=False)
    with pytest.raises(RuntimeError, match="black-box"):
        TeacherOracle(teacher).logits_with_grad(torch.zeros(1, 1, 8, 8))


def test_zskt_needs_teacher_activations(splits, onnx_teacher):
    for attack in ("datafree_zskt", "datafree_zskt_skeptical"):
        with pytest.raises(InputError, match="grey-box"):
            check_teacher(attack, onnx_teacher)
        with pytest.raises(InputError, match="activations"):
            train_datafree(attack, STUDENT, 0, splits, onnx_teacher, DataFreeSettings(iterations=1))
    with pytest.raises(InputError, match="output vectors"):
        check_teacher("datafree_dfad", onnx_teacher, DataFreeSettings(dfad_teacher_gradient=True))
    check_teacher("datafree_dfad", onnx_teacher)  # black-box is fine
    # through the audit: fails before any student is trained
    cfg = AuditConfig(teacher_arch=TEACHER, attacks=["datafree_zskt"], seeds=1, device="cpu")
    with pytest.raises(InputError, match="grey-box"):
        run_audit(cfg, onnx_teacher, "x", progress=lambda e: pytest.fail(f"trained something: {e}"))


def test_dfad_runs_against_an_onnx_teacher_in_an_audit(onnx_teacher):
    df = {"iterations": 40, "checkpoints": 4, "selection_samples": 64}
    cfg = AuditConfig(teacher_arch=TEACHER, attacks=["datafree_dfad"], seeds=1, device="cpu",
                      schedule={"epochs": 2}, datafree=df)
    events: list[ProgressEvent] = []
    report = run_audit(cfg, onnx_teacher, "onnx", progress=events.append)
    Report.model_validate_json(report.to_json())
    (att,) = report.attacks
    assert (att.attack, att.setting, att.access) == ("datafree_dfad", "data_free", "black_box")
    plan = plan_datafree("datafree_dfad", cfg.datafree, "digits")
    assert att.teacher_queries == plan.planned_queries == 40 * 6 * 64 + 4 * 64
    run = next(r for r in report.runs if r.kind == "datafree_dfad")
    assert run.setting == "data_free" and run.selection and "generated" in run.selection
    assert len(run.val_curve) == 4 and 1 <= run.best_epoch <= 4
    assert run.status == "ok" and not run.retries
    df_events = [e for e in events if e.run_key == "datafree_dfad/cnn-4-8-8-16/seed0"]
    assert [e.kind for e in df_events] == ["run_started"] + ["epoch_end"] * 4 + ["run_finished"]
    assert report.scratch[0].accuracy.mean > 0  # the scratch baseline still trains on the thief-free data split


def test_skeptical_variants_run_end_to_end_with_resume_and_cancel(teacher):
    df = {"iterations": 6, "checkpoints": 2, "selection_samples": 32, "batch_size": 32}
    cfg = AuditConfig(teacher_arch=TEACHER, attacks=["datafree_zskt_skeptical", "datafree_dfad_skeptical"], seeds=1,
                      device="cpu", schedule={"epochs": 1}, datafree=df)
    report = run_audit(cfg, teacher, "t")
    names = {a.attack: a for a in report.attacks}
    assert set(names) == {"datafree_zskt_skeptical", "datafree_zskt_skeptical_e",
                          "datafree_dfad_skeptical", "datafree_dfad_skeptical_e"}
    assert names["datafree_zskt_skeptical"].access == "grey_box"
    assert names["datafree_dfad_skeptical_e"].access == "black_box"
    for run in report.runs:
        if run.kind.startswith("datafree"):
            assert set(run.exit_accuracies) == {"exit1", "exit2", "exit3", "final", "ensemble"}
            assert run.teacher_queries > 0
    # resume: finished runs are not trained again; cancel: raised at a checkpoint
    done = {f"{r.kind}/{r.student}/seed{r.seed}": r for r in report.runs if r.kind != "datafree_dfad_skeptical"}
    events: list[ProgressEvent] = []
    again = run_audit(cfg, teacher, "t", progress=events.append, done_runs=done)
    assert {e.run_key for e in events} == {"datafree_dfad_skeptical/cnn-4-8-8-16/seed0"}
    assert len(again.runs) == len(report.runs)
    from kdaudit.core.errors import CancelledError

    with pytest.raises(CancelledError):
        run_audit(cfg, teacher, "t", should_cancel=lambda: True, done_runs={
            k: v for k, v in done.items() if k.startswith("scratch")})


def test_skeptical_student_loss_keeps_the_teacher_on_the_ac_exit(splits, teacher):
    """Only the AC exit (and, for ZSKT, the stages up to it) sees the teacher; the final exit trains on argmax labels."""
    res = train_datafree("datafree_zskt_skeptical", STUDENT, 0, splits, teacher,
                         DataFreeSettings(iterations=2, checkpoints=1, selection_samples=16, batch_size=16))
    assert isinstance(res.model, MultiExitNet)
    # the student's named loss terms, one dict per checkpoint block, as the cohort trainer records per epoch
    (terms,) = res.loss_curve
    assert list(terms) == ["kl_aux", "attention_aux", "self_distill", "ce"]
    assert all(v is not None and v >= 0 for v in terms.values())
    feats = [torch.randn(4, c, 8, 8) for c in (4, 8, 8, 16)]
    assert attention_loss(feats, feats, 4).item() == pytest.approx(0.0, abs=1e-7)
    other = [f + torch.randn_like(f) for f in feats]
    assert attention_loss(feats, other, 2).item() < attention_loss(feats, other, 4).item()


# ------------------------------------------------------------------------------- watchdog


class ConstantTeacher(nn.Module):
    """Answers every image with the same scores: class `cls` always wins (a forced generator collapse)."""

    has_features = False

    def __init__(self, cls: int = 3, classes: int = 10):
        super().__init__()
        self.register_buffer("scores", torch.nn.functional.one_hot(torch.tensor(cls), classes).float() * 5.0)

    def forward(self, x):
        return self.scores.expand(len(x), -1).clone()


class NoiseTeacher(nn.Module):
    """Answers with fresh random scores, unrelated to the image: nothing to learn, so chance."""

    has_features = False

    def __init__(self):
        super().__init__()
        self.rng = torch.Generator().manual_seed(0)

    def forward(self, x):
        return torch.randn(len(x), 10, generator=self.rng) * 3


class SometimesNaN(nn.Module):
    """A teacher that returns NaN scores for every other image of a batch."""

    has_features = False

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x).clone()
        out[::2] = float("nan")
        return out


TINY = {"iterations": 8, "checkpoints": 4, "batch_size": 16, "selection_samples": 20}


def test_collapse_rule_is_judged_at_the_selected_checkpoint():
    diverse, collapsed = [10, 10, 10, 10, 10, 10, 10, 10, 10, 10], [0, 0, 0, 80, 0, 0, 0, 0, 15, 5]
    assert sum(sorted(collapsed)[-2:]) / 100 >= COLLAPSE_TOP2_SHARE
    late = [diverse] * 5 + [collapsed] * 5  # DESIGN.md's late collapse, after the chosen snapshot
    assert generator_collapse(late, selected=4) is None
    reason = generator_collapse(late, selected=9)
    assert reason == ("generator collapse: 95% of the teacher's predictions on generated images in classes 3 and 8 "
                      "at checkpoints 8-10 (the selected checkpoint is 10)")
    recovered = [collapsed] * 3 + [diverse] * 3
    assert generator_collapse(recovered, selected=5) is None
    assert generator_collapse(recovered, selected=2) is not None
    assert generator_collapse([collapsed, diverse, collapsed], selected=2) is None  # not every checkpoint of the window
    assert "at checkpoint 1 " in generator_collapse([collapsed], selected=0)
    # order of the rules: non-finite, then collapse, then chance (needs 2+ checkpoints, like train.py's)
    assert watchdog_reason(3, late, 9, [50.0] * 10, 10).startswith("non-finite")
    assert watchdog_reason(None, [diverse] * 2, 1, [11.0, 12.0], 10).startswith("selection score stuck at chance")
    assert watchdog_reason(None, [diverse], 0, [11.0], 10) is None
    assert watchdog_reason(None, [diverse] * 2, 1, [11.0, 12.5], 10) is None


def test_forced_collapse_is_flagged_and_retried_and_every_query_counts(splits):
    counted = Counting(ConstantTeacher(cls=3))
    cfg = DataFreeSettings(**TINY)
    plan = plan_datafree("datafree_dfad", cfg, "digits")
    first = train_datafree("datafree_dfad", STUDENT, 0, splits, counted, cfg)
    assert first.diverged is not None and first.diverged.startswith(
        "generator collapse: 100% of the teacher's predictions on generated images in class 3 at checkpoints")
    assert first.teacher_queries == plan.planned_queries
    result, retries = retry_datafree(first, splits, counted, cfg)
    assert len(retries) == len(DATAFREE_RETRY_PLAN) == 2
    assert retries[0][0] == first.diverged and "generator and student learning rates halved" in retries[0][1]
    assert "generator lr 0.0005, student lr 0.05, seed offset 0" in retries[0][1]
    assert "new seed" in retries[1][1] and "seed offset 1" in retries[1][1]
    assert result.diverged is not None and result.diverged.startswith("generator collapse")  # a constant teacher stays so
    # the thief paid for all three attempts
    assert result.teacher_queries == counted.images == 3 * plan.planned_queries
    assert [a["teacher_queries"] for a in result.extra["attempts"]] == [plan.planned_queries] * 3
    assert result.member.seed == 0 and result.member.seed_offset == 1


def test_retries_stay_within_the_query_budget(splits):
    counted = Counting(ConstantTeacher(cls=7))
    cfg = DataFreeSettings(budget=2_000, **{k: v for k, v in TINY.items() if k != "iterations"})
    first = train_datafree("datafree_dfad", STUDENT, 0, splits, counted, cfg)
    result, retries = retry_datafree(first, splits, counted, cfg)
    assert retries == [] and "not retried" in result.diverged and "2,000 teacher queries" in result.diverged
    assert result.teacher_queries == counted.images <= 2_000


def test_non_finite_teacher_scores_are_flagged_and_stop_training(splits, teacher):
    counted = Counting(SometimesNaN(teacher))
    cfg = DataFreeSettings(**TINY)
    res = train_datafree("datafree_dfad", STUDENT, 0, splits, counted, cfg)
    assert res.diverged == "non-finite (NaN/inf) loss before checkpoint 1; training stopped there"
    assert len(res.val_curve) == 1 and res.best_epoch == 1
    assert res.teacher_queries == counted.images < plan_datafree("datafree_dfad", cfg, "digits").planned_queries
    result, retries = retry_datafree(res, splits, counted, cfg)
    assert [r for r, _ in retries] == [res.diverged, result.extra["attempts"][1]["diverged"]]
    assert result.teacher_queries == counted.images


def test_a_student_stuck_at_chance_is_flagged(splits):
    res = train_datafree("datafree_dfad", STUDENT, 0, splits, NoiseTeacher(), DataFreeSettings(**TINY))
    assert res.diverged is not None and res.diverged.startswith("selection score stuck at chance"), res.diverged


def test_reference_iterations_are_the_dataset_defaults():
    assert reference_iterations("datafree_zskt_skeptical", "cifar10") == 80_000
    assert reference_iterations("datafree_dfad", "cifar10") == 25_000
    assert reference_iterations("datafree_dfad", "digits") == plan_datafree("datafree_dfad", DataFreeSettings(), "digits").iterations
