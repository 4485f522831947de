"""How big an audit is before it runs: student parameters, training compute, the thief's images.

The service's quotas (service/limits.py) and the CLI's warnings ask this module, so both apply
the engine's own rules and never a copy of them:

- `student_parameters`: exact parameter count of an architecture, from a model built on the
  `meta` device (no memory, no weights; 453 M parameters take ~50 ms).
- `audit_compute`: estimated training FLOPs of the whole plan. Training a student costs about
  3 x its forward FLOPs per image (forward + backward), counted with torch's FlopCounterMode on
  a meta forward of one image at the dataset's size; every planned run trains on its thief's
  images (train split x (1 - val_fraction) x its fraction) for `epochs`; every teacher query
  adds one teacher forward. Data-free runs: their planned teacher queries x (teacher forward +
  3 x student forward). An estimate, deliberately simple: its job is to refuse an audit that
  is orders of magnitude too big, not to predict seconds.
- `thief_images_per_class`: the images per class the thief trains on at a data fraction;
  below `MIN_IMAGES_PER_CLASS` an audit is refused, because students trained on a handful of
  images sit at chance and their comparison says nothing (a "leaks" verdict came from such runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kdaudit.distill.planning.sizes import TRAIN_IMAGES, RunWork, run_work

#: fewest training images per class the thief may have (after the validation carve-out)
MIN_IMAGES_PER_CLASS = 5


def thief_images_per_class(dataset: str, val_fraction: float, fraction: float) -> float | None:
    """Mean training images per class the thief has; None for datasets read from a path."""
    from kdaudit.distill.data import SPECS

    if dataset not in TRAIN_IMAGES or dataset not in SPECS:
        return None
    return TRAIN_IMAGES[dataset] * (1.0 - val_fraction) * fraction / SPECS[dataset].num_classes


def fraction_problem(dataset: str, val_fraction: float, fractions: list[float]) -> str | None:
    """Why the smallest of `fractions` leaves the thief too few images per class, or None."""
    for f in sorted(set(fractions)):
        per_class = thief_images_per_class(dataset, val_fraction, f)
        if per_class is not None and per_class < MIN_IMAGES_PER_CLASS:
            need = MIN_IMAGES_PER_CLASS / (per_class / f)
            return (f"fraction {f:g} leaves the thief about {per_class:.1f} training images per class of {dataset}; "
                    f"at least {MIN_IMAGES_PER_CLASS} are needed (fraction >= {need:.4f}): students trained on "
                    "fewer stay at chance and their comparison gives no verdict")  # fmt: skip
    return None


@lru_cache(maxsize=256)
def _measure(arch: str, num_classes: int, in_channels: int, image_size: int) -> tuple[int, int]:
    """(parameters, forward FLOPs for one image) of `arch`, built on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kdaudit.models.registry import build_model

    with torch.device("meta"):
        model = build_model(arch, num_classes, in_channels)
    params = sum(p.numel() for p in model.parameters())
    x = torch.empty(1, in_channels, image_size, image_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(params), int(counter.get_total_flops())


def student_parameters(arch: str, num_classes: int = 10, in_channels: int = 1) -> int:
    return _measure(arch, num_classes, in_channels, 8)[0]


@dataclass(frozen=True)
class AuditSize:
    """What `audit_compute` found: the limits in service/limits.py compare these."""

    largest_student: str
    largest_student_parameters: int
    #: parameters of every planned run's student, summed (what the workers train in all)
    total_student_parameters: int
    #: estimated training FLOPs of the whole plan
    flops: int

    def to_dict(self) -> dict[str, Any]:
        return {"largest_student": self.largest_student, "largest_student_parameters": self.largest_student_parameters,
                "total_student_parameters": self.total_student_parameters, "flops": self.flops}  # fmt: skip


def planned_work(cfg: Any) -> list[tuple[Any, RunWork]]:
    """Every planned run of an AuditConfig with its estimated work (distill/planning/sizes.py
    `run_work`): the one estimate behind the compute quota, the API's query quota and the CLI's warnings."""
    from kdaudit.distill.config import DATA_FREE_ATTACKS
    from kdaudit.distill.datafree import plan_datafree
    from kdaudit.distill.planning.sizes import datafree_settings
    from kdaudit.distill.runner import plan_runs
    from kdaudit.distill.variants import apply, expand_variants

    variants = {v.name: apply(cfg, v.overrides, v.attacks) for v in expand_variants(cfg)}
    out = []
    for run in plan_runs(cfg):
        vc = variants[run.variant]
        planned = plan_datafree(run.kind, datafree_settings(vc), cfg.dataset).planned_queries \
            if run.kind in DATA_FREE_ATTACKS else None  # planned to fit its budget: generated batches + checkpoint selection
        out.append((run, run_work(run.kind, dataset=cfg.dataset, val_fraction=cfg.val_fraction, fraction=vc.fraction,
                                  epochs=cfg.schedule.epochs, query_budget=cfg.threat.query_budget,
                                  datafree_queries=planned)))
    return out


def audit_compute(config: dict[str, Any]) -> AuditSize:
    """Size of a resolved audit configuration (an `AuditConfig` dump)."""
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.data import SPECS

    cfg = AuditConfig.model_validate(config)
    spec = SPECS.get(cfg.dataset)
    classes, channels, size = (spec.num_classes, spec.in_channels, spec.image_size) if spec else (10, 3, 32)
    size = cfg.image_size or size
    teacher_flops = 0
    if cfg.teacher_arch and cfg.teacher_arch != "remote":
        teacher_flops = _measure(cfg.teacher_arch, classes, channels, size)[1]
    largest, largest_params, total_params, flops = "", 0, 0, 0
    for run, work in planned_work(cfg):
        params, fwd = _measure(run.student, classes, channels, size)
        total_params += params
        if params > largest_params:
            largest, largest_params = run.student, params
        flops += 3 * fwd * work.student_images + teacher_flops * work.teacher_queries
    return AuditSize(largest, largest_params, total_params, flops)


def size_warnings(config: dict[str, Any], settings: Any) -> list[str]:
    """What the service would refuse of this audit, as warnings for the CLI (which still runs it):
    the same settings and measurements as service/quotas.py (`KDAUDIT_MAX_*`)."""
    size = audit_compute(config)
    out = []
    if size.largest_student_parameters > settings.max_student_parameters:
        out.append(f"student {size.largest_student} has {size.largest_student_parameters:,} parameters, over "
                   f"max_student_parameters ({settings.max_student_parameters:,})")  # fmt: skip
    if size.total_student_parameters > settings.max_total_student_parameters:
        out.append(f"the runs train {size.total_student_parameters:,} student parameters in all, over "
                   f"max_total_student_parameters ({settings.max_total_student_parameters:,})")  # fmt: skip
    if size.flops > settings.max_compute_flops_per_audit:
        out.append(f"the audit takes about {size.flops:.3g} training FLOPs, over max_compute_flops_per_audit "
                   f"({settings.max_compute_flops_per_audit:.3g})")  # fmt: skip
    return out
