"""The size quotas of the second hardening round: students, compute, and stored bytes.

The engine measures (distill/budget.py); this module compares with the settings and words the
refusal (a problem naming the limit, via `limit_problem`). One 8-student audit of
`cnn-4096-4096-4096-4096` (453 M parameters each) x 1,000 epochs had been accepted.

| limit (setting)                  | status | when |
|----------------------------------|--------|------|
| max_student_parameters           | 422    | any one student architecture is larger |
| max_total_student_parameters     | 422    | the planned runs' students, summed |
| max_compute_flops_per_audit      | 422    | the audit's estimated training FLOPs |
| max_compute_flops_per_tenant     | 429    | + the tenant's queued and running audits (checked under the tenant's lock) |
| max_storage_bytes_per_tenant     | 413    | an upload would take the tenant's stored teacher bytes past it |
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from kdaudit.service.limits import limit_problem
from kdaudit.store import quotas


def _flops(n: float) -> str:
    return f"{n:.3g}"


def check_audit_size(config: dict[str, Any], settings) -> float:
    """Refuse (422) an audit whose students or compute are over the per-audit limits; return its FLOPs."""
    from kdaudit.distill.budget import audit_compute, student_parameters

    cfg_students = config.get("students") or []
    ds = config.get("dataset")
    from kdaudit.distill.data import SPECS

    spec = SPECS.get(str(ds))
    classes, channels = (spec.num_classes, spec.in_channels) if spec else (10, 3)
    for student in cfg_students:  # the cheap check first, before the whole plan is sized
        params = student_parameters(student, classes, channels)
        if params > settings.max_student_parameters:
            raise limit_problem(
                422, "max_student_parameters", settings.max_student_parameters,
                f"student {student} has {params:,} parameters, over the limit of {settings.max_student_parameters:,} "
                "per student (max_student_parameters)", requested=params, student=student,
            )  # fmt: skip
    size = audit_compute(config)
    if size.total_student_parameters > settings.max_total_student_parameters:
        raise limit_problem(
            422, "max_total_student_parameters", settings.max_total_student_parameters,
            f"the audit's runs train {size.total_student_parameters:,} student parameters in all, over the limit of "
            f"{settings.max_total_student_parameters:,} (max_total_student_parameters); use fewer or smaller "
            "students or seeds", requested=size.total_student_parameters,
        )  # fmt: skip
    if size.flops > settings.max_compute_flops_per_audit:
        raise limit_problem(
            422, "max_compute_flops_per_audit", settings.max_compute_flops_per_audit,
            f"the audit would take about {_flops(size.flops)} training FLOPs (students x images x epochs, "
            f"distill/budget.py), over the limit of {_flops(settings.max_compute_flops_per_audit)} "
            "(max_compute_flops_per_audit); use fewer epochs, seeds or students, or smaller ones",
            requested=float(size.flops),
        )  # fmt: skip
    return float(size.flops)


def tenant_compute_admission(tenant_id: str, flops: float, settings):
    """A callback for `repo.create_audit(admit=...)`: runs under the tenant's lock, so the sum of
    the tenant's queued + running audits and this one is checked atomically (429 beyond)."""
    from kdaudit.service.defence_plan import config_flops

    def admit(session: Session) -> None:
        active = 0.0
        for cfg in quotas.active_configs(session, tenant_id):
            try:
                active += config_flops(cfg)  # an audit's, or the sum of a defence comparison's audits
            except Exception:  # an old or foreign config the estimator cannot read: count nothing
                continue
        limit = settings.max_compute_flops_per_tenant
        if active + flops > limit:
            session.rollback()
            raise limit_problem(
                429, "max_compute_flops_per_tenant", limit,
                f"your queued and running audits take about {_flops(active)} training FLOPs and this one "
                f"{_flops(flops)}; the limit is {_flops(limit)} at a time (max_compute_flops_per_tenant); wait "
                "for one to finish or cancel one", requested=active + flops,
                headers={"Retry-After": str(settings.retry_after_seconds * 6)},
            )  # fmt: skip

    return admit


def check_storage(session: Session, tenant_id: str, adding: int, settings) -> None:
    """Refuse (413) an upload of `adding` bytes that takes the tenant past its storage quota."""
    used = quotas.tenant_storage_bytes(session, tenant_id)
    limit = settings.max_storage_bytes_per_tenant
    if used + adding > limit:
        raise limit_problem(
            413, "max_storage_bytes_per_tenant", limit,
            f"your teachers take {used:,} bytes and this upload {adding:,}; the limit is {limit:,} bytes per tenant "
            "(max_storage_bytes_per_tenant); delete a teacher first", requested=used + adding, slug="storage-quota",
        )  # fmt: skip
