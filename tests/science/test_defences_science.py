"""The defence matrix's known directions on digits (issue 19), in `kdaudit demo`'s setting.

The owner's teacher and its nasty twin are conftest's `digits_teachers` (protect's digits recipe:
omega 0.09, late-window checkpoint), so the nasty teacher here is exactly what `defend` would
train from that owner. Thief: DEMO_FRACTION of the data, SEEDS seeds, the default schedule.
"""

from __future__ import annotations

import pytest
import torch

from kdaudit.demo import DEMO_FRACTION
from kdaudit.distill.defences.engine import DefendConfig, build_matrix
from kdaudit.distill.protect import ProtectConfig
from kdaudit.models.checkpoints import load_teacher

#: a few CPU minutes (protect's digits teachers, then ~1 min of audits), but the shared 2-core box runs them at
#: ~15% of a core: the project's 900 s limit timed the module out there
pytestmark = [pytest.mark.science, pytest.mark.timeout(2400)]
SEEDS = 2  # the directions checked here are 10+ pts apart on 3 seeds (README); 2 seeds keep the run short


@pytest.fixture(scope="module")
def matrix(digits_teachers):
    torch.set_num_threads(1)  # a shared 2-core box: one thread per job
    recipe = ProtectConfig(dataset="digits")
    owner = load_teacher(digits_teachers.normal_path, recipe.arch, 10, 1)
    nasty = load_teacher(digits_teachers.nasty_path, recipe.arch, 10, 1)
    cfg = DefendConfig(teacher_arch=recipe.arch, defences=["top1", "label", "round1", "nasty", "nasty+label"],
                       seeds=SEEDS, fraction=DEMO_FRACTION, device="cpu")
    m = build_matrix(cfg, owner, "owner", nasty_teachers={recipe.omega: nasty})
    return {r.name: r for r in m.rows}, m, f"nasty@{recipe.omega:g}"


def mean(row, *attacks: str) -> float:
    return max(c.accuracy.mean for c in row.attacks if c.attack in attacks)


def test_label_only_serving_removes_the_nasty_teachers_poison_for_normal_kd(matrix):
    rows, _, nasty = matrix
    assert mean(rows[f"{nasty}+label"], "normal_kd") >= mean(rows[nasty], "normal_kd")
    # and the label-only thief of the plain nasty row is that same run
    assert mean(rows[nasty], "label_only_normal_kd") == mean(rows[f"{nasty}+label"], "normal_kd")


def test_top1_and_label_cost_no_top1_accuracy(matrix):
    rows, _, _ = matrix
    for name in ("top1", "label"):
        assert rows[name].utility.top1 == rows["none"].utility.top1
        assert rows[name].utility.top1_drop == 0 and rows[name].utility.argmax_changed == 0
    assert rows["label"].utility.ece is None and rows["top1"].utility.ece == rows["none"].utility.ece


def test_round1_ece_is_the_calibration_gap_on_the_one_decimal_grid(matrix, digits_teachers):
    """Rounded confidences take at most ten values, each in its own 15-bin: ECE is sum_v share_v * |acc_v - v|.

    Recomputed here from the teacher's own test logits. Its direction is the teacher's: the issue expected
    rounding to raise ECE, but this 99.8% digits teacher's confidences sit just under 1 and round1
    LOWERED it (0.8 -> 0.4 pts in the README run), so the test checks the number, not a direction.
    """
    from kdaudit.distill.data import load_splits
    from kdaudit.distill.train import predict

    rows, _, _ = matrix
    splits = load_splits("digits")
    logits = predict(load_teacher(digits_teachers.normal_path, ProtectConfig(dataset="digits").arch, 10, 1), splits.x_test)
    rounded = torch.round(logits.float().log_softmax(1).exp() * 10) / 10  # what the endpoint sends
    conf = rounded.max(1).values
    correct = (rounded.argmax(1) == splits.y_test).double()
    gap = sum(float((conf == v).double().mean()) * abs(float(correct[conf == v].mean()) - float(v))
              for v in conf.unique())
    assert rows["round1"].utility.ece == pytest.approx(100 * gap, abs=0.01)
    assert rows["round1"].utility.ece != rows["none"].utility.ece


def test_the_skeptical_student_beats_normal_kd_on_the_nasty_teacher_with_full_logits(matrix):
    rows, _, nasty = matrix
    assert mean(rows[nasty], "skeptical", "skeptical_e") > mean(rows[nasty], "normal_kd")


def test_the_matrix_names_a_front_and_a_recommendation_under_its_rule(matrix):
    rows, m, _ = matrix
    assert m.pareto_front and m.recommendation.defence in m.pareto_front
    best = rows[m.recommendation.defence]
    assert best.utility.top1_drop <= 1.0
    eligible = [r for r in rows.values() if r.utility.top1_drop <= 1.0 and r.worst_case_complete]
    assert best.worst_case.accuracy.mean == min(r.worst_case.accuracy.mean for r in eligible)
