"""Cost of theft: what stealing the teacher would cost an attacker at full scale.

An audit trains its thieves on a subset and a short schedule so that it finishes; the
question a teacher's owner asks is what a *real* attack costs. Each attack's runs report
measured seconds (on the audit's device) and teacher queries (images sent); `theft_cost`
takes their mean and extrapolates linearly:

- data-available attacks (normal KD, skeptical) by images x epochs: from the audit's thief
  train set and schedule to the dataset's whole train split and reference schedule
  (`FULL_TRAIN_IMAGES`, `REFERENCE_EPOCHS`);
- data-free attacks by generator/student iterations: the generator makes its own queries,
  so the thief's data set plays no part; the full count is the dataset's default in
  distill/datafree.py (`reference_iterations`), the papers' counts for CIFAR-10.

Every assumption behind the figure is written into the result, so a reader sees what the
number means. Pure arithmetic: no torch, so the report schema can import it.
"""

from __future__ import annotations

import math
import statistics

from pydantic import BaseModel, Field

from kdaudit.distill.planning.sizes import TRAIN_IMAGES

#: Reference schedule (epochs) of a real data-available attack per dataset.
#: - cifar10 160: the Nasty Teacher paper's CIFAR-10 recipe (Ma et al. 2021: SGD lr 0.1,
#:   batch 128, 160 epochs on CIFAR-10; 200 is their CIFAR-100/Tiny-ImageNet figure),
#:   DESIGN.md section 2, and kdaudit's own default (distill/defaults.py).
#: - digits 40, mnist 10, fashion-mnist 15, npz 40: no paper attacks these sets; these are
#:   kdaudit's default schedules (distill/defaults.py), which reach their plateau there.
REFERENCE_EPOCHS: dict[str, int] = {"digits": 40, "mnist": 10, "fashion-mnist": 15, "cifar10": 160, "cifar100": 200,
                                    "cifar100-coarse": 200, "npz": 40, "folder": 40}
#: The dataset's whole train split (before the audit's validation carve-out and thief
#: fraction): what a real thief with the data would train on; one table for the engine and the
#: API (distill/planning/sizes.py). npz / folder: pass it.
FULL_TRAIN_IMAGES: dict[str, int] = TRAIN_IMAGES


class TheftCost(BaseModel):
    """One attack x student: measured cost per run and the extrapolation to a full attack."""

    attack: str
    student: str
    device: str = Field(description="Where the seconds were measured (cpu or cuda); seconds are that device's wall time.")
    runs: int = Field(description="Runs (seeds) the means are over.")
    seconds_per_run: float = Field(description="Measured mean wall seconds per run.")
    queries_per_run: float = Field(description="Measured mean teacher queries (images sent) per run.")
    basis: str = Field(description="What the extrapolation scales with: 'images x epochs' or 'iterations'.")
    measured_train_images: int | None = Field(default=None, description="The audit thief's train set (data-available only).")
    full_train_images: int | None = Field(default=None, description="The dataset's whole train split (data-available only).")
    measured_epochs: int | None = None
    full_epochs: int | None = Field(default=None, description="Reference schedule (REFERENCE_EPOCHS).")
    measured_iterations: int | None = Field(default=None, description="Data-free only: iterations per run in the audit.")
    full_iterations: int | None = Field(default=None, description="Data-free only: the dataset's reference iteration count.")
    scale: float = Field(description="full / measured work (images x epochs, or iterations).")
    extrapolated_seconds: float
    extrapolated_queries: int
    assumptions: list[str]

    def summary(self) -> str:
        """One line for a report: '~2.3 h on cuda and 8.0M teacher queries for a full datafree_dfad attack'."""
        return (f"{self.attack} -> {self.student}: ~{_duration(self.extrapolated_seconds)} on {self.device} and "
                f"{_count(self.extrapolated_queries)} teacher queries for a full attack "
                f"(measured {self.seconds_per_run:.3g} s and {_count(round(self.queries_per_run))} queries per run, x{self.scale:.3g})")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.3g} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} days"


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.3g}M"
    if n >= 10_000:
        return f"{n / 1e3:.3g}k"
    return f"{n:,}"


