"""DFME (Truong et al., CVPR 2021, "Data-Free Model Extraction"): the black-box data-free attack.

DFAD's game (student minimises, generator maximises the L1 distance between student and
teacher logits; 5 student : 1 generator steps) with the one thing a black-box thief cannot
do replaced: the generator's gradient *through the teacher* is not backpropagated but
estimated by forward differences along random directions, as in the paper. For a batch of
N generated images (taken before the generator's final tanh, so every probe is a legal
image) and m random unit directions u_j per image,

    g_i ~= (d / (N m)) * sum_j [L(x_i + eps u_j) - L(x_i)] / eps * u_j

where L is the (negated) per-image L1 discrepancy and d the image dimension. Every probe is
an image sent to the teacher: one generator step costs N (m + 1) queries, all billed through
the same meter as the student steps (`TeacherOracle`, distill/oracle.py).

Logits from probabilities: an API that returns probabilities gives log p = z - logsumexp(z);
subtracting the row mean gives z - mean(z), the logits up to a per-row shift (the paper's
"mean" logit correction). L1 on logits then works as with a logits endpoint.

A label-only endpoint answers the same label at x and at x + eps u for almost every probe,
so the estimate is zero: DFME refuses it with a clear message (`DFME_LABEL_ONLY`).

The generator, checkpoint selection (agreement on held-out generated images, never real
data), watchdog and skeptical variant are the data-free trainer's (distill/datafree/).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdaudit.core.errors import InputError
from kdaudit.distill.attacks import DFME_LABEL_ONLY
from kdaudit.models.generator import Generator


def returns_probabilities(teacher: nn.Module) -> bool:
    """Whether the thief's view of the teacher is log-probabilities (an output policy or a probability endpoint)."""
    policy = getattr(teacher, "policy", None)
    if policy is not None and getattr(policy, "kind", "logits") != "logits":
        return True
    return getattr(getattr(teacher, "spec", None), "response", "logits") == "probabilities"


def returns_labels_only(teacher: nn.Module) -> bool:
    policy = getattr(teacher, "policy", None)
    if policy is not None and bool(getattr(policy, "hard", False)):
        return True
    return getattr(getattr(teacher, "spec", None), "response", "logits") == "labels"


def check_dfme_teacher(attack: str, teacher: nn.Module) -> None:
    """Raise `InputError` for a label-only teacher (no score differences to estimate a gradient from)."""
    if returns_labels_only(teacher):
        raise InputError(DFME_LABEL_ONLY.format(attack=attack))


def recover_logits(log_probs: torch.Tensor) -> torch.Tensor:
    """log p minus its row mean: the logits up to a per-row constant (DFME's 'mean' correction)."""
    return log_probs - log_probs.mean(1, keepdim=True)


class RecoveredLogits(nn.Module):
    """The teacher as DFME uses it: logits as they are, probabilities turned back into logits."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher
        self.is_remote = bool(getattr(teacher, "is_remote", False))
        self.has_features = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.teacher(x)
        return recover_logits((out[0] if isinstance(out, list) else out).float())


def dfme_teacher(attack: str, teacher: nn.Module) -> nn.Module:
    """Check the endpoint and wrap it so that DFME's losses always see logits."""
    check_dfme_teacher(attack, teacher)
    return RecoveredLogits(teacher) if returns_probabilities(teacher) else teacher


def unit_directions(n: int, m: int, shape: tuple[int, ...], rng: torch.Generator) -> torch.Tensor:
    """(n, m, *shape) directions drawn uniformly from the unit sphere (normalised Gaussians)."""
    u = torch.randn(n, m, *shape, generator=rng)
    return u / u.flatten(2).norm(dim=2).view(n, m, *([1] * len(shape))).clamp_min(1e-12)


@torch.no_grad()
def estimate_gradient(
    pre: torch.Tensor,
    activate: Callable[[torch.Tensor], torch.Tensor],
    teacher_logits: Callable[[torch.Tensor], torch.Tensor],
    student_logits: Callable[[torch.Tensor], torch.Tensor],
    directions: int,
    epsilon: float,
    rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-difference estimate of d(mean generator loss)/d(pre); returns (gradient, loss at pre).

    The generator loss is -L1(student, teacher) per image (the generator maximises the
    discrepancy). `teacher_logits` is the billed meter: it is called once on all N (m + 1)
    probes, so the bill is exactly that.
    """
    n, shape = len(pre), tuple(pre.shape[1:])
    dim = pre[0].numel()
    u = unit_directions(n, directions, shape, rng).to(pre.device)
    probes = torch.cat([pre.unsqueeze(1) + epsilon * u, pre.unsqueeze(1)], 1)  # (n, m + 1, ...), unperturbed last
    images = activate(probes.flatten(0, 1))
    t = teacher_logits(images)
    s = student_logits(images)
    loss = -F.l1_loss(s, t, reduction="none").mean(1).view(n, directions + 1)
    diff = (loss[:, :-1] - loss[:, -1:]).view(n, directions, *([1] * len(shape)))
    grad = (dim / epsilon) * (diff * u).mean(1) / n  # gradient of the batch mean, per image
    return grad, loss[:, -1].mean()


def dfme_generator_step(
    gen: Generator,
    z: torch.Tensor,
    teacher_logits: Callable[[torch.Tensor], torch.Tensor],
    student: nn.Module,
    student_exit: Callable[[torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    directions: int,
    epsilon: float,
    rng: torch.Generator,
) -> torch.Tensor:
    """One generator step on the estimated gradient; returns the generator loss (for the NaN watchdog).

    The student is put in eval mode for the probes (as in the paper) so its batch-norm
    statistics are not moved by the perturbed copies, and restored afterwards.
    """
    pre = gen.pre_activation(z)
    was = student.training
    student.eval()
    try:
        grad, loss = estimate_gradient(pre.detach(), gen.activate, teacher_logits, student_exit, directions, epsilon, rng)
    finally:
        student.train(was)
    opt.zero_grad(set_to_none=True)
    pre.backward(grad)
    opt.step()
    return loss
