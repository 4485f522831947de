"""What determines a defence matrix, torch-free: `DefendConfig` and the audits it plans.

Split from engine.py so the API process validates a `POST /v1/defences` request, stores it and
sizes it against the limits with the very rules the engine runs by (which teacher serves which
defence, which output policies one audit sweeps, how many audits a teacher needs), without
loading torch. Only `recipe()` / `parsed()` reach the nasty-teacher recipe (distill/protect.py,
which imports torch), lazily: the API parses with `parse_syntax()` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kdaudit.distill.config import AuditConfig, DatasetName, DeviceName
from kdaudit.distill.defences.pareto import DEFAULT_MAX_LOSS_PTS
from kdaudit.distill.defences.registry import DEFAULT_DEFENCES, Defence, parse_defences
from kdaudit.distill.preprocess import TeacherInput, TeacherInputField

if TYPE_CHECKING:
    from kdaudit.distill.protect import ProtectConfig

#: SweepSettings.outputs' limit
MAX_OUTPUTS_PER_AUDIT = 8
#: the strength and temperature a bare `nasty` parses to when only its syntax matters
SYNTAX_OMEGA, SYNTAX_TAU = 0.5, 4.0


class DefendConfig(BaseModel):
    """Everything that determines a defence matrix (besides the owner's teacher file)."""

    model_config = ConfigDict(extra="forbid")

    teacher_arch: str | None = Field(description="The owner's architecture (the nasty teacher is trained in it); "
                                     "None for a black box (ONNX, remote): serving-time defences only.")
    dataset: DatasetName = "digits"
    dataset_path: str | None = None
    defences: list[str] = Field(default_factory=lambda: list(DEFAULT_DEFENCES), min_length=1, max_length=24)
    students: list[str] = Field(default_factory=lambda: ["cnn-4-8-8-16"], min_length=1, max_length=4)
    seeds: int = Field(default=3, ge=1, le=20)
    base_seed: int = Field(default=0, ge=0)
    epochs: int | None = Field(default=None, ge=1, le=1000, description="Student epochs; None = the dataset default.")
    fraction: float = Field(default=1.0, gt=0, le=1, description="Share of the training set the thief holds.")
    datafree: bool = Field(default=False, description="Add DFAD (data-free) where the defence serves full scores.")
    nasty_epochs: int | None = Field(default=None, ge=1, le=1000, description="Nasty teachers' epochs; None = protect's recipe.")
    query_budget: int | None = Field(default=None, ge=1, description="Cap on billed teacher queries (images) per run, "
                                     "for every attack under every defence; None = no cap.")
    billing: Literal["distinct", "every"] = Field(default="distinct", description="As an audit's threat.billing.")
    max_utility_loss: float = Field(default=DEFAULT_MAX_LOSS_PTS, ge=0, le=100, description="Recommendation rule: "
                                    "the most top-1 points an owner gives up.")
    device: DeviceName = "auto"
    teacher_input: TeacherInputField = Field(default_factory=TeacherInput, description="What the owner's teacher expects to "
                                        "be fed (as an audit's); nasty teachers trained here take the dataset's own statistics.")
    expected_accuracy: float | None = Field(default=None, gt=0, le=100, description="The owner's test accuracy for their "
                                            "teacher, percent: the owner's audits stop if they measure > 2 pts less.")
    force: bool = Field(default=False, description="Audit the owner's teacher even when its sanity check fails.")

    @field_validator("defences")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from kdaudit.core.errors import InputError

        try:
            parse_defences(v, default_omega=SYNTAX_OMEGA, default_tau=SYNTAX_TAU)  # the dataset's omega comes later
        except InputError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _nasty_needs_an_architecture(self) -> DefendConfig:
        """A nasty teacher is trained in the owner's architecture: a black box has none to train."""
        if self.teacher_arch is None and any(d.nasty_omega is not None for d in self.parse_syntax()):
            raise ValueError("nasty-teacher defences need the teacher's architecture and weights (not a black box)")
        return self

    def recipe(self) -> ProtectConfig:
        from kdaudit.distill.protect import ProtectConfig

        return ProtectConfig(dataset=self.dataset, arch=self.teacher_arch)

    def parsed(self) -> list[Defence]:
        """The defences with the dataset's nasty recipe (omega, tau) filled in (loads the engine)."""
        r = self.recipe()
        return parse_defences(self.defences, default_omega=r.omega, default_tau=r.tau)

    def parse_syntax(self) -> list[Defence]:
        """The defences as written (a bare `nasty` at SYNTAX_OMEGA): enough to plan and size, torch-free."""
        return parse_defences(self.defences, default_omega=SYNTAX_OMEGA, default_tau=SYNTAX_TAU)

    def audit_config(self, outputs: list[str], *, owner: bool = True) -> AuditConfig:
        """One audit of the matrix; the owner's teacher is fed through its declared contract (and held to
        its expected accuracy), a nasty teacher trained here takes the dataset's statistics."""
        attacks = ["normal_kd", "skeptical"] + (["datafree_dfad"] if self.datafree else [])
        contract = ({"teacher_input": self.teacher_input, "expected_accuracy": self.expected_accuracy, "force": self.force}
                    if owner else {})  # fmt: skip
        return AuditConfig(teacher_arch=self.teacher_arch, dataset=self.dataset, dataset_path=self.dataset_path,
                           students=self.students, attacks=attacks, seeds=self.seeds, base_seed=self.base_seed,
                           fraction=self.fraction, device=self.device, sweep={"outputs": outputs},
                           schedule={"epochs": self.epochs} if self.epochs else {},
                           threat={"query_budget": self.query_budget, "billing": self.billing}, **contract)

    def planned_audits(self, defences: list[Defence]) -> dict[str, list[AuditConfig]]:
        """Teacher key ('owner', 'nasty@omega') -> the audits the engine runs against it, in order."""
        keys = dict.fromkeys(["owner"] + [d.teacher_key for d in defences])
        return {key: [self.audit_config(chunk, owner=key == "owner") for chunk in output_chunks(outputs_for(
            [d for d in defences if d.teacher_key == key]))] for key in keys}


def outputs_for(defences: list[Defence]) -> list[str]:
    """The output policies one teacher's audit sweeps: its defences' plus `label` for the label-only thief."""
    wanted = [d.serving for d in defences if d.serving != "logits"]
    if any(d.policy.kind != "label" for d in defences):  # every serving defence keeps an argmax to read
        wanted.append("label")
    return list(dict.fromkeys(wanted))


def output_chunks(outputs: list[str]) -> list[list[str]]:
    """At most MAX_OUTPUTS_PER_AUDIT policies per audit (base: full logits); a teacher with none still gets one."""
    return [outputs[i:i + MAX_OUTPUTS_PER_AUDIT] for i in range(0, len(outputs), MAX_OUTPUTS_PER_AUDIT)] or [[]]
