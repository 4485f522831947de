"""Typed settings, read from `KDAUDIT_*` environment variables and validated once at the edge.

With nothing set, kdaudit runs in its embedded mode: a SQLite file and a filesystem Celery
broker under `data_dir`, so a fresh machine needs no server software. Production sets
`KDAUDIT_DATABASE_URL=postgresql+psycopg://...` and `KDAUDIT_BROKER_URL=redis://...`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
