"""Typed settings, read from `KDAUDIT_*` environment variables and validated once at the edge.

With nothing set, kdaudit runs in its embedded mode: a SQLite file and a filesystem Celery
broker under `data_dir`, so a fresh machine needs no server software. Production sets
`KDAUDIT_DATABASE_URL=postgresql+psycopg://...` and `KDAUDIT_BROKER_URL=redis://...`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
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
    # ---- hardening limits (docs/security.md "Limits"); exceeding one is a 4xx naming the setting
    max_student_parameters: int = Field(
        default=50_000_000, gt=0, description="Parameters of any one student architecture in an audit (422 beyond)."
    )
    max_total_student_parameters: int = Field(
        default=2_000_000_000, gt=0,
        description="Parameters of every planned run's student, summed over the audit's runs (422 beyond).",
    )
    max_compute_flops_per_audit: float = Field(
        default=2e18, gt=0, description="Estimated training FLOPs of one audit (distill/budget.py; 422 beyond)."
    )
    max_compute_flops_per_tenant: float = Field(
        default=5e18, gt=0, description="Estimated training FLOPs of one tenant's queued + running audits (429 beyond)."
    )
    max_concurrent_loaders: int = Field(
        default=2, gt=0, description="Checkpoint-validating loader processes one API process runs at once (429 beyond)."
    )
    max_concurrent_loaders_per_tenant: int = Field(
        default=1, gt=0, description="Loader processes one tenant may have running in one API process (429 beyond)."
    )
    max_storage_bytes_per_tenant: int = Field(
        default=10 * 1024**3, gt=0, description="Bytes of teacher files one tenant may keep stored (413 beyond)."
    )
    checkpoint_retention_seconds: float = Field(
        default=86_400.0, ge=0,
        description="Per-epoch checkpoints of a failed or cancelled audit are deleted this long after it ended.",
    )
    auth_cache_seconds: float = Field(
        default=2.0, ge=0, le=60,
        description="Valid API keys are cached this long per API process (a key revoked elsewhere works at most this "
        "long here); 0 disables the cache.",
    )
    auth_lookups_per_second_per_address: float = Field(
        default=5.0, ge=0,
        description="API-key lookups (cache misses: unknown keys) per second per client address; 0 disables.",
    )
    auth_lookup_burst: int = Field(default=30, gt=0, description="Token-bucket size of the per-address lookup limit.")
    docs_assets_dir: Path | None = Field(
        default=None,
        description="Folder with swagger-ui-bundle.js and swagger-ui.css: /docs is served with these local assets. "
        "Unset (default): /docs and /redoc are off (they would load scripts from a CDN).",
    )

    # ---- owners' data: encryption at rest, retention, API keys (docs/security.md "Owners' data")
    encrypt_at_rest: bool = Field(
        default=True, description="Encrypt stored teacher files and reports (AES-256-GCM) with the storage keys."
    )
    storage_keys: SecretStr | None = Field(
        default=None,
        description="Comma-separated base64url 32-byte storage keys, newest first (the first encrypts, all decrypt). "
        "Unset: storage_key_file.",
    )
    storage_key_file: Path | None = Field(
        default=None,
        description="File holding storage keys, one per line, newest first; default <data_dir>/storage.key, "
        "created (0600) on first use when no key is configured.",
    )
    teacher_retention_days: float | None = Field(
        default=None, gt=0, description="Delete teachers (file, audits, reports) this many days after upload; unset: keep."
    )
    report_retention_days: float | None = Field(
        default=None, gt=0, description="Delete finished audits (report, runs, parts) this many days after they ended; unset: keep."
    )
    key_last_used_every_seconds: float = Field(
        default=60.0, ge=0, description="An API key's last_used_at is written at most this often (0: every request)."
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
