"""How much work a planned run is before it runs: the thief's images and the teacher queries billed.

One table of training-set sizes and one per-run estimate, shared by the cost of theft
(distill/cost.py), the compute estimate (distill/budget.py) and the API's query quota
(service/limits.py), so the three can never disagree. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kdaudit.distill.attacks import find_attack

#: images in each dataset's full training split (before the validation carve-out): what a real thief
#: with the data would train on. digits: the fixed 1,200/597 split of distill/data.py; the others
#: their standard train splits. Datasets read from a path (npz, folder) are not listed.
TRAIN_IMAGES: dict[str, int] = {"digits": 1200, "mnist": 60_000, "fashion-mnist": 60_000, "cifar10": 50_000,
                                "cifar100": 50_000, "cifar100-coarse": 50_000}
#: the estimate's assumption for a dataset read from a path, whose size is unknown before loading
UNKNOWN_TRAIN_IMAGES = 60_000


def thief_train_images(dataset: str, val_fraction: float, fraction: float) -> int:
    """Images the thief's student trains on per epoch (validation carved out, then its data fraction)."""
    images = TRAIN_IMAGES.get(dataset, UNKNOWN_TRAIN_IMAGES) * (1.0 - val_fraction)
    return int(math.ceil(images * fraction))


@dataclass(frozen=True)
class RunWork:
    """One planned run's work: images its student trains on (all epochs) and teacher queries billed."""

    student_images: int
    teacher_queries: int


def run_work(kind: str, *, dataset: str, val_fraction: float, fraction: float, epochs: int,
             query_budget: int | None, datafree_queries: int | None = None) -> RunWork:
    """An upper estimate of a run's work.

    Data-available runs see their thief's images once per epoch; an attack among them is billed
    each image at most once per epoch and never more than the per-run query budget. A data-free
    run sends every generated image to the teacher and trains on it: `datafree_queries` is its
    plan (distill/datafree.py `plan_datafree`, which fits the budget), required for those runs.
    """
    spec = find_attack(kind)
    if spec is not None and spec.data_free:
        if datafree_queries is None:
            raise ValueError(f"{kind} is data-free: pass its planned queries (datafree_queries)")
        return RunWork(datafree_queries, datafree_queries)
    seen = thief_train_images(dataset, val_fraction, fraction) * epochs
    if spec is None:  # a baseline: no teacher
        return RunWork(seen, 0)
    return RunWork(seen, min(seen, query_budget or seen))


def datafree_settings(vc: Any) -> Any:
    """A data-free run's settings (an AuditConfig's `datafree`): it takes the threat model's query
    budget unless its own `budget` is set."""
    if vc.datafree.budget is not None or vc.threat.query_budget is None:
        return vc.datafree
    return vc.datafree.model_copy(update={"budget": vc.threat.query_budget})
