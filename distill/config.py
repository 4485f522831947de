"""Typed, validated audit configuration: what the API, CLI and workers all hand the engine.

One pydantic model so that every entry point validates the same way and the report can
record the fully resolved configuration for provenance.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kdaudit.core.errors import InputError
from kdaudit.distill.attacks import attack_names
from kdaudit.distill.preprocess import TeacherInput, TeacherInputField

#: every attack, in the registry's order (distill/attacks/): the config, the CLI and the API schema accept these
AttackName = Literal[attack_names()]  # type: ignore[valid-type]
#: attacks that train a student; `skeptical_e` is an evaluation of the skeptical student
TRAINED_ATTACKS: tuple[str, ...] = attack_names()
#: attacks that never see the thief's data: a generator synthesises the queries (distill/datafree.py)
DATA_FREE_ATTACKS: tuple[str, ...] = attack_names("data-free")
DatasetName = Literal["digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "cifar100-coarse", "npz", "folder"]
DeviceName = Literal["auto", "cpu", "cuda"]
#: an image-folder dataset named in a service request: a sub-folder of the operator's
#: `folder_datasets_dir`, by name only (no separators, no leading dot, so never `..` or a path)
FolderDatasetName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
#: `teacher_arch` of a teacher reached over HTTP (models/remote_teacher.py)
REMOTE_ARCH = "remote"
#: dataset='folder': the square size images are resized to (AuditConfig's field and the API's)
ImageSize = Annotated[int, Field(ge=4, le=512)]
IMAGE_SIZE_HELP = "dataset='folder': resize images to this square size (default: inferred)."
#: the label-smoothing baseline's smoothing weight, one definition for AuditConfig and the API's
#: audit request (service/schemas.py `AuditCreate`): null or 0 leaves the baseline out
LabelSmoothing = Annotated[float, Field(ge=0, lt=1)]
DEFAULT_LABEL_SMOOTHING = 0.1
LABEL_SMOOTHING_HELP = ("A label-smoothing student (this smoothing weight, no teacher) trained beside scratch as the "
                        "regularisation baseline; null or 0 leaves it out (default 0.1).")


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


class DataFreeSettings(BaseModel):
    """Data-free attackers (ZSKT, Micaelli & Storkey 2019; DFAD, Fang et al. 2019).

    Defaults are the papers' (ZSKT: Adam 1e-3 generator / 2e-3 student as in the official
    run names, 1 generator : 10 student steps on each pseudo batch, beta_AT 250, KL at tau 1,
    batch 128, latent 100; DFAD: SGD 0.1 student / Adam 1e-3 generator, 5 student : 1
    generator steps, batch 256, latent 256; DFME, Truong et al. 2021: DFAD's steps and losses
    with the generator's gradient through the teacher estimated by forward differences,
    `dfme_directions` random directions at step `dfme_epsilon`, distill/datafree/dfme.py). Fields left `None` take the attack's paper value
    or, for `iterations`, the dataset's default (distill/datafree.py). `budget` caps the images
    sent to the teacher per run (one attack x student x seed); every query is counted,
    including the held-out generated samples used to pick the checkpoint.
    """

    model_config = ConfigDict(extra="forbid")

    budget: int | None = Field(default=None, ge=1, description="Teacher queries (images) per run; None = no cap.")
    iterations: int | None = Field(default=None, ge=1, le=10_000_000, description="Generator/student rounds; None = dataset default (or what the budget allows).")
    batch_size: int | None = Field(default=None, ge=2, le=8192, description="None = paper default (ZSKT 128, DFAD 256).")
    latent_dim: int | None = Field(default=None, ge=1, le=4096, description="None = paper default (ZSKT 100, DFAD 256).")
    generator_lr: float = Field(default=1e-3, gt=0, le=10)
    zskt_student_lr: float = Field(default=2e-3, gt=0, le=10, description="Adam, cosine-annealed.")
    dfad_student_lr: float = Field(default=0.1, gt=0, le=10, description="SGD momentum 0.9, wd 5e-4, cosine-annealed.")
    zskt_generator_steps: int = Field(default=1, ge=1, le=100)
    zskt_student_steps: int = Field(default=10, ge=1, le=100)
    dfad_generator_steps: int = Field(default=1, ge=1, le=100)
    dfad_student_steps: int = Field(default=5, ge=1, le=100)
    dfad_teacher_gradient: bool = Field(
        default=False,
        description="Let DFAD's generator backpropagate through the teacher, as the official DFAD code does "
        "(needs a differentiable PyTorch teacher; the run is then grey-box, not black-box).",
    )
    dfme_directions: int = Field(
        default=1, ge=1, le=100,
        description="DFME: random directions per generated image for the forward-difference gradient estimate "
        "(the paper's m = 1); each costs one teacher query per image.",
    )
    dfme_epsilon: float = Field(default=1e-3, gt=0, le=1, description="DFME: forward-difference step (paper: 1e-3).")
    beta_at: float = Field(default=250.0, ge=0, description="Weight of ZSKT's attention-transfer term (per matched stage).")
    kl_temperature: float = Field(default=1.0, gt=0, le=100, description="Temperature of ZSKT's KL(T||S).")
    checkpoints: int = Field(default=20, ge=1, le=1000, description="Evaluation points (progress 'epochs'); one checkpoint candidate each.")
    selection_samples: int = Field(default=256, ge=10, le=100_000, description="Held-out generated images per checkpoint for selection (teacher-labelled, never trained on).")


class ThreatModel(BaseModel):
    """What the thief sees of the teacher and how much it may ask (distill/access.py)."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field(default="logits", description="Output policy: logits, probs, probs@T, topK, topK-renorm, roundN, label.")
    query_budget: int | None = Field(default=None, ge=1, description="Cap on billed teacher queries (images) per run; None = no cap.")
    billing: Literal["distinct", "every"] = Field(
        default="distinct", description="distinct: a repeated image is billed once (the thief caches); every: each image sent is billed.",
    )

    @field_validator("output")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        return _policy(v)


