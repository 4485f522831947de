"""Each loss against a value computed by hand (two classes, logs chosen for easy arithmetic)."""

import math

import pytest
import torch

from kdaudit.distill.losses import (
    hinton_kd_loss,
    hinton_kd_terms,
    nasty_teacher_loss,
    self_distillation_loss,
    skeptical_loss,
    skeptical_terms,
    soft_kl,
    total_loss,
)

LN = math.log
# logits whose softmax is exactly [0.5, 0.5] and [0.75, 0.25]
UNIFORM = torch.tensor([[0.0, 0.0]])
SKEWED = torch.tensor([[LN(0.75), LN(0.25)]])
KL_U_S = 0.5 * LN(0.5 / 0.75) + 0.5 * LN(0.5 / 0.25)  # KL([.5,.5] || [.75,.25]) = 0.143841
KL_S_U = 0.75 * LN(0.75 / 0.5) + 0.25 * LN(0.25 / 0.5)  # KL([.75,.25] || [.5,.5]) = 0.130812
Y0 = torch.tensor([0])


def test_soft_kl_direction_and_value():
    assert soft_kl(UNIFORM, SKEWED, tau=1.0).item() == pytest.approx(KL_U_S, abs=1e-6)
    assert soft_kl(SKEWED, UNIFORM, tau=1.0).item() == pytest.approx(KL_S_U, abs=1e-6)
    assert KL_U_S == pytest.approx(0.143841, abs=1e-6)


def test_soft_kl_temperature_scales_logits():
    # tau=2 on doubled logits equals tau=1 on the originals
    assert soft_kl(2 * SKEWED, 2 * UNIFORM, tau=2.0).item() == pytest.approx(KL_S_U, abs=1e-6)


def test_hinton_kd_loss_value():
    # student SKEWED, teacher UNIFORM, label 0: CE = -ln 0.75
    got = hinton_kd_loss(SKEWED, UNIFORM, Y0, alpha=0.9, tau=1.0).item()
    assert got == pytest.approx(0.9 * KL_U_S + 0.1 * -LN(0.75), abs=1e-6)
    # tau^2 factor on the soft term; without labels only the soft term remains
    got_t2 = hinton_kd_loss(2 * SKEWED, 2 * UNIFORM, None, alpha=0.5, tau=2.0).item()
    assert got_t2 == pytest.approx(0.5 * 4 * KL_U_S, abs=1e-6)


def test_nasty_teacher_loss_value_and_direction():
    # teacher SKEWED, adversary UNIFORM: CE(T, 0) - omega * tau^2 * KL(p_T || p_A)
    got = nasty_teacher_loss(SKEWED, UNIFORM, Y0, omega=0.04, tau=1.0).item()
    assert got == pytest.approx(-LN(0.75) - 0.04 * KL_S_U, abs=1e-6)
    # KL(p_T||p_A), not KL(p_A||p_T): the two differ here, so the wrong direction fails
    assert got != pytest.approx(-LN(0.75) - 0.04 * KL_U_S, abs=1e-6)


def test_nasty_loss_gradient_flows_into_teacher_only():
    t = SKEWED.clone().requires_grad_(True)
    a = UNIFORM.clone().requires_grad_(True)
    nasty_teacher_loss(t, a, Y0, omega=0.04, tau=4.0).backward()
    assert t.grad is not None and t.grad.abs().sum() > 0
    assert a.grad is None


def test_self_distillation_loss_value():
    # head SKEWED learns from final UNIFORM: beta*KL(p_final||p_head) + (1-beta)*CE(head)
    got = self_distillation_loss(SKEWED, UNIFORM, Y0, beta=0.3, tau=1.0).item()
    assert got == pytest.approx(0.3 * KL_U_S + 0.7 * -LN(0.75), abs=1e-6)


def test_skeptical_loss_composition():
    final, sd, ac, first = UNIFORM, SKEWED, SKEWED, UNIFORM
    teacher = UNIFORM
    got = skeptical_loss([final, sd, ac, first], teacher, Y0, ac_index=2, sd_index=1, alpha=0.9, tau=1.0, beta=0.3,
                         gammas=(1.0, 2.0, 3.0)).item()
    l_t = 0.9 * KL_U_S + 0.1 * -LN(0.75)
    l_sd = 0.3 * KL_U_S + 0.7 * -LN(0.75)
    ce_final = -LN(0.5)
    assert got == pytest.approx(l_t + 2.0 * l_sd + 3.0 * ce_final, abs=1e-6)


def test_skeptical_loss_teacher_reaches_only_the_ac_exit():
    exits = [torch.randn(4, 3, requires_grad=True) for _ in range(4)]
    teacher = torch.randn(4, 3, requires_grad=True)
    skeptical_loss(exits, teacher, torch.tensor([0, 1, 2, 0]), ac_index=2, sd_index=1, alpha=0.9, tau=4.0, beta=0.3).backward()
    assert teacher.grad is None  # the teacher is fixed
    assert exits[3].grad is None  # the stage-1 exit gets no loss, as in the official code
    assert all(e.grad is not None for e in exits[:3])


def test_named_terms_add_up_to_the_loss_exactly():
    """The terms the report records are the loss's own parts: their in-order sum is bit-identical."""
    torch.manual_seed(0)
    exits = [torch.randn(8, 5) for _ in range(4)]
    teacher, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    kd = hinton_kd_terms(exits[0], teacher, y, alpha=0.9, tau=4.0)
    assert list(kd) == ["kd", "ce"]
    assert torch.equal(total_loss(kd), hinton_kd_loss(exits[0], teacher, y, alpha=0.9, tau=4.0))
    assert list(hinton_kd_terms(exits[0], teacher, None, alpha=0.9, tau=4.0)) == ["kd"]
    kw = dict(ac_index=2, sd_index=1, alpha=0.9, tau=4.0, beta=0.3, gammas=(1.0, 2.0, 3.0))
    sk = skeptical_terms(exits, teacher, y, **kw)
    assert list(sk) == ["kd_aux", "self_distill", "ce"]
    expected = (hinton_kd_loss(exits[2], teacher, y, 0.9, 4.0)
                + 2.0 * self_distillation_loss(exits[1], exits[0], y, 0.3, 4.0) + 3.0 * torch.nn.functional.cross_entropy(exits[0], y))
    assert torch.equal(total_loss(sk), expected)
    assert torch.equal(skeptical_loss(exits, teacher, y, **kw), expected)
