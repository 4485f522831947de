"""SQLAlchemy 2 models: the same schema on SQLite (embedded) and PostgreSQL (production).

The migrations in `migrations/versions` create exactly these tables; a test compares the two.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: JSON everywhere, JSONB on PostgreSQL (indexable, compact)
JSONType = JSON().with_variant(JSONB(), "postgresql")

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both backends (SQLite drops the zone on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    #: sha256 hex of the full key; the key itself is never stored
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: first characters of the key, to tell keys apart in listings
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: a label the owner chose ("ci", "laptop"); never the key
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: after this instant the key is refused (401); NULL: never expires
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: last authenticated request, written at most every `key_last_used_every_seconds`
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Teacher(Base):
    __tablename__ = "teachers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    #: our zoo's architecture name; None for a black box (an ONNX file needs none)
    architecture: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dataset: Mapped[str] = mapped_column(String(32))
    num_classes: Mapped[int] = mapped_column(Integer)
    in_channels: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(32))
    parameters: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: the declared input contract (distill/preprocess.py TeacherInput); None = the dataset's statistics
    preprocess: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    #: the owner's test accuracy for this teacher, percent: the audit's sanity gate checks it
    expected_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Audit(Base):
    __tablename__ = "audits"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key", name="uq_audits_tenant_idempotency"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    teacher_id: Mapped[str] = mapped_column(ForeignKey("teachers.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    #: 'audit' (one teacher, its attack panel) or 'defend' (the defence x attack matrix, POST /v1/defences)
    kind: Mapped[str] = mapped_column(String(16), default="audit", server_default="audit")
    #: the fully resolved AuditConfig (model_dump); for kind 'defend' the DefendConfig
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: sha256 of the canonical request body, to refuse an Idempotency-Key reused for another request
    request_hash: Mapped[str] = mapped_column(String(64))
    runs_total: Mapped[int] = mapped_column(Integer, default=0)
    runs_done: Mapped[int] = mapped_column(Integer, default=0)
    current_run: Mapped[str | None] = mapped_column(String(255), nullable=True)
    current_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epochs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Run(Base):
    """One finished training run (attack x student x seed) of an audit."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("audit_id", "run_key", name="uq_runs_audit_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), index=True)
    run_key: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    student: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    test_accuracy: Mapped[float] = mapped_column(Float)
    #: the engine's RunRecord (model_dump)
    record: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReportRow(Base):
    """The finished `kdaudit.report/v1` document of an audit."""

    __tablename__ = "reports"

    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), primary_key=True)
    schema: Mapped[str] = mapped_column(String(32))
    verdict: Mapped[str] = mapped_column(String(16))
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditPart(Base):
    """One part of an audit split across workers (`audit_parts` > 1): a disjoint set of seeds.

    A split audit has one row per part; each part is claimed, heart-beaten and finished like a
    whole audit is (queued -> running -> succeeded | failed | cancelled). The audit row keeps
    the overall status and progress; its report is assembled once every part has succeeded.
    """

    __tablename__ = "audit_parts"
    __table_args__ = (PrimaryKeyConstraint("audit_id", "part", name="pk_audit_parts"),)

    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"))
    part: Mapped[int] = mapped_column(Integer)
    #: the seeds this part trains (a JSON list of ints)
    seeds: Mapped[list[int]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    current_run: Mapped[str | None] = mapped_column(String(255), nullable=True)
    current_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Tombstone(Base):
    """What remains of a deleted teacher or audit: enough to trace a report already downloaded
    (its teacher sha256, when, by which key), nothing of the model or the report."""

    __tablename__ = "tombstones"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: 'teacher' or 'audit'
    kind: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    #: the teacher's sha256 (an audit's: its teacher's)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: an audit's teacher id; NULL for teachers
    teacher_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: the API key id that deleted it; NULL when the operator's CLI or the retention sweep did
    deleted_by_key: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: 'api', 'cli' or 'retention'
    reason: Mapped[str] = mapped_column(String(32))


class Event(Base):
    """The access trail: one row per upload, download, delete or key change, per tenant.
    Holds who (key id), what, when and from which address; never a key, header or report."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: e.g. teacher.upload, report.download, teacher.delete, key.revoke
    action: Mapped[str] = mapped_column(String(64))
    #: 'teacher', 'audit' or 'key'
    object_type: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[str] = mapped_column(String(64))
    #: the API key that acted; NULL for the operator's CLI and the retention sweep
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: 'api', 'cli' or 'retention'
    actor: Mapped[str] = mapped_column(String(32))
    #: the client's address as the API saw it
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: small non-secret facts (format of a download, sha256 of a deleted file)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
