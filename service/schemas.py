"""Request and response bodies of the /v1 API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from kdaudit.distill.config import (
    DEFAULT_LABEL_SMOOTHING,
    IMAGE_SIZE_HELP,
    LABEL_SMOOTHING_HELP,
    AttackName,
    FolderDatasetName,
    ImageSize,
    LabelSmoothing,
    SweepSettings,
    ThreatModel,
)
from kdaudit.distill.planning.runs import cohort_size, kind_of_key, trains_in_cohort
from kdaudit.distill.preprocess import TeacherInput
from kdaudit.store.models import FINISHED, Audit, Teacher

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
    setting: str | None = Field(default=None, description="For policy refusals: the server setting that decides (e.g. remote_teacher_hosts).")
    errors: list[dict[str, Any]] | None = Field(default=None, description="For validation errors: one per field.")


class RemoteTeacherInfo(BaseModel):
    """How a remote teacher is reached, as far as a client may see: no header values, and the
    URL without its query string (which may carry a key)."""

    url: str
    response: Literal["logits", "probabilities", "labels"]
    timeout_s: float | None = None
    max_retries: int | None = None
    backoff_s: float | None = None
    concurrency: int | None = None
    max_batch: int | None = None
    header_names: list[str] = Field(default_factory=list, description="Names of the stored headers; values are never shown.")


class TeacherOut(BaseModel):
    id: str
    sha256: str
    filename: str
    architecture: str | None = Field(description="Our zoo's architecture; null for an ONNX black box.")
    dataset: str
    num_classes: int
    in_channels: int
    format: str
    parameters: int
    size_bytes: int
    created_at: datetime
    links: dict[str, str]
    remote: RemoteTeacherInfo | None = Field(
        default=None, description="Set for a remote teacher (format `remote-http`, POST /v1/teachers/remote)."
    )
    preprocess: TeacherInput = Field(
        default_factory=TeacherInput, description="The teacher's declared input contract (preset or pixel_scale/mean/std).",
    )
    expected_accuracy: float | None = Field(default=None, description="The owner's test accuracy for it, percent.")

    @classmethod
    def of(cls, t: Teacher, remote: dict[str, Any] | None = None) -> TeacherOut:
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
            remote=RemoteTeacherInfo.model_validate(remote) if remote is not None else None,
            preprocess=TeacherInput.of(t.preprocess),
            expected_accuracy=t.expected_accuracy,
        )


class TeacherList(BaseModel):
    items: list[TeacherOut]
    total: int
    limit: int
    offset: int
    next: str | None


_HeaderName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
#: no control characters but tab: a NUL or line break in a value is refused here, never stored,
#: sent, or echoed into an error later (the HTTP client's own refusal quoted the value)
_HeaderValue = Annotated[str, Field(max_length=4096, pattern=r"^[^\x00-\x08\x0a-\x1f\x7f]*$")]


class RemoteTeacherCreate(BaseModel):
    """A teacher behind an HTTP prediction endpoint (protocol: models/remote_teacher.py). Its host must
    be allowed by the server setting `remote_teacher_hosts`; the service never sees weights."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=8, max_length=2048, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[!-~]+$",
        description="http(s) URL the images are POSTed to (printable ASCII: punycode for international host names). "
        "Its query string, if any, is kept secret like the headers; without it the URL must fit in 255 characters.",
        examples=["https://models.example.com/v1/predict"],
    )
    response: Literal["logits", "probabilities", "labels"] = Field(
        description="What the endpoint answers: logits, softmax probabilities or labels (argmax)."
    )
    dataset: Literal["digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "cifar100-coarse"] = Field(
        description="Dataset the endpoint classifies (its class and channel counts)."
    )
    preprocess: TeacherInput | None = Field(
        default=None, description="What the endpoint expects to be sent: a preset (`none`, `imagenet`, `cifar-kuangliu`, ...) "
        "or pixel_scale/mean/std; default `dataset` (the dataset's train statistics).",
    )
    expected_accuracy: float | None = Field(
        default=None, ge=0, le=100, description="Its test accuracy in the owner's pipeline, percent (the audits' sanity gate).",
    )
    architecture: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="Informational; default `remote` (the service never needs the architecture).",
    )
    headers: dict[_HeaderName, _HeaderValue] | None = Field(
        default=None, max_length=16,
        description="Sent with every request, e.g. an API key. Stored as a secret: never returned, logged or reported.",
    )
    timeout_s: float | None = Field(default=None, gt=0, le=600, description="Per request (default 10).")
    max_retries: int | None = Field(default=None, ge=0, le=20, description="On connection errors, timeouts, 5xx, 429 (default 4).")
    backoff_s: float | None = Field(default=None, ge=0, le=30, description="First retry delay, doubled each time (default 0.5).")
    concurrency: int | None = Field(default=None, ge=1, le=64, description="Requests in flight at once (default 4).")
    max_batch: int | None = Field(default=None, ge=1, le=65536, description="Images per request (default 256).")


