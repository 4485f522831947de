"""Request and response bodies of the /v1 API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from kdaudit.distill.config import AttackName
from kdaudit.store.models import Audit, Teacher

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
#: ids are uuid4 hex strings; anything outside this alphabet is refused (422) before a lookup
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class ProblemDoc(BaseModel):
    """RFC 9457 problem details (`application/problem+json`), the body of every 4xx/5xx."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="`urn:kdaudit:problem:<slug>`, or `about:blank`.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = Field(default=None, description="Also in the X-Request-ID header and the server log.")
    limit: str | None = Field(default=None, description="For limit errors: the setting that was exceeded.")
    limit_value: float | None = None
    errors: list[dict[str, Any]] | None = Field(default=None, description="For validation errors: one per field.")


class TeacherOut(BaseModel):
    id: str
    sha256: str
    filename: str
    architecture: str
    dataset: str
    num_classes: int
    in_channels: int
    format: str
    parameters: int
    size_bytes: int
    created_at: datetime
    links: dict[str, str]

    @classmethod
    def of(cls, t: Teacher) -> TeacherOut:
        return cls(
            id=t.id,
            sha256=t.sha256,
            filename=t.filename,
            architecture=t.architecture,
            dataset=t.dataset,
            num_classes=t.num_classes,
            in_channels=t.in_channels,
            format=t.format,
            parameters=t.parameters,
            size_bytes=t.size_bytes,
            created_at=t.created_at,
            links={"self": f"/v1/teachers/{t.id}"},
        )


class TeacherList(BaseModel):
    items: list[TeacherOut]
    total: int
    limit: int
    offset: int
    next: str | None


class AuditCreate(BaseModel):
    """What to audit. Unset fields take the engine's defaults (AuditConfig)."""

    model_config = ConfigDict(extra="forbid")

    teacher_id: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    dataset: Literal["digits", "mnist", "fashion-mnist", "cifar10"] | None = Field(
        default=None, description="Defaults to the dataset the teacher was uploaded for."
    )
    attacks: list[AttackName] | None = Field(default=None, min_length=1, max_length=len(get_args(AttackName)))
    students: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, min_length=1, max_length=8
    )
    seeds: int | None = Field(default=None, ge=1, le=20)
    base_seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    fraction: float | None = Field(default=None, gt=0, le=1)
    device: Literal["auto", "cpu", "cuda"] | None = Field(default=None, description="Device hint for the worker.")
    epochs: int | None = Field(default=None, ge=1, le=1000, description="Shorthand for schedule.epochs.")
    schedule: dict[str, Any] | None = Field(default=None, description="TrainSchedule fields (epochs, batch_size, lr, ...).")
    kd: dict[str, Any] | None = Field(default=None, description="KD settings (alpha, temperature).")
    skeptical: dict[str, Any] | None = Field(default=None, description="Skeptical-student settings.")


class Progress(BaseModel):
    runs_done: int
    runs_total: int
    current_run: str | None
    epoch: int | None
    epochs: int | None
    fraction: float = Field(description="Share of the audit done, 0..1 (finished runs plus the epochs of the runs in training).")


def _cohort_size(config: dict[str, Any] | None) -> int:
    """Runs trained in lockstep per seed: scratch + each data-available attack, for every student."""
    cfg = config or {}
    attacks = [x for x in cfg.get("attacks", []) if not str(x).startswith("datafree_")]
    return max(1, len(cfg.get("students", [])) * (1 + len(attacks)))


class AuditOut(BaseModel):
    id: str
    status: Status
    teacher_id: str
    progress: Progress
    cancel_requested: bool
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    config: dict[str, Any]
    links: dict[str, str]

    @classmethod
    def of(cls, a: Audit) -> AuditOut:
        total = max(a.runs_total, 0)
        frac = 0.0
        if a.status == "succeeded":
            frac = 1.0
        elif total:
            partial = 0.0
            if a.current_epoch and a.epochs and a.runs_done < total:
                partial = min(a.current_epoch / a.epochs, 1.0)
                if partial >= 1.0:
                    partial = 0.0  # run finished; runs_done already counts it
                # the engine trains a seed's data-available runs together (one cohort), so that many
                # runs are this far along, not just the one named in current_run
                if not (a.current_run or "").startswith("datafree_"):
                    partial *= min(_cohort_size(a.config), total - a.runs_done)
            frac = min((a.runs_done + partial) / total, 1.0)
        return cls(
            id=a.id,
            status=a.status,  # type: ignore[arg-type]
            teacher_id=a.teacher_id,
            progress=Progress(
                runs_done=a.runs_done,
                runs_total=total,
                current_run=a.current_run,
                epoch=a.current_epoch,
                epochs=a.epochs,
                fraction=round(frac, 4),
            ),
            cancel_requested=a.cancel_requested,
            error=a.error,
            created_at=a.created_at,
            started_at=a.started_at,
            finished_at=a.finished_at,
            config=a.config,
            links={
                "self": f"/v1/audits/{a.id}",
                "report": f"/v1/audits/{a.id}/report",
                "cancel": f"/v1/audits/{a.id}/cancel",
                "teacher": f"/v1/teachers/{a.teacher_id}",
            },
        )


class AuditList(BaseModel):
    items: list[AuditOut]
    total: int
    limit: int
    offset: int
    next: str | None
