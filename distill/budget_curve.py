"""Leakage vs query budget: what a thief gets for 10k, 100k, 1M teacher queries, from one run.

A data-free run checkpoints its student as it spends queries (distill/datafree.py). The
thief who stopped at budget B would have had the checkpoints taken before B and the
held-out generated pool gathered before B, and would have picked among them by the same
rule the full run uses (class-balanced agreement with the teacher on generated images; no
real data). So one training run answers every smaller budget: for each checkpoint k,
`prefix_choices` picks the snapshot the thief would keep with only checkpoints 1..k and
pool 1..k; the caller scores those snapshots on the test split; distill/budget_table.py reads the
resulting (queries, accuracy) curve at the milestone budgets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdaudit.distill.budget_table import BudgetPoint


@torch.no_grad()
def _predictions(model: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(x), chunk):
        o = model(x[i : i + chunk])
        out.append((o[0] if isinstance(o, list) else o).argmax(1))
    model.train(was)
    return torch.cat(out)


def balanced(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the teacher classes present of per-class agreement, percent (the selection score)."""
    per_class = [(pred[labels == c] == c).float().mean() for c in labels.unique()]
    return 100.0 * torch.stack(per_class).mean().item()


def prefix_choices(probe: nn.Module, snapshots: Sequence[dict[str, torch.Tensor]],
                   pool_x: Sequence[torch.Tensor], pool_t: Sequence[torch.Tensor]) -> list[int]:
    """For each checkpoint k (0-based), the snapshot index in 0..k the selection rule keeps on pool 0..k.

    Ties go to the later snapshot, as in the full run's selection. `probe` is a scratch copy
    of the student (its weights are overwritten).
    """
    px = torch.cat(list(pool_x))
    ends = torch.tensor([len(p) for p in pool_x]).cumsum(0).tolist()
    preds = []
    for snap in snapshots:
        probe.load_state_dict(snap)
        preds.append(_predictions(probe, px))
    labels = torch.cat(list(pool_t))
    choices = []
    for k in range(len(snapshots)):
        n = ends[k]
        scores = [balanced(preds[i][:n], labels[:n]) for i in range(k + 1)]
        choices.append(max(range(k + 1), key=lambda i: (scores[i], i)))
    return choices


def evaluate_curve(model: nn.Module, extra: dict, x_test: torch.Tensor, y_test: torch.Tensor) -> list[BudgetPoint]:
    """Score the snapshots a data-free run kept for its curve (`extra["budget_curve"]`) on the test split."""
    info = extra.get("budget_curve")
    if not info:
        return []
    probe = model
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    acc: dict[int, float] = {}
    try:
        for idx, snap in info["snapshots"].items():
            probe.load_state_dict(snap)
            pred = _predictions(probe, x_test.to(next(probe.parameters()).device))
            acc[idx] = round(100.0 * (pred.cpu() == y_test.cpu()).float().mean().item(), 3)
    finally:
        model.load_state_dict(saved)
        model.eval()
    return [BudgetPoint(queries=q, accuracy=acc[c], checkpoint=c + 1) for q, c in zip(info["queries"], info["choice"], strict=True)]