class SweepSettings(BaseModel):
    """Extra settings to audit besides the base one: one table per axis in the report.

    `each` changes one axis at a time from the base setting (the paper's studies); `grid`
    runs every combination of the listed values. Student architectures are swept by
    listing several `students`.
    """

    model_config = ConfigDict(extra="forbid")

    outputs: list[str] = Field(default_factory=list, max_length=8, description="Output policies (threat.output is the base).")
    fractions: list[float] = Field(default_factory=list, max_length=8, description="Shares of the training set the thief has.")
    ac_stages: list[int] = Field(default_factory=list, max_length=3, description="Skeptical student: stage whose exit takes the teacher loss.")
    temperatures: list[float] = Field(default_factory=list, max_length=8, description="KD temperatures tau.")
    mode: Literal["each", "grid"] = "each"

    @field_validator("outputs")
    @classmethod
    def _known_policies(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(_policy(p) for p in v))

    @field_validator("fractions")
    @classmethod
    def _valid_fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError("every fraction must be in (0, 1]")
        return list(dict.fromkeys(v))

    @field_validator("ac_stages")
    @classmethod
    def _valid_stages(cls, v: list[int]) -> list[int]:
        if any(s not in (1, 2, 3) for s in v):
            raise ValueError("AC stages are 1, 2 or 3")
        return list(dict.fromkeys(v))

    @field_validator("temperatures")
    @classmethod
    def _valid_temperatures(cls, v: list[float]) -> list[float]:
        if any(not 0 < t <= 100 for t in v):
            raise ValueError("every temperature must be in (0, 100]")
        return list(dict.fromkeys(v))

    @property
    def empty(self) -> bool:
        return not (self.outputs or self.fractions or self.ac_stages or self.temperatures)


def _policy(spec: str) -> str:
    from kdaudit.distill.policy_spec import parse_policy

    try:
        return parse_policy(spec)
    except InputError as e:
        raise ValueError(str(e)) from None


