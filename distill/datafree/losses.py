"""The data-free students' losses, and the forward pass that feeds them.

ZSKT's KL is the official code's: temperature 1, averaged over batch *and* classes
(`F.kl_div(..., reduction='mean')`), which is what beta_AT = 250 is balanced against.
Attention transfer is Zagoruyko & Komodakis's, summed over the matched stages up to the
student's teacher-facing exit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdaudit.distill.losses import soft_kl
from kdaudit.models.multi_exit import MultiExitNet


def attention_map(f: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis attention: channel mean of squared activations, L2-normalised."""
    a = f.float().pow(2).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    return F.normalize(a.flatten(1), dim=1)


def attention_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor], stages: int) -> torch.Tensor:
    """Sum over the first `stages` matched stages of mean squared attention-map difference."""
    total = student_feats[0].new_zeros(())
    for fs, ft in list(zip(student_feats, teacher_feats, strict=False))[:stages]:
        size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
        total = total + (attention_map(fs, size) - attention_map(ft.detach(), size)).pow(2).mean()
    return total


def zskt_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(T || S) at temperature tau, averaged over batch and classes (official ZSKT reduction)."""
    return soft_kl(teacher_logits, student_logits, tau) / student_logits.shape[1]


def student_outputs(model: nn.Module, x: torch.Tensor, with_features: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(exits, stage features): exits is `[logits]` for a plain net, MultiExitNet's order otherwise."""
    if isinstance(model, MultiExitNet):
        final, feats = model.backbone.forward_with_features(x)
        inner = [head(f) for head, f in zip(model.exits, feats[:3], strict=True)]
        return [final, inner[2], inner[1], inner[0]], feats
    if with_features:
        logits, feats = model.forward_with_features(x)
        return [logits], feats
    return [model(x)], []
