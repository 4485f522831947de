"""Which runs an audit trains, and which of them train together: the engine's scheduling rules.

Torch-free so that the API (progress of a cohort, the run quota) and the engine share one rule.
The variants themselves (distill/variants.py) are expanded by the caller, because reading an
output policy needs distill/access.py; everything after that is here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kdaudit.distill.attacks import find_attack

#: the base setting's name; base-setting run keys carry no variant prefix
BASE = "base"
#: the order of knobs in a variant's name and description
AXES = ("output", "fraction", "temperature", "ac_stage")
#: the from-scratch baseline every attack is compared with
SCRATCH = "scratch"
#: the label-smoothing baseline (regularisation without a teacher), trained unless `label_smoothing` is None
SCRATCH_LS = "scratch_ls"


@dataclass(frozen=True)
class RunSpec:
    kind: str  # scratch | scratch_ls (label smoothing) | an attack of distill/attacks/
    student: str
    seed: int
    variant: str = BASE  # distill/variants.py; base-setting keys carry no prefix

    @property
    def key(self) -> str:
        core = f"{self.kind}/{self.student}/seed{self.seed}"
        return core if self.variant == BASE else f"{self.variant}:{core}"


class VariantLike(Protocol):
    """What planning reads of a distill/variants.py `Variant`."""

    name: str
    overrides: dict[str, Any]
    attacks: tuple[str, ...]

    @property
    def is_base(self) -> bool: ...


def variant_name(overrides: dict[str, Any]) -> str:
    """A setting's name from its knobs, e.g. 'output=top5,fraction=0.5'; the base setting is 'base'."""
    return ",".join(f"{k}={overrides[k]:g}" if isinstance(overrides[k], float) else f"{k}={overrides[k]}"
                    for k in AXES if k in overrides) or BASE


def scratch_variant(v: VariantLike) -> str:
    """The variant whose scratch runs are `v`'s baseline: the one that changes only the data fraction."""
    return variant_name({"fraction": v.overrides["fraction"]}) if "fraction" in v.overrides else BASE


def baseline_kinds(label_smoothing: float | None) -> tuple[str, ...]:
    """The baselines each student trains per seed and data fraction."""
    return (SCRATCH,) if label_smoothing is None else (SCRATCH, SCRATCH_LS)


def plan_runs(config: Any, variants: Sequence[VariantLike]) -> list[RunSpec]:
    """All runs of an audit (an AuditConfig and its expanded variants, base first): per seed and
    student, the baselines (scratch, and label smoothing unless `label_smoothing` is None) and
    every attack, then each variant's attacks (and its own baselines when it changes the data fraction)."""
    baselines = baseline_kinds(config.label_smoothing)
    runs: dict[str, RunSpec] = {}
    for seed in range(config.base_seed, config.base_seed + config.seeds):
        for student in config.students:
            for v in variants:
                if v.is_base or "fraction" in v.overrides:  # one baseline per data fraction, however many variants share it
                    for kind in baselines:
                        r = RunSpec(kind, student, seed, scratch_variant(v))
                        runs.setdefault(r.key, r)
                for a in v.attacks:
                    r = RunSpec(a, student, seed, v.name)
                    runs.setdefault(r.key, r)
    return list(runs.values())


def trains_in_cohort(kind: str) -> bool:
    """Baselines and data-available attacks train in their seed's cohort (one teacher query per batch
    for all); data-free runs train one at a time."""
    spec = find_attack(kind)
    return spec is None or not spec.data_free


def kind_of_key(run_key: str) -> str:
    """The run kind in a run key ('[variant:]kind/student/seedN')."""
    return run_key.split(":", 1)[-1].split("/", 1)[0]


def cohort_size(students: int, attacks: Iterable[str], label_smoothing: float | None) -> int:
    """Runs the base setting trains in lockstep per seed: per student, the baselines and each data-available attack."""
    together = [a for a in dict.fromkeys(attacks) if find_attack(a) is not None and trains_in_cohort(a)]
    return max(1, students * (len(baseline_kinds(label_smoothing)) + len(together)))