class AuditCreate(BaseModel):
    """What to audit. Unset fields take the engine's defaults (AuditConfig)."""

    model_config = ConfigDict(extra="forbid")

    teacher_id: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    dataset: Literal["digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "cifar100-coarse", "folder"] | None = Field(
        default=None, description="Defaults to the dataset the teacher was uploaded for. `folder`: an image-folder "
        "dataset the operator provides (setting folder_datasets_dir), named by `dataset_name`.",
    )
    dataset_name: FolderDatasetName | None = Field(
        default=None, description="With dataset `folder`: the name of one of the server's image-folder datasets "
        "(a sub-folder of folder_datasets_dir; never a path).",
    )
    image_size: ImageSize | None = Field(default=None, description=IMAGE_SIZE_HELP)
    force: bool | None = Field(default=None, description="Run even if the teacher sanity check fails (the report says so).")
    expected_accuracy: float | None = Field(
        default=None, ge=0, le=100, description="Overrides the teacher's declared expected accuracy for this audit.",
    )
    attacks: list[AttackName] | None = Field(default=None, min_length=1, max_length=len(get_args(AttackName)))
    students: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, min_length=1, max_length=8
    )
    seeds: int | None = Field(default=None, ge=1, le=20)
    base_seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    fraction: float | None = Field(default=None, gt=0, le=1)
    label_smoothing: LabelSmoothing | None = Field(default=DEFAULT_LABEL_SMOOTHING, description=LABEL_SMOOTHING_HELP)
    device: Literal["auto", "cpu", "cuda"] | None = Field(default=None, description="Device hint for the worker.")
    epochs: int | None = Field(default=None, ge=1, le=1000, description="Shorthand for schedule.epochs.")
    schedule: dict[str, Any] | None = Field(default=None, description="TrainSchedule fields (epochs, batch_size, lr, ...).")
    kd: dict[str, Any] | None = Field(default=None, description="KD settings (alpha, temperature).")
    skeptical: dict[str, Any] | None = Field(default=None, description="Skeptical-student settings.")
    datafree: dict[str, Any] | None = Field(default=None, description="Data-free attack settings (budget, iterations, ...).")
    threat: ThreatModel | None = Field(default=None, description="What the thief sees (output policy), its query budget and billing.")
    sweep: SweepSettings | None = Field(default=None, description="Extra settings to audit: output policies, data fractions, AC stages, temperatures.")
    panel: Literal["standard"] | None = Field(default=None, description="A named attack panel; the report adds the worst case over it.")


class Progress(BaseModel):
    runs_done: int
    runs_total: int
    current_run: str | None
    epoch: int | None
    epochs: int | None
    fraction: float = Field(description="Share of the audit done, 0..1 (finished runs plus the epochs of the runs in training).")


def _cohort_size(config: dict[str, Any] | None) -> int:
    """Runs trained in lockstep per seed (distill/planning/runs.py `cohort_size`: the baselines,
    label smoothing included, and each data-available attack, for every student)."""
    cfg = config or {}
    return cohort_size(len(cfg.get("students", [])), cfg.get("attacks", []), cfg.get("label_smoothing"))


class AuditOut(BaseModel):
    id: str
    kind: Literal["audit", "defend"] = Field(default="audit", description="'defend': a defence comparison "
                                             "(POST /v1/defences); its report is the kdaudit.defences/v1 matrix.")
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
    def of(cls, a: Audit) -> AuditOut:  # or a Core row of the audits table (repo.poll_audit)
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
                if trains_in_cohort(kind_of_key(a.current_run or "")):
                    partial *= min(_cohort_size(a.config), total - a.runs_done)
            frac = min((a.runs_done + partial) / total, 1.0)
        return cls(
            id=a.id,
            kind=a.kind or "audit",  # type: ignore[arg-type]
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


def status_answer(audit: Audit, retry_after_seconds: int) -> tuple[bytes, str | None]:
    """The status poll's answer, one rule for the route and its fast path (service/poll_fast.py): the
    JSON body, and the Retry-After value while the audit is queued or running (None once finished).
    `audit` may be a Core row of the audits table (repo.poll_audit)."""
    body = AuditOut.of(audit).model_dump_json().encode()
    return body, None if audit.status in FINISHED else str(retry_after_seconds)