def _positive_int(name: str, value: int | None) -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def theft_cost(
    attack: str,
    student: str,
    device: str,
    run_seconds: list[float],
    run_queries: list[int],
    train_images: int | None,
    full_train_images: int | None,
    epochs: int | None,
    dataset: str,
    data_free: bool,
    datafree_iterations: int | None = None,
    full_iterations: int | None = None,
    *,
    full_epochs: int | None = None,
    fixed_queries: int = 0,
    billing: str = "every",
) -> TheftCost:
    """Extrapolate an attack's measured cost (mean over its runs) to a full-scale attack.

    Data-available (`data_free=False`): scale = (full_train_images x full_epochs) /
    (train_images x epochs); `full_train_images` None takes FULL_TRAIN_IMAGES[dataset],
    `full_epochs` None takes REFERENCE_EPOCHS[dataset]. Data-free: scale = full_iterations /
    datafree_iterations (both required; the images/epochs arguments are ignored), and
    `fixed_queries` is the part of each run's queries that does not grow with iterations
    (checkpoint selection: checkpoints x selection_samples), carried over unchanged.
    Seconds and queries are both multiplied by the scale. Raises ValueError on inputs that
    cannot be extrapolated (no runs, mismatched lists, non-positive sizes, negative queries).
    """
    if not device:
        raise ValueError("device must name where the seconds were measured (e.g. 'cpu' or 'cuda')")
    if not run_seconds:
        raise ValueError(f"no measured runs for {attack}/{student}: nothing to extrapolate")
    if len(run_seconds) != len(run_queries):
        raise ValueError(f"{len(run_seconds)} run times but {len(run_queries)} query counts: one of each per run")
    if any(not math.isfinite(s) or s <= 0 for s in run_seconds):
        raise ValueError(f"run_seconds must be finite and > 0 (a run takes time), got {run_seconds}")
    if any(isinstance(q, bool) or not isinstance(q, int) or q < 0 for q in run_queries):
        raise ValueError(f"run_queries must be non-negative integers, got {run_queries}")
    seconds = statistics.fmean(run_seconds)
    queries = statistics.fmean(run_queries)
    common = [
        f"seconds are wall time on {device} with the audit's implementation and batch sizes; "
        "another device or a tuned loop changes them proportionally",
        "cost grows linearly with the work (no warm-up or fixed overheads beyond those stated)",
        f"means over {len(run_seconds)} run(s); retried runs count every attempt the thief paid for",
    ]
    if data_free:
        measured = _positive_int("datafree_iterations", datafree_iterations)
        full = _positive_int("full_iterations", full_iterations)
        if isinstance(fixed_queries, bool) or not isinstance(fixed_queries, int) or not 0 <= fixed_queries <= min(run_queries):
            raise ValueError(f"fixed_queries must be an integer between 0 and the smallest run's queries ({min(run_queries)}), got {fixed_queries!r}")
        scale = full / measured
        return TheftCost(
            attack=attack, student=student, device=device, runs=len(run_seconds),
            seconds_per_run=round(seconds, 3), queries_per_run=round(queries, 1), basis="iterations",
            measured_iterations=measured, full_iterations=full, scale=scale,
            extrapolated_seconds=round(seconds * scale, 1),
            extrapolated_queries=round((queries - fixed_queries) * scale + fixed_queries),
            assumptions=[
                f"a full data-free attack runs {full:,} iterations ({dataset}'s reference count in distill/datafree.py; "
                f"the papers' for cifar10); the audit ran {measured:,}",
                "the same batch size, generator/student steps per iteration and checkpoint count as the audit",
                "queries: every generated image sent to the teacher, per iteration; "
                f"{fixed_queries:,} per run for checkpoint selection do not grow with iterations",
                "the thief needs no data; seconds include the teacher's forward passes (the thief's own copy or the API's latency)",
                *common,
            ],
        )
    measured_images = _positive_int("train_images", train_images)
    measured_epochs = _positive_int("epochs", epochs)
    if full_train_images is None:
        if dataset not in FULL_TRAIN_IMAGES:
            raise ValueError(f"no known full train size for dataset {dataset!r}: pass full_train_images")
        full_train_images = FULL_TRAIN_IMAGES[dataset]
    full_images = _positive_int("full_train_images", full_train_images)
    if full_images < measured_images:
        raise ValueError(f"full_train_images ({full_images:,}) is smaller than the audit's thief train set "
                         f"({measured_images:,}): arguments swapped?")
    if full_epochs is None:
        if dataset not in REFERENCE_EPOCHS:
            raise ValueError(f"no reference schedule for dataset {dataset!r}: pass full_epochs")
        full_epochs = REFERENCE_EPOCHS[dataset]
    full_ep = _positive_int("full_epochs", full_epochs)
    scale = (full_images * full_ep) / (measured_images * measured_epochs)
    return TheftCost(
        attack=attack, student=student, device=device, runs=len(run_seconds),
        seconds_per_run=round(seconds, 3), queries_per_run=round(queries, 1), basis="images x epochs",
        measured_train_images=measured_images, full_train_images=full_images,
        measured_epochs=measured_epochs, full_epochs=full_ep, scale=scale,
        extrapolated_seconds=round(seconds * scale, 1), extrapolated_queries=round(queries * scale),
        assumptions=[
            f"the thief trains on {dataset}'s whole train split ({full_images:,} images) for {full_ep} epochs "
            f"(REFERENCE_EPOCHS in distill/cost.py); the audit's thief had {measured_images:,} images x {measured_epochs} epochs",
            "time scales linearly in images x epochs; same batch size and student as the audit",
            "queries: one per training image view per epoch (the thief does not cache the teacher's outputs; "
            "with a fixed, unaugmented set a caching thief needs only one pass)" if billing == "every" else
            "queries scale linearly too, which is an upper bound here: the audit billed each distinct image once "
            "(a caching thief), and later epochs repeat more of the views of earlier ones",
            "seconds are the student's training steps; the teacher's forward pass is the victim's (or API's) compute, not counted",
            *common,
        ],
    )
