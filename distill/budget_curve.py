"""Leakage vs query budget: what a thief gets for 10k, 100k, 1M teacher queries, from one run.

A data-free run checkpoints its student as it spends queries (distill/datafree/selection.py). The
thief who stopped at budget B would have had the checkpoints taken before B and the
held-out generated pool gathered before B, and would have picked among them by the same
rule the full run uses (class-balanced agreement with the teacher on generated images; no
real data). So one training run answers every smaller budget: for each checkpoint k,
`prefix_choices` (distill/datafree/selection.py, with the rule it applies) picks the snapshot
the thief would keep with only checkpoints 1..k and pool 1..k; `evaluate_curve` scores those
snapshots on the test split; distill/budget_table.py reads the resulting (queries, accuracy)
curve at the milestone budgets.
"""

from __future__ import annotations

import torch
from torch import nn

from kdaudit.distill.budget_table import BudgetPoint
from kdaudit.distill.datafree.selection import final_exit_predictions


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
            pred = final_exit_predictions(probe, x_test.to(next(probe.parameters()).device))
            acc[idx] = round(100.0 * (pred.cpu() == y_test.cpu()).float().mean().item(), 3)
    finally:
        model.load_state_dict(saved)
        model.eval()
    return [BudgetPoint(queries=q, accuracy=acc[c], checkpoint=c + 1) for q, c in zip(info["queries"], info["choice"], strict=True)]
