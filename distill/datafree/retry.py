"""Retrain a data-free run the watchdog flagged (distill/datafree/watchdog.py), per DATAFREE_RETRY_PLAN.

The thief paid for every attempt, so the result's `teacher_queries` and `seconds` are the
sums over all attempts, and under a query budget each retry only gets what the previous
attempts left.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdaudit.core.errors import InputError
from kdaudit.distill.config import DataFreeSettings, KDSettings, SkepticalSettings
from kdaudit.distill.data import Splits
from kdaudit.distill.datafree.kind import family
from kdaudit.distill.datafree.plan import plan_datafree
from kdaudit.distill.datafree.train import train_datafree
from kdaudit.distill.datafree.watchdog import DATAFREE_RETRY_PLAN
from kdaudit.distill.train import EpochReport, MemberResult


def retry_datafree(
    result: MemberResult,
    splits: Splits,
    teacher: nn.Module,
    settings: DataFreeSettings | None = None,
    *,
    kd: KDSettings | None = None,
    skeptical: SkepticalSettings | None = None,
    device: torch.device | None = None,
    on_checkpoint: Callable[[EpochReport], None] | None = None,
) -> tuple[MemberResult, list[tuple[str, str]]]:
    """Retrain a run the watchdog flagged, per DATAFREE_RETRY_PLAN, until it trains or the plan runs out.

    Returns the last attempt and one (reason, change) per retry: why the previous attempt
    failed and what this one changed (the report's `Retry` records). A run that was not
    flagged comes back unchanged with no retries.

    Each attempt's own figures are in `extra["attempts"]`. Under a query budget the budget
    caps the whole run: when what the previous attempts left is too small for another
    attempt the retries stop and the reason says so. `on_checkpoint` is passed to every
    retry, whose checkpoints count from 1 again.
    """
    if result.diverged is None:
        return result, []
    settings = settings or DataFreeSettings()
    m = result.member
    fam = family(m.kind)
    attempts = [{"teacher_queries": result.teacher_queries, "seconds": result.seconds, "diverged": result.diverged}]
    retries: list[tuple[str, str]] = []
    for g_factor, s_factor, offset, change in DATAFREE_RETRY_PLAN:
        if result.diverged is None:
            break
        spent = sum(a["teacher_queries"] for a in attempts)
        update: dict[str, float | int] = {
            "generator_lr": settings.generator_lr * g_factor,
            "zskt_student_lr": settings.zskt_student_lr * s_factor,
            "dfad_student_lr": settings.dfad_student_lr * s_factor,
        }
        if settings.budget is not None:
            update["budget"] = settings.budget - spent
        cfg = settings.model_copy(update=update)
        if settings.budget is not None:
            try:
                plan_datafree(m.kind, cfg, splits.spec.name)
            except InputError:
                result.diverged += (f"; not retried: {settings.budget - spent:,} of the run's {settings.budget:,} "
                                    "teacher queries left, too few for another attempt")
                break
        student_lr = cfg.zskt_student_lr if fam == "zskt" else cfg.dfad_student_lr
        retries.append((result.diverged, f"{change} (generator lr {cfg.generator_lr:g}, student lr {student_lr:g}, seed offset {offset})"))
        result = train_datafree(
            m.kind, m.arch, m.seed, splits, teacher, cfg, kd=kd, skeptical=skeptical, device=device,
            key=m.key, on_checkpoint=on_checkpoint, seed_offset=offset,
        )
        attempts.append({"teacher_queries": result.teacher_queries, "seconds": result.seconds, "diverged": result.diverged})
    result.teacher_queries = sum(a["teacher_queries"] for a in attempts)
    result.seconds = round(sum(a["seconds"] for a in attempts), 3)
    result.extra["attempts"] = attempts
    return result, retries
