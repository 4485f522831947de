"""The owner's trade-off: utility lost against what the strongest thief still gets.

Each defence is a point (utility lost = top-1 drop in points, worst case = the best attack's
mean student accuracy, percent); both are costs. A defence is on the Pareto front when no
other defence is at least as good on both and strictly better on one. The recommendation is
one rule applied to every defence, written into the matrix (`RECOMMENDATION_RULE`).
"""

from __future__ import annotations

from dataclasses import dataclass

#: the default most top-1 accuracy (points) an owner gives up for protection
DEFAULT_MAX_LOSS_PTS = 1.0


def recommendation_rule(max_loss: float) -> str:
    return (f"among defences that lose at most {max_loss:g} pt of top-1 accuracy, the one with the lowest worst-case "
            "student accuracy (the best attack's mean over seeds), every attack of its panel measured; ties -> the "
            "least top-1 lost, then the least calibration lost (ECE added), then the name")


@dataclass(frozen=True)
class Point:
    name: str
    utility_lost: float
    worst_case: float
    #: ECE added over no defence (points): a tie-break only, not a Pareto axis
    calibration_cost: float = 0.0


def dominates(a: Point, b: Point) -> bool:
    return (a.utility_lost <= b.utility_lost and a.worst_case <= b.worst_case
            and (a.utility_lost < b.utility_lost or a.worst_case < b.worst_case))


def pareto_front(points: list[Point]) -> list[str]:
    """Names of the undominated points, by utility lost (then worst case)."""
    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return [p.name for p in sorted(front, key=lambda p: (p.utility_lost, p.worst_case, p.name))]


def recommend(points: list[Point], max_loss: float = DEFAULT_MAX_LOSS_PTS) -> Point | None:
    """The rule above; None when no defence stays within `max_loss`."""
    eligible = [p for p in points if p.utility_lost <= max_loss]
    return min(eligible, key=lambda p: (p.worst_case, p.utility_lost, p.calibration_cost, p.name)) if eligible else None
