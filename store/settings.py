"""Settings the service and the workers share, on top of `kdaudit.core.settings.Settings`.

Both `kdaudit.service` and `kdaudit.workers` import `kdaudit.store`, so the few knobs they
both need (queue name, heartbeat timing, auto-migration) live here rather than in either.
All fields read `KDAUDIT_*` environment variables like the base class.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from kdaudit.core.settings import Settings


class ServiceSettings(Settings):
    auto_migrate: bool | None = Field(
        default=None,
        description="Run `alembic upgrade head` when the API/worker starts; default: only in embedded mode (no database_url).",
    )
    queue: str = Field(default="kdaudit", min_length=1, max_length=200, description="Celery queue for audit tasks.")
    heartbeat_seconds: float = Field(default=10.0, gt=0, description="How often a running audit refreshes its heartbeat.")
    stale_after_seconds: float = Field(
        default=120.0, gt=0, description="A running audit whose heartbeat is older than this is considered orphaned."
    )
    retry_after_seconds: int = Field(default=5, ge=1, description="Retry-After sent while an audit is not finished.")
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Times an audit may be started (first claim + takeovers after its worker vanished) before it fails.",
    )
    sweep_seconds: float | None = Field(
        default=None,
        gt=0,
        description="How often workers and the API look for orphaned audits; default: stale_after_seconds / 2.",
    )
    sweep_in_api: bool = Field(default=True, description="The API process also runs the orphan sweep.")
    requeue_queued_after_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="A queued audit untouched this long gets its task message sent again (lost message, API crash).",
    )
    audit_parts: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Split each audit with several seeds into this many parts (disjoint seed sets, round-robin), "
        "each a task another worker can run; the last part to finish assembles the report. 1 (default): one task "
        "runs the whole audit. Read by the API when an audit is submitted. See docs/service.md.",
    )
    broker_visibility_timeout: int = Field(
        default=6 * 3600, gt=0, description="Redis visibility timeout (s) before an unacknowledged task is redelivered."
    )
    remote_teacher_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts remote (HTTP) teachers may be registered at and queried on: comma-separated host or "
        "host:port entries (env KDAUDIT_REMOTE_TEACHER_HOSTS). Empty (default): remote teachers are disabled. "
        "A name's non-public addresses (loopback, private, link-local) must be listed too. See docs/security.md.",
    )
    folder_datasets_dir: Path | None = Field(
        default=None,
        description="Folder whose sub-folders are image-folder datasets (train/<class>/, test/<class>/) audits may "
        "name: `dataset: folder` with `dataset_name`, a sub-folder's name, never a path. The API and the workers "
        "must see it at the same path. Unset (default): image-folder datasets are off in the service.",
    )

    operator_tenants: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tenant names whose keys may call operator routes (GET /v1/selftest): comma-separated "
        "(env KDAUDIT_OPERATOR_TENANTS). Empty (default): no key may.",
    )

    @field_validator("operator_tenants", mode="before")
    @classmethod
    def _parse_operators(cls, v: Any) -> list[str]:
        if v is None or v == "":
            return []
        items = v.split(",") if isinstance(v, str) else list(v)
        return [str(x).strip() for x in items if str(x).strip()]

    @field_validator("remote_teacher_hosts", mode="before")
    @classmethod
    def _parse_remote_hosts(cls, v: Any) -> list[str]:
        from kdaudit.store.remote_teachers import split_setting

        return split_setting(v)

    @property
    def sweep_interval(self) -> float:
        return self.sweep_seconds or max(self.stale_after_seconds / 2, 0.2)

    @property
    def should_auto_migrate(self) -> bool:
        return self.auto_migrate if self.auto_migrate is not None else self.database_url is None


def coerce_settings(settings: Settings | None = None) -> ServiceSettings:
    """Accept a plain `Settings` (or None = from the environment) and return a ServiceSettings."""
    if settings is None:
        return get_service_settings()
    if isinstance(settings, ServiceSettings):
        return settings
    return ServiceSettings(**settings.model_dump(exclude_unset=False))


@lru_cache(maxsize=1)
def get_service_settings() -> ServiceSettings:
    return ServiceSettings()
