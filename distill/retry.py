"""The divergence watchdog's retries of a data-available run: what changes, in which order."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from kdaudit.distill.attacks import find_attack
from kdaudit.distill.config import AuditConfig
from kdaudit.distill.data import Splits
from kdaudit.distill.report import Retry
from kdaudit.distill.train import Cohort, MemberResult

#: the divergence watchdog's retries, in order: (lr factor, seed offset, documented change)
RETRY_PLAN: tuple[tuple[float, int, str], ...] = (
    (0.5, 0, "learning rate halved"),
    (0.5, 1, "learning rate halved and a new seed (init and data order offset by 1)"),
)


def retry_diverged(result: MemberResult, config: AuditConfig, splits: Splits, teacher: nn.Module,
                   device: torch.device, seed: int) -> tuple[MemberResult, list[Retry]]:
    """Retrain a diverged cohort member alone, per RETRY_PLAN, until it trains or the plan runs out.

    A member trains alone exactly as it would in its cohort (tested), so the only differences
    from the original attempt are the documented changes. Retries' teacher queries and seconds
    are added to the run's: the thief paid for them, and the query budget covers all attempts.
    """
    retries: list[Retry] = []
    m = result.member
    spent, seconds = result.teacher_queries, result.seconds
    budget = config.threat.query_budget
    uses_teacher = find_attack(m.kind) is not None  # baselines never ask the teacher
    for factor, offset, change in RETRY_PLAN:
        if result.diverged is None:
            break
        left = None if budget is None or not uses_teacher else budget - spent
        if left is not None and left < config.schedule.batch_size:  # the run's budget is its budget, retries included
            result.diverged += f"; not retried: {left:,} of the run's {budget:,} teacher queries left, less than one batch"
            break
        lr = config.schedule.lr * factor
        retries.append(Retry(reason=result.diverged, change=f"{change} (lr {lr:g}, seed offset {offset})"))
        result = Cohort(
            [dataclasses.replace(m, seed_offset=offset)], splits, config.schedule.model_copy(update={"lr": lr}),
            reference=teacher, kd=config.kd, skeptical=config.skeptical, device=device, stream_seed=seed + offset,
            query_budget=left if left is not None else budget, billing=config.threat.billing,
        ).train()[0]
        spent += result.teacher_queries
        seconds += result.seconds
    result.teacher_queries, result.seconds = spent, round(seconds, 3)
    return result, retries

