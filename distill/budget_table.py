"""The leakage-vs-query-budget table of a report (torch-free: the report schema imports it).

Each data-free run carries its curve (`RunRecord.budget_curve`, built by
distill/budget_curve.py from the run's own checkpoints). `budget_summary` reads every curve
at the milestone budgets and averages over seeds, per attack x student: how much accuracy a
thief gets for 10k, 100k, 1M teacher queries. A budget above what a run spent is not
extrapolated; such a cell counts only the runs that reached it, and says how many did.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import BaseModel, Field

#: the budgets the report reads off the curves (the issue's 10k / 100k / 1M)
MILESTONES: tuple[int, ...] = (10_000, 100_000, 1_000_000)
CURVE_RULE = (
    "at each checkpoint, the snapshot a thief who stopped there would keep: best class-balanced agreement "
    "with the teacher on the held-out generated images gathered so far (no real data); queries count "
    "everything sent up to that checkpoint (estimation and selection queries included)"
)
DATA_CURVE_RULE = (
    "after each epoch, the snapshot with the best validation accuracy so far; queries count the images sent "
    "to the teacher so far. Early epochs of the full schedule: a lower bound for a thief who planned a shorter "
    "schedule for that budget"
)


class BudgetPoint(BaseModel):
    """One point of a run's leakage-vs-queries curve."""

    queries: int = Field(description="Teacher queries spent up to this checkpoint.")
    accuracy: float = Field(description="Test accuracy of the snapshot selected with this many queries, percent.")
    checkpoint: int = Field(description="That snapshot's 1-based checkpoint (data-free) or epoch (data-available).")


class BudgetRow(BaseModel):
    """One milestone budget read off one run's curve."""

    budget: int
    reached: bool = Field(description="False when the run spent fewer queries than the budget (not extrapolated).")
    queries: int | None = Field(default=None, description="Queries at the last checkpoint within the budget.")
    accuracy: float | None = None


class BudgetCell(BaseModel):
    budget: int
    runs: int = Field(description="Runs whose curve reached this budget (the mean is over these).")
    accuracy_mean: float | None = None
    accuracy_min: float | None = None
    accuracy_max: float | None = None


class BudgetSummary(BaseModel):
    """Accuracy a thief gets per query budget, for one attack x student, over seeds."""

    attack: str
    student: str
    seeds: int
    cells: list[BudgetCell]
    rule: str = CURVE_RULE
    variant: str | None = Field(default=None, description="The run variant (teacher-output sweep), when not the base one.")


def milestones(curve: Sequence[BudgetPoint], budgets: Sequence[int] = MILESTONES) -> list[BudgetRow]:
    """Each budget: the last curve point within it; a budget above the run's spend is marked not reached."""
    rows = []
    spent = max((p.queries for p in curve), default=0)
    for b in budgets:
        within = [p for p in curve if p.queries <= b]
        last = within[-1] if within else None
        rows.append(BudgetRow(budget=b, reached=b <= spent, queries=last.queries if last else None,
                              accuracy=last.accuracy if last else None))
    return rows


def budget_summary(runs: Sequence[object], budgets: Sequence[int] = MILESTONES) -> list[BudgetSummary]:
    """Per attack x student with curves (RunRecord-like: kind, student, status, budget_curve): the milestone table."""
    groups: dict[tuple[str, str, str | None], list[list[BudgetPoint]]] = {}
    rules: dict[tuple[str, str, str | None], str] = {}
    for r in runs:
        curve = getattr(r, "budget_curve", None)
        if curve and getattr(r, "status", "ok") == "ok":
            variant = getattr(r, "variant", None)
            key = (r.kind, r.student, None if variant in (None, "", "base") else variant)  # type: ignore[attr-defined]
            groups.setdefault(key, []).append(curve)
            rules[key] = DATA_CURVE_RULE if getattr(r, "setting", "data_free") == "data_available" else CURVE_RULE
    out = []
    for (attack, student, variant), curves in groups.items():
        cells = []
        for b in budgets:
            accs = [row.accuracy for c in curves for row in milestones(c, [b]) if row.reached and row.accuracy is not None]
            cells.append(BudgetCell(budget=b, runs=len(accs),
                                    accuracy_mean=round(statistics.fmean(accs), 3) if accs else None,
                                    accuracy_min=min(accs) if accs else None, accuracy_max=max(accs) if accs else None))
        out.append(BudgetSummary(attack=attack, student=student, seeds=len(curves), cells=cells,
                                 rule=rules[(attack, student, variant)], variant=variant))
    return out
