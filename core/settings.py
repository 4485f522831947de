"""Typed settings, read from `KDAUDIT_*` environment variables and validated once at the edge.

With nothing set, kdaudit runs in its embedded mode: a SQLite file and a filesystem Celery
broker under `data_dir`, so a fresh machine needs no server software. Production sets
`KDAUDIT_DATABASE_URL=postgresql+psycopg://...` and `KDAUDIT_BROKER_URL=redis://...`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KDAUDIT_", extra="ignore")

    data_dir: Path = Field(default=Path("~/.kdaudit").expanduser(), description="Root for embedded state.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite under data_dir if unset.")
    broker_url: str | None = Field(default=None, description="Celery broker; filesystem broker if unset.")
    storage_dir: Path | None = Field(default=None, description="Content-addressed teacher files.")
    datasets_dir: Path | None = Field(default=None, description="Folder holding mnist.npz, cifar10_jpeg.npz.")
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_parameters: int = Field(default=100_000_000, gt=0)
    loader_memory_bytes: int = Field(default=4 * 1024**3, gt=0, description="RLIMIT_AS of the loader process.")
    loader_cpu_seconds: int = Field(default=120, gt=0, description="RLIMIT_CPU of the loader process.")
    # ---- service quotas (docs/security.md); exceeding one is a 4xx naming the setting
    max_concurrent_audits_per_tenant: int = Field(
        default=10, gt=0, description="Queued + running audits one tenant may have at a time (429 beyond)."
    )
    max_runs_per_audit: int = Field(
        default=120, gt=0, description="Training runs (seeds x students x (1 + attacks)) one audit may plan (422 beyond)."
    )
    max_teacher_queries_per_audit: int = Field(
        default=500_000_000,
        gt=0,
        description="Estimated teacher forward passes per audit: epochs x train images x teacher-using runs (422 beyond).",
    )
    max_json_body_bytes: int = Field(default=1024 * 1024, gt=0, description="Largest JSON request body (413 beyond).")
    rate_limit_per_second: float = Field(
        default=20.0, ge=0, description="Sustained API requests per second per API key; 0 disables rate limiting."
    )
    rate_limit_burst: int = Field(default=120, gt=0, description="Token-bucket size: requests one key may send at once.")
    rate_limit_backend: Literal["auto", "memory", "redis"] = Field(
        default="auto",
        description="Where the buckets live: 'memory' (per API process), 'redis' (shared by all API processes), "
        "'auto' = redis when broker_url is a redis:// URL, else memory.",
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'kdaudit.db').as_posix()}"

    @property
    def resolved_storage_dir(self) -> Path:
        return self.storage_dir or self.data_dir / "teachers"

    @property
    def embedded(self) -> bool:
        return self.broker_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
