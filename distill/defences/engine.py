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
from torch import nn

import kdaudit
from kdaudit.core.errors import CancelledError
from kdaudit.distill.config import AuditConfig
from kdaudit.distill.data import load_splits
from kdaudit.distill.defences.config import MAX_OUTPUTS_PER_AUDIT, DefendConfig, outputs_for
from kdaudit.distill.defences.matrix import DefenceMatrix, TeacherEntry, build_row, rules, summarise
from kdaudit.distill.defences.nasty import (
    NastyTeacher,
    keep_for_resume,
    nasty_recipe,
    resume_nasty,
    save_nasty,
    train_nasty,
    weights_sha256,
)
from kdaudit.distill.defences.utility import measure_utility
from kdaudit.distill.preprocess import TeacherInput
from kdaudit.distill.report import Report, RunRecord
from kdaudit.distill.runner import ProgressEvent, run_audit
from kdaudit.distill.teacher_input import apply_contract
from kdaudit.distill.train import EpochReport, accuracy, predict, resolve_device

__all__ = ["MAX_OUTPUTS_PER_AUDIT", "DefendConfig", "build_matrix", "outputs_for"]

#: stops the work between epochs (the service's cancel / lost claim); run_audit raises CancelledError
ShouldCancel = Callable[[], bool]


def build_matrix(config: DefendConfig, teacher: nn.Module, teacher_sha256: str, *,
                 nasty_teachers: dict[float, nn.Module] | None = None, save_dir: Path | None = None,
                 progress: Callable[[str, ProgressEvent | EpochReport], None] | None = None,
                 should_cancel: ShouldCancel | None = None, data_root: Path | None = None,
                 done_runs: dict[str, dict[str, RunRecord]] | None = None, resume_dir: Path | None = None) -> DefenceMatrix:
    """Train the nasty teachers the defences need (unless given), audit every teacher, assemble the matrix.

    `nasty_teachers` maps omega to an already trained nasty teacher (the science test reuses
    protect's); `save_dir` receives each nasty teacher trained here as safetensors and every audit report.
    `should_cancel` is asked at every audit and nasty-teacher epoch (CancelledError), `data_root` is
    where datasets live. Resume (a redelivered job): `done_runs` maps an audit's stage ("owner/0",
    "nasty@0.04/0": `progress`'s first argument) to its finished runs, which are not trained again;
    `resume_dir` keeps the nasty teachers trained here and each audit's per-epoch cohort checkpoints.
    """
    started = time.perf_counter()
    defences = config.parsed()
    device = resolve_device(config.device)
    splits = load_splits(config.dataset, data_root=data_root, dataset_path=config.dataset_path,
                         split_seed=config.base_seed).to(device)
    raw = teacher.to(device).eval()
    owner = _as_oracle(raw, config.teacher_input, splits)
    models: dict[str, nn.Module] = {"owner": raw}  # its audits apply the contract themselves (and gate it)
    owner_logits = predict(owner, splits.x_test)
    entries = [TeacherEntry(key="owner", sha256=teacher_sha256, accuracy=round(accuracy(owner_logits, splits.y_test), 3))]
    for omega in sorted({d.nasty_omega for d in defences if d.nasty_omega is not None}):
        nasty = _nasty(config, omega, owner, splits, (nasty_teachers or {}).get(omega), save_dir, progress,
                       should_cancel, resume_dir)  # fmt: skip
        key = f"nasty@{omega:g}"
        models[key] = nasty.model.to(device).eval()
        entries.append(TeacherEntry(key=key, sha256=nasty.sha256 or weights_sha256(nasty.model), recipe=nasty.recipe,
                                    accuracy=round(accuracy(predict(nasty.model, splits.x_test), splits.y_test), 3),
                                    path=str(nasty.path) if nasty.path else None))
    reports: dict[str, list[Report]] = {}
    for key, audits in config.planned_audits(defences).items():
        sha = next(e.sha256 for e in entries if e.key == key)
        reports[key] = _audit(audits, models[key], sha, key, progress, save_dir,
                              {"should_cancel": should_cancel, "data_root": data_root}, done_runs or {}, resume_dir)
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


def _as_oracle(teacher: nn.Module, contract: TeacherInput, splits) -> nn.Module:  # noqa: ANN001 - Splits
    """The owner's teacher fed through its declared input contract, as its audits feed it: what the
    utility figures and the nasty teachers' training (which distils from it) read."""
    return apply_contract(teacher, contract, splits.spec.in_channels, splits.mean, splits.std)


def _nasty(config: DefendConfig, omega: float, owner: nn.Module, splits, given: nn.Module | None,  # noqa: ANN001
           save_dir: Path | None, progress: Callable | None, should_cancel: ShouldCancel | None,
           resume_dir: Path | None) -> NastyTeacher:  # fmt: skip
    recipe = nasty_recipe(config.dataset, config.teacher_arch, omega, config.base_seed, config.nasty_epochs, config.device)
    if given is not None:
        return NastyTeacher(omega, given, 0, {"omega": omega, "given": "trained outside `defend` (recipe not recorded)"})
    arch = config.teacher_arch
    assert arch is not None  # DefendConfig refuses nasty defences for a black box
    nasty = resume_nasty(resume_dir, omega, arch, splits) if resume_dir is not None else None
    if nasty is None:
        def hook(ep: EpochReport) -> None:
            if progress is not None:
                progress(f"nasty teacher omega {omega:g}", ep)
            if should_cancel is not None and should_cancel():  # a nasty teacher trains for minutes: stop between epochs
                raise CancelledError("the defence comparison was cancelled")

        nasty = train_nasty(owner, splits, recipe, hook)
        if resume_dir is not None:
            nasty = keep_for_resume(nasty, resume_dir, arch)
    return save_nasty(nasty, save_dir, arch) if save_dir is not None else nasty


def _audit(audits: list[AuditConfig], model: nn.Module, sha: str, key: str, progress: Callable | None,
           save_dir: Path | None, run_kwargs: dict, done_runs: dict[str, dict[str, RunRecord]],
           resume_dir: Path | None) -> list[Report]:  # fmt: skip
    """Run one teacher's audits (each sweeps at most MAX_OUTPUTS_PER_AUDIT output policies; base: full logits).

    Each audit's stage is "<teacher key>/<part>": progress reports under it, `done_runs` is keyed by it.
    With `save_dir`, each full report (every run, its curve and manifest) is written there too:
    the matrix keeps summaries, the reports keep the evidence.
    """
    reports = []
    for part, audit in enumerate(audits):
        stage = f"{key}/{part}"
        hook = (lambda e, stage=stage: progress(stage, e)) if progress else None
        report = run_audit(audit, model, sha, progress=hook, done_runs=done_runs.get(stage),
                           checkpoint_dir=resume_dir / stage.replace("/", "-") if resume_dir is not None else None,
                           **run_kwargs)  # fmt: skip
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
