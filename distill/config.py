"""Typed, validated audit configuration: what the API, CLI and workers all hand the engine.

One pydantic model so that every entry point validates the same way and the report can
record the fully resolved configuration for provenance.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kdaudit.core.errors import InputError

AttackName = Literal["normal_kd", "skeptical"]
#: attacks that train a student; `skeptical_e` is an evaluation of the skeptical student
TRAINED_ATTACKS: tuple[str, ...] = ("normal_kd", "skeptical")
DatasetName = Literal["digits", "mnist", "fashion-mnist", "cifar10", "npz"]
DeviceName = Literal["auto", "cpu", "cuda"]


class TrainSchedule(BaseModel):
    """Optimiser schedule for one student (or teacher): SGD + nesterov, one-cycle cosine lr."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=40, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=8192)
    lr: float = Field(default=0.05, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0, le=1)
    augment: bool = True


class KDSettings(BaseModel):
    """Hinton KD weights (alpha on the soft term) and temperature."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(default=0.9, ge=0, le=1)
    temperature: float = Field(default=4.0, gt=0, le=100)


class SkepticalSettings(BaseModel):
    """Skeptical student (Kundu et al. 2021): where the teacher loss enters and the gammas."""

    model_config = ConfigDict(extra="forbid")

    ac_stage: int | None = Field(default=None, ge=1, le=3, description="Stage whose exit takes the KD loss; None = architecture default.")
    sd_beta: float = Field(default=0.3, ge=0, le=1, description="Weight of the soft SD term on the SD head.")
    gamma_teacher: float = Field(default=1.0, ge=0)
    gamma_sd: float = Field(default=1.0, ge=0)
    gamma_ce: float = Field(default=1.0, ge=0)


class AuditConfig(BaseModel):
    """Everything that determines an audit's numbers (besides the teacher file itself)."""

    model_config = ConfigDict(extra="forbid")

    teacher_arch: str
    dataset: DatasetName = "digits"
    dataset_path: str | None = Field(default=None, description="Only for dataset='npz': path to a .npz with x, y.")
    students: list[str] = Field(default_factory=lambda: ["cnn-4-8-8-16"], min_length=1, max_length=8)
    attacks: list[AttackName] = Field(default_factory=lambda: ["normal_kd", "skeptical"], min_length=1)
    seeds: int = Field(default=2, ge=1, le=20)
    base_seed: int = Field(default=0, ge=0)
    fraction: float = Field(default=1.0, gt=0, le=1, description="Share of the training set the thief has.")
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    device: DeviceName = "auto"
    schedule: TrainSchedule = Field(
        default_factory=TrainSchedule,
        description="Student schedule; fields left out take the dataset's defaults (distill/defaults.py).",
    )
    kd: KDSettings = Field(default_factory=KDSettings)
    skeptical: SkepticalSettings = Field(default_factory=SkepticalSettings)

    @model_validator(mode="before")
    @classmethod
    def _dataset_default_schedule(cls, data: object) -> object:
        """Merge a partial schedule (e.g. only `epochs`) over the dataset's default schedule."""
        if isinstance(data, dict):
            from kdaudit.distill.defaults import default_schedule

            given = data.get("schedule")
            if isinstance(given, TrainSchedule):
                return data
            base = default_schedule(str(data.get("dataset", "digits"))).model_dump()
            return {**data, "schedule": {**base, **(given or {})}}
        return data

    @field_validator("attacks")
    @classmethod
    def _unique_attacks(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @field_validator("students")
    @classmethod
    def _known_students(cls, v: list[str]) -> list[str]:
        from kdaudit.models.registry import parse_arch

        try:
            return list(dict.fromkeys(parse_arch(s) for s in v))
        except InputError as e:
            raise ValueError(str(e)) from None

    @field_validator("teacher_arch")
    @classmethod
    def _known_teacher(cls, v: str) -> str:
        from kdaudit.models.registry import parse_arch

        try:
            return parse_arch(v)
        except InputError as e:
            raise ValueError(str(e)) from None
