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

Data-available runs get the same curve from the cohort trainer (distill/train.py): after each
epoch, the queries spent so far and the test accuracy of the snapshot the validation rule held
then (`extra["budget_points"]`). It reads one long run at its early epochs, so it is a lower
bound on what a thief with that budget gets: one who planned for it would run a shorter
schedule, which ends its learning-rate decay within the budget (DESIGN.md: schedule length).
"""

from __future__ import annotations

import torch
from torch import nn

from kdaudit.distill.budget_table import BudgetPoint
from kdaudit.distill.datafree.selection import final_exit_predictions


def evaluate_curve(model: nn.Module, extra: dict, x_test: torch.Tensor, y_test: torch.Tensor) -> list[BudgetPoint]:
    """The run's leakage-vs-queries curve: a data-free run's kept snapshots (`extra["budget_curve"]`)
    scored on the test split, or a data-available run's points as the trainer scored them."""
    if extra.get("budget_points"):  # a data-available run: scored by the trainer as it went
        return [BudgetPoint(queries=int(q), accuracy=acc, checkpoint=int(e)) for e, q, acc in extra["budget_points"]]
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
