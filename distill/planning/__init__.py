"""Torch-free planning rules shared by the engine, the API and the store.

- runs.py: which runs an audit trains (`plan_runs`, `RunSpec`) and which train together (`cohort_size`);
- sizes.py: the training-set table and each run's images and teacher queries (`run_work`);
- threat.py: which attacks an output policy / endpoint lets run (`check_threat`);
- parts.py: how an audit's seeds are split across workers (`plan_parts`).

Nothing here imports torch or numpy (import-linter contract in pyproject.toml): the API process
asks these questions without loading the engine.
"""

from kdaudit.distill.planning.parts import plan_parts, split_seeds
from kdaudit.distill.planning.runs import (
    BASE,
    RunSpec,
    baseline_kinds,
    cohort_size,
    kind_of_key,
    plan_runs,
    scratch_variant,
    trains_in_cohort,
    variant_name,
)
from kdaudit.distill.planning.sizes import (
    TRAIN_IMAGES,
    RunWork,
    datafree_settings,
    run_work,
    thief_train_images,
)
from kdaudit.distill.planning.threat import check_attacks, check_threat

__all__ = [
    "BASE", "TRAIN_IMAGES", "RunSpec", "RunWork", "baseline_kinds", "check_attacks", "check_threat", "cohort_size",
    "datafree_settings",
    "kind_of_key", "plan_parts", "plan_runs", "run_work", "scratch_variant", "split_seeds", "thief_train_images",
    "trains_in_cohort", "variant_name",
]
