"""Training objectives, one function per equation in the papers we reproduce.

All KL terms use `reduction='batchmean'` (the true per-sample KL), as the official
Nasty-Teacher and Skeptical-student code do. `kl(p_target || p_input)` is written
`F.kl_div(log_softmax(input/tau), softmax(target/tau))`, so the *second* argument's
softmax is the one inside the log-ratio's numerator; that matters for the nasty loss.
"""

from __future__ import annotations

import functools
import operator

import torch
import torch.nn.functional as F

#: a loss as its named terms, in the order they add up to the total (as mdistiller's distillers return them)
LossTerms = dict[str, torch.Tensor | float]


def total_loss(terms: LossTerms) -> torch.Tensor:
    """The terms added left to right: the same sum, in the same order, as the single-expression losses
    had, so a run's numbers do not depend on whether its terms are recorded."""
    return functools.reduce(operator.add, terms.values())  # type: ignore[return-value]


def soft_kl(target_logits: torch.Tensor, input_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(softmax(target/tau) || softmax(input/tau)), averaged over the batch.

    Gradients flow into both arguments; callers detach whichever side must stay fixed.
    """
    return F.kl_div(
        F.log_softmax(input_logits / tau, dim=1),
        F.softmax(target_logits / tau, dim=1),
        reduction="batchmean",
    )


def hinton_kd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    alpha: float,
    tau: float,
) -> LossTerms:
    """Hinton et al. 2015: `kd` = alpha * tau^2 * KL(p_T^tau || p_S^tau), `ce` = (1 - alpha) * CE(S, y).

    With `labels=None` (a thief without labels, e.g. data-free) only the soft term is used.
    """
    terms: LossTerms = {"kd": alpha * tau * tau * soft_kl(teacher_logits.detach(), student_logits, tau)}
    if labels is not None:
        terms["ce"] = (1.0 - alpha) * F.cross_entropy(student_logits, labels)
    return terms


def hinton_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    alpha: float,
    tau: float,
) -> torch.Tensor:
    """The sum of `hinton_kd_terms`."""
    return total_loss(hinton_kd_terms(student_logits, teacher_logits, labels, alpha, tau))


def nasty_teacher_loss(
    teacher_logits: torch.Tensor,
    adversary_logits: torch.Tensor,
    labels: torch.Tensor,
    omega: float,
    tau: float,
) -> torch.Tensor:
    """Ma et al. 2021 (Nasty Teacher): CE(T, y) - omega * tau^2 * KL(p_T^tau || p_A^tau).

    Direction matters (DESIGN.md section 2): the official train_nasty.py maximises
    KL(p_T || p_A) with the gradient flowing through the *teacher's* softmax and the
    adversary A fixed. The reversed direction does not make a teacher nasty on digits.
    """
    adv = soft_kl(teacher_logits, adversary_logits.detach(), tau) * tau * tau
    return F.cross_entropy(teacher_logits, labels) - omega * adv


def self_distillation_loss(
    head_logits: torch.Tensor,
    final_logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    tau: float,
) -> torch.Tensor:
    """Skeptical student's L_SD (train_kd_to_SD.py): beta * KL(p_final^tau || p_head^tau) + (1 - beta) * CE(head, y).

    As in the official code: no tau^2 factor and no stop-gradient on the final exit.
    """
    return beta * soft_kl(final_logits, head_logits, tau) + (1.0 - beta) * F.cross_entropy(head_logits, labels)


def skeptical_terms(
    exits: list[torch.Tensor],
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ac_index: int,
    sd_index: int,
    alpha: float,
    tau: float,
    beta: float,
    gammas: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> LossTerms:
    """Kundu et al. 2021: `kd_aux` = gamma1 * L_T, `self_distill` = gamma2 * L_SD, `ce` = gamma3 * CE(final).

    `exits[0]` is the final exit, `exits[ac_index]` the auxiliary classifier that alone
    sees the teacher (Hinton KD), `exits[sd_index]` the self-distillation head. Exits not
    named get no loss (as the stage-1 exit in the official code).
    """
    g_t, g_sd, g_ce = gammas
    l_t = hinton_kd_loss(exits[ac_index], teacher_logits, labels, alpha, tau)
    l_sd = self_distillation_loss(exits[sd_index], exits[0], labels, beta, tau) if sd_index != ac_index else 0.0
    return {"kd_aux": g_t * l_t, "self_distill": g_sd * l_sd, "ce": g_ce * F.cross_entropy(exits[0], labels)}


def skeptical_loss(
    exits: list[torch.Tensor],
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ac_index: int,
    sd_index: int,
    alpha: float,
    tau: float,
    beta: float,
    gammas: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """The sum of `skeptical_terms`."""
    return total_loss(skeptical_terms(exits, teacher_logits, labels, ac_index=ac_index, sd_index=sd_index,
                                      alpha=alpha, tau=tau, beta=beta, gammas=gammas))
