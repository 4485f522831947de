"""How long a data-free run is and what it costs in teacher queries, before it starts.

`plan_datafree` resolves the paper defaults, the dataset's iteration count and the query
budget into a `DataFreePlan`; the service's quota estimate, the cost of theft and the
trainer all read the same plan, so the queries they promise are the queries spent.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdaudit.core.errors import InputError
from kdaudit.distill.budget_table import MILESTONES
from kdaudit.distill.config import DataFreeSettings
from kdaudit.distill.datafree.kind import family

#: per-dataset defaults for fields left `None`: iterations (when no budget is given), batch
#: size and generator width. CIFAR-10 follows the papers (ZSKT ~80k pseudo batches of 128;
#: DFAD 500 epochs x 50 iterations of 256); digits (8x8) is scaled down to run on a CPU.
DATASET_DEFAULTS: dict[str, dict[str, dict[str, int]]] = {
    "digits": {"zskt": {"iterations": 150, "batch_size": 64}, "dfad": {"iterations": 400, "batch_size": 64},
               # DFME: the skeptical gain needs this scale (README: 61.8 vs 71.4 here, 65.2 vs 59.3 at 500 x 128)
               "dfme": {"iterations": 1000, "batch_size": 256}, "width": {"": 16}},
    "mnist": {"zskt": {"iterations": 2000}, "dfad": {"iterations": 2000}, "dfme": {"iterations": 2000}, "width": {"": 32}},
    "fashion-mnist": {"zskt": {"iterations": 3000}, "dfad": {"iterations": 3000}, "dfme": {"iterations": 3000}, "width": {"": 32}},
    # DFME on CIFAR-10: the paper's 20M queries at batch 256, m = 1 (7 x 256 queries an iteration)
    "cifar10": {"zskt": {"iterations": 80_000}, "dfad": {"iterations": 25_000}, "dfme": {"iterations": 11_000}, "width": {"": 64}},
    "npz": {"zskt": {"iterations": 2000}, "dfad": {"iterations": 2000}, "dfme": {"iterations": 2000}, "width": {"": 64}},
}
# CIFAR-100 (fine or coarse labels): the same image size and generator as CIFAR-10, the papers' iteration counts
DATASET_DEFAULTS["cifar100"] = DATASET_DEFAULTS["cifar100-coarse"] = DATASET_DEFAULTS["cifar10"]
PAPER = {
    "zskt": {"batch_size": 128, "latent_dim": 100},
    "dfad": {"batch_size": 256, "latent_dim": 256},
    "dfme": {"batch_size": 256, "latent_dim": 256},
}


def _dataset_default(dataset: str, fam: str, key: str) -> int | None:
    return DATASET_DEFAULTS.get(dataset, DATASET_DEFAULTS["npz"])[fam].get(key)


def reference_iterations(attack: str, dataset: str) -> int:
    """The dataset's default iteration count for `attack` (the papers' for CIFAR-10): what
    the cost of theft extrapolates a data-free run to (distill/cost.py)."""
    n = _dataset_default(dataset, family(attack), "iterations")
    assert n is not None
    return n


@dataclass(frozen=True)
class DataFreePlan:
    attack: str
    batch_size: int
    latent_dim: int
    iterations: int
    generator_width: int
    generator_steps: int
    student_steps: int
    checkpoints: int
    selection_samples: int
    budget: int | None
    directions: int = 1  # DFME: probes per image per generator step are directions + 1
    #: extra checkpoints before the first regular one, so the budget curve has a point within each
    #: milestone budget (10k queries: a handful of iterations at batch 256); counted in `checkpoints`
    early: tuple[int, ...] = ()

    @property
    def checkpoint_iterations(self) -> list[int]:
        """The iterations after which the student is checkpointed: the early milestone points, then
        `checkpoints - len(early)` evenly spaced ones ending at the last iteration."""
        regular = self.checkpoints - len(self.early)
        spaced = sorted({max(1, round(k * self.iterations / regular)) for k in range(1, regular + 1)})
        return sorted(set(self.early) | set(spaced))

    @property
    def queries_per_iteration(self) -> int:
        if family(self.attack) == "zskt":  # teacher runs on every generator step + once for the student steps
            return (self.generator_steps + 1) * self.batch_size
        if family(self.attack) == "dfme":  # forward differences: every probe is a query
            return (self.generator_steps * (self.directions + 1) + self.student_steps) * self.batch_size
        return (self.generator_steps + self.student_steps) * self.batch_size

    @property
    def planned_queries(self) -> int:
        return self.iterations * self.queries_per_iteration + self.checkpoints * self.selection_samples


def plan_datafree(attack: str, settings: DataFreeSettings, dataset: str) -> DataFreePlan:
    """Resolve the paper defaults, the dataset's iteration count and the query budget."""
    fam = family(attack)
    bs = settings.batch_size or _dataset_default(dataset, fam, "batch_size") or PAPER[fam]["batch_size"]
    width = _dataset_default(dataset, "width", "") or 64
    latent = settings.latent_dim or PAPER[fam]["latent_dim"]
    gsteps = settings.zskt_generator_steps if fam == "zskt" else settings.dfad_generator_steps
    ssteps = settings.zskt_student_steps if fam == "zskt" else settings.dfad_student_steps
    sel = settings.selection_samples
    dirs = settings.dfme_directions if fam == "dfme" else 1
    per_iter = DataFreePlan(attack, bs, latent, 1, width, gsteps, ssteps, 1, sel, None, dirs).queries_per_iteration
    iters = settings.iterations
    if iters is None and settings.budget is None:
        iters = _dataset_default(dataset, fam, "iterations")
    ck = settings.checkpoints
    if settings.budget is not None:
        budget = settings.budget
        fit = 0
        for ck in range(min(settings.checkpoints, iters or settings.checkpoints), 0, -1):
            fit = (budget - ck * sel) // per_iter
            if fit >= ck:
                break
        if fit < 1:
            raise InputError(
                f"a teacher-query budget of {budget:,} is too small for {attack}: one iteration sends "
                f"{per_iter:,} images (batch {bs}) and checkpoint selection {sel:,} more"
            )
        iters = min(iters, fit) if iters is not None else fit
    assert iters is not None
    ck = min(ck, iters)
    early = _early_checkpoints(iters, ck, per_iter, sel, settings.budget)
    return DataFreePlan(attack, bs, latent, iters, width, gsteps, ssteps, ck + len(early), sel, settings.budget, dirs, early)


def _early_checkpoints(iters: int, regular: int, per_iter: int, sel: int, budget: int | None) -> tuple[int, ...]:
    """Iterations for extra checkpoints at the milestone budgets (10k, 100k, 1M queries) that the
    evenly spaced ones skip: without them a 1,000 x 256 run's first point is at ~90k queries and
    the curve cannot say what 10k queries buy. Each costs a selection pass (`sel` queries), so they
    are added only while the run stays within its budget."""
    first_regular = max(1, round(iters / regular))
    early: list[int] = []
    for m in MILESTONES:
        it = (m - (len(early) + 1) * sel) // per_iter  # queries at that checkpoint, its own selection pass included
        if it < 1 or it >= first_regular or (early and it <= early[-1]):
            continue
        if budget is not None and iters * per_iter + (regular + len(early) + 1) * sel > budget:
            break
        early.append(it)
    return tuple(early)