class AuditConfig(BaseModel):
    """Everything that determines an audit's numbers (besides the teacher file itself)."""

    model_config = ConfigDict(extra="forbid")

    teacher_arch: str | None = Field(
        default=None, description="The teacher's architecture (a state_dict needs it); None for an ONNX or remote black box.",
    )
    teacher_input: TeacherInputField = Field(
        default_factory=TeacherInput,
        description="What the teacher expects to be fed (distill/preprocess.py); default: the dataset's own statistics.",
    )
    expected_accuracy: float | None = Field(
        default=None, ge=0, le=100,
        description="The owner's test accuracy for the teacher, percent: the audit stops if it measures > 2 pts less.",
    )
    force: bool = Field(default=False, description="Run even if the teacher sanity check fails (the report says so).")
    dataset: DatasetName = "digits"
    dataset_path: str | None = Field(default=None, description="For dataset='npz' (a .npz with x, y) or 'folder' (train/ and test/).")
    image_size: ImageSize | None = Field(default=None, description=IMAGE_SIZE_HELP)
    students: list[str] = Field(default_factory=lambda: ["cnn-4-8-8-16"], min_length=1, max_length=8)
    attacks: list[AttackName] = Field(default_factory=lambda: ["normal_kd", "skeptical"], min_length=1)
    seeds: int = Field(default=3, ge=1, le=20, description="Seeds per student; verdicts need >= 2 (intervals), 3 by default.")
    base_seed: int = Field(default=0, ge=0)
    fraction: float = Field(default=1.0, gt=0, le=1, description="Share of the training set the thief has.")
    label_smoothing: LabelSmoothing | None = Field(default=DEFAULT_LABEL_SMOOTHING, description=LABEL_SMOOTHING_HELP)
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    device: DeviceName = "auto"
    schedule: TrainSchedule = Field(
        default_factory=TrainSchedule,
        description="Student schedule; fields left out take the dataset's defaults (distill/defaults.py).",
    )
    kd: KDSettings = Field(default_factory=KDSettings)
    skeptical: SkepticalSettings = Field(default_factory=SkepticalSettings)
    datafree: DataFreeSettings = Field(default_factory=DataFreeSettings)
    threat: ThreatModel = Field(default_factory=ThreatModel)
    sweep: SweepSettings = Field(default_factory=SweepSettings)
    panel: Literal["standard"] | None = Field(
        default=None, description="A named attack panel (distill/variants.py): standard = KD at tau 1/4/20, "
        "skeptical at two AC depths, DFAD (data-free, black-box) and label-only KD.",
    )

    @model_validator(mode="before")
    @classmethod
    def _dataset_default_schedule(cls, data: object) -> object:
        """Merge a partial schedule (e.g. only `epochs`) over the dataset's default schedule."""
        if isinstance(data, dict):
            from kdaudit.distill.defaults import default_schedule

            given = data.get("schedule")
            if isinstance(given, TrainSchedule):
                return data
            dataset = str(data.get("dataset", "digits"))
            base = default_schedule(dataset).model_dump()
            out = {**data, "schedule": {**base, **(given or {})}}
            kd = data.get("kd")
            if dataset.startswith("cifar100") and (kd is None or (isinstance(kd, dict) and "temperature" not in kd)):
                out["kd"] = {**(kd or {}), "temperature": 20.0}  # the papers' tau on CIFAR-100
            return out
        return data

    @field_validator("label_smoothing")
    @classmethod
    def _no_smoothing_no_baseline(cls, v: float | None) -> float | None:
        """A smoothing of 0 is the scratch student trained twice: leave the baseline out instead."""
        return v or None

    @field_validator("attacks")
    @classmethod
    def _unique_attacks(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _data_free_needs_scores(self) -> AuditConfig:
        """Refuse at the edge what cannot run: the output-policy rules of distill/planning/threat.py."""
        from kdaudit.distill.planning.threat import check_threat
        from kdaudit.distill.policy_spec import PolicySpec as OutputPolicy

        try:
            check_threat(self, OutputPolicy.parse(self.threat.output))
        except InputError as e:
            raise ValueError(str(e)) from None
        return self

    @model_validator(mode="after")
    def _enough_images_per_class(self) -> AuditConfig:
        """Refuse a data fraction that leaves the thief fewer than a few images per class
        (distill/budget.py MIN_IMAGES_PER_CLASS): such students sit at chance."""
        from kdaudit.distill.budget import fraction_problem

        problem = fraction_problem(self.dataset, self.val_fraction, [self.fraction, *self.sweep.fractions])
        if problem:
            raise ValueError(problem)
        return self

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
    def _known_teacher(cls, v: str | None) -> str | None:
        from kdaudit.models.registry import parse_arch

        if v is None:
            return None
        if v.strip().lower() == REMOTE_ARCH:
            return REMOTE_ARCH  # a teacher behind an HTTP endpoint: its architecture is unknown and not needed
        try:
            return parse_arch(v)
        except InputError as e:
            raise ValueError(str(e)) from None
