"""`kdaudit defend`'s engine: defended teachers -> one audit each -> the defence x attack matrix.

The simplest sound plan: every defence is served by one teacher (the owner's, or a nasty
teacher trained from it), and the serving-time part is an output policy. So each teacher
gets ONE `run_audit` whose sweep lists its defences' policies (plus `label` for the
label-only thief): per seed, all of them train in one cohort with one teacher forward per
batch, the query accounting and budgets unchanged (distill/runner.py). Utility is measured
on the test split from the same teacher logits. A sweep holds at most 8 policies; a teacher
with more is audited in several parts with identical seeds and data, so the scratch baseline
is the same in each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

import kdaudit
from kdaudit.distill.config import AuditConfig, DatasetName, DeviceName
from kdaudit.distill.data import load_splits
from kdaudit.distill.defences.matrix import DefenceMatrix, TeacherEntry, build_row, rules, summarise
from kdaudit.distill.defences.nasty import NastyTeacher, nasty_recipe, save_nasty, train_nasty, weights_sha256
from kdaudit.distill.defences.pareto import DEFAULT_MAX_LOSS_PTS
from kdaudit.distill.defences.registry import DEFAULT_DEFENCES, Defence, parse_defences
from kdaudit.distill.defences.utility import measure_utility
from kdaudit.distill.preprocess import TeacherInput
from kdaudit.distill.protect import ProtectConfig
from kdaudit.distill.report import Report
from kdaudit.distill.runner import ProgressEvent, run_audit
from kdaudit.distill.teacher_input import apply_contract
from kdaudit.distill.train import EpochReport, accuracy, predict, resolve_device

#: SweepSettings.outputs' limit
MAX_OUTPUTS_PER_AUDIT = 8


class DefendConfig(BaseModel):
    """Everything that determines a defence matrix (besides the owner's teacher file)."""

    model_config = ConfigDict(extra="forbid")

    teacher_arch: str = Field(description="The owner's architecture (the nasty teacher is trained in it).")
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
    max_utility_loss: float = Field(default=DEFAULT_MAX_LOSS_PTS, ge=0, le=100, description="Recommendation rule: "
                                    "the most top-1 points an owner gives up.")
    device: DeviceName = "auto"

    @field_validator("defences")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from kdaudit.core.errors import InputError

        try:
            parse_defences(v, default_omega=0.5, default_tau=4.0)  # syntax only; the dataset's omega comes later
        except InputError as e:
            raise ValueError(str(e)) from None
        return v

    def recipe(self) -> ProtectConfig:
        return ProtectConfig(dataset=self.dataset, arch=self.teacher_arch)

    def parsed(self) -> list[Defence]:
        r = self.recipe()
        return parse_defences(self.defences, default_omega=r.omega, default_tau=r.tau)

    def audit_config(self, outputs: list[str]) -> AuditConfig:
        attacks = ["normal_kd", "skeptical"] + (["datafree_dfad"] if self.datafree else [])
        return AuditConfig(teacher_arch=self.teacher_arch, dataset=self.dataset, dataset_path=self.dataset_path,
                           students=self.students, attacks=attacks, seeds=self.seeds, base_seed=self.base_seed,
                           fraction=self.fraction, device=self.device, sweep={"outputs": outputs},
                           schedule={"epochs": self.epochs} if self.epochs else {})


def outputs_for(defences: list[Defence]) -> list[str]:
    """The output policies one teacher's audit sweeps: its defences' plus `label` for the label-only thief."""
    wanted = [d.serving for d in defences if d.serving != "logits"]
    if any(d.family.keeps_argmax and d.policy.kind != "label" for d in defences):
        wanted.append("label")
    return list(dict.fromkeys(wanted))


def build_matrix(config: DefendConfig, teacher: nn.Module, teacher_sha256: str, *,
                 nasty_teachers: dict[float, nn.Module] | None = None, save_dir: Path | None = None,
                 progress: Callable[[str, ProgressEvent | EpochReport], None] | None = None) -> DefenceMatrix:
    """Train the nasty teachers the defences need (unless given), audit every teacher, assemble the matrix.

    `nasty_teachers` maps omega to an already trained nasty teacher (the science test reuses
    protect's); `save_dir` receives each nasty teacher trained here as safetensors and every audit report.
    """
    started = time.perf_counter()
    defences = config.parsed()
    device = resolve_device(config.device)
    splits = load_splits(config.dataset, dataset_path=config.dataset_path, split_seed=config.base_seed).to(device)
    owner = _as_oracle(teacher.to(device).eval(), splits)
    models: dict[str, nn.Module] = {"owner": owner}
    owner_logits = predict(owner, splits.x_test)
    entries = [TeacherEntry(key="owner", sha256=teacher_sha256, accuracy=round(accuracy(owner_logits, splits.y_test), 3))]
    for omega in sorted({d.nasty_omega for d in defences if d.nasty_omega is not None}):
        nasty = _nasty(config, omega, owner, splits, (nasty_teachers or {}).get(omega), save_dir, progress)
        key = f"nasty@{omega:g}"
        models[key] = nasty.model.to(device).eval()
        entries.append(TeacherEntry(key=key, sha256=nasty.sha256 or weights_sha256(nasty.model), recipe=nasty.recipe,
                                    accuracy=round(accuracy(predict(nasty.model, splits.x_test), splits.y_test), 3),
                                    path=str(nasty.path) if nasty.path else None))
    reports: dict[str, list[Report]] = {}
    for key, model in models.items():
        mine = [d for d in defences if d.teacher_key == key]
        sha = next(e.sha256 for e in entries if e.key == key)
        reports[key] = _audit(config, model, sha, outputs_for(mine), key, progress, save_dir)
    undefended_top1 = accuracy(owner_logits, splits.y_test)  # unrounded: the none row's drop is exactly 0
    rows = []
    for d in defences:
        logits = owner_logits if d.teacher_key == "owner" else predict(models[d.teacher_key], splits.x_test)
        utility = measure_utility(d.policy, logits, owner_logits, splits.y_test, undefended_top1)
        rows.append(build_row(d, reports[d.teacher_key], utility))
    front, rec = summarise(rows, config.max_utility_loss)
    return DefenceMatrix(
        config={**config.model_dump(mode="json"), "defences_resolved": [d.name for d in defences]},
        teachers=entries, rows=rows, pareto_front=front, recommendation=rec, rules=rules(config.max_utility_loss),
        audits=[_provenance(key, i, r, save_dir) for key, rs in reports.items() for i, r in enumerate(rs)],
        environment={"kdaudit": kdaudit.__version__, "torch": torch.__version__, "device": str(device),
                     "torch_threads": torch.get_num_threads(), "wall_seconds": round(time.perf_counter() - started, 1)},
    )


def _as_oracle(teacher: nn.Module, splits) -> nn.Module:  # noqa: ANN001 - Splits
    """The owner's teacher fed as the audit feeds it (default input contract: the dataset's statistics)."""
    return apply_contract(teacher, TeacherInput(), splits.spec.in_channels, splits.mean, splits.std)


def _nasty(config: DefendConfig, omega: float, owner: nn.Module, splits, given: nn.Module | None,  # noqa: ANN001
           save_dir: Path | None, progress: Callable | None) -> NastyTeacher:
    recipe = nasty_recipe(config.dataset, config.teacher_arch, omega, config.base_seed, config.nasty_epochs, config.device)
    if given is not None:
        return NastyTeacher(omega, given, 0, {"omega": omega, "given": "trained outside `defend` (recipe not recorded)"})
    hook = (lambda ep: progress(f"nasty teacher omega {omega:g}", ep)) if progress else None
    nasty = train_nasty(owner, splits, recipe, hook)
    return save_nasty(nasty, save_dir, config.teacher_arch) if save_dir is not None else nasty


def _audit(config: DefendConfig, model: nn.Module, sha: str, outputs: list[str], key: str,
           progress: Callable | None, save_dir: Path | None) -> list[Report]:
    """One audit of `model` per chunk of at most MAX_OUTPUTS_PER_AUDIT output policies (base: full logits).

    With `save_dir`, each full report (every run, its curve and manifest) is written there too:
    the matrix keeps summaries, the reports keep the evidence.
    """
    chunks = [outputs[i:i + MAX_OUTPUTS_PER_AUDIT] for i in range(0, len(outputs), MAX_OUTPUTS_PER_AUDIT)] or [[]]
    hook = (lambda e: progress(key, e)) if progress else None
    reports = []
    for chunk in chunks:
        report = run_audit(config.audit_config(chunk), model, sha, progress=hook)
        assert report is not None  # only_seeds was not given
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            _report_path(save_dir, key, len(reports)).write_text(report.to_json())
        reports.append(report)
    return reports


def _report_path(folder: Path, key: str, part: int) -> Path:
    return folder / f"defend-audit-{key}-{part}.json"


def _provenance(key: str, part: int, r: Report, save_dir: Path | None) -> dict:
    m = r.manifest
    return {"teacher": key, "outputs": ["logits"] + [v.settings.get("output") for v in r.variants],
            "report": str(_report_path(save_dir, key, part)) if save_dir is not None else None,
            "teacher_accuracy": r.teacher.accuracy, "split_sha256": m.split_sha256 if m else None,
            "git_commit": m.git_commit if m else None, "seeds": m.seeds if m else None,
            "wall_seconds": r.config.get("wall_seconds")}
