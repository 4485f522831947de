"""Run an audit: expand the config into runs, train them seed by seed, assemble the report.

This is the engine's one entry point for the CLI and the workers. Progress goes out
through a callback (the CLI draws a progress bar, a worker writes the database), the
caller can cancel between epochs, and runs already finished (`done_runs`, e.g. from the
database after a worker crash) are not trained again.
"""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

import kdaudit
from kdaudit.core.errors import CancelledError, InputError
from kdaudit.distill.config import DATA_FREE_ATTACKS, AuditConfig
from kdaudit.distill.data import Splits, load_splits
from kdaudit.distill.datafree import SELECTION_RULE as DATAFREE_SELECTION_RULE
from kdaudit.distill.datafree import access_of, check_teacher, plan_datafree, train_datafree
from kdaudit.distill.fidelity import fidelity_metrics
from kdaudit.distill.report import (
    AccuracyStats,
    AttackResult,
    DatasetInfo,
    Environment,
    Fidelity,
    Manifest,
    Report,
    Retry,
    RunRecord,
    ScratchResult,
    StudentSummary,
    Summary,
    TeacherInfo,
    decide_verdict,
    delta_acc,
)
from kdaudit.distill.train import Cohort, EpochReport, Member, MemberResult, accuracy, predict, resolve_device
from kdaudit.models.multi_exit import MultiExitNet


@dataclass(frozen=True)
class RunSpec:
    kind: str  # scratch | normal_kd | skeptical | datafree_* (distill/datafree.py)
    student: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.student}/seed{self.seed}"


@dataclass
class ProgressEvent:
    kind: Literal["run_started", "epoch_end", "run_finished"]
    run_key: str
    run_index: int
    total_runs: int
    epoch: int
    epochs: int
    val_accuracy: float | None
    record: RunRecord | None = None


def plan_runs(config: AuditConfig) -> list[RunSpec]:
    """All runs of an audit: for each seed and student, a scratch baseline and every attack."""
    runs = []
    for seed in range(config.base_seed, config.base_seed + config.seeds):
        for student in config.students:
            runs.append(RunSpec("scratch", student, seed))
            runs.extend(RunSpec(a, student, seed) for a in config.attacks)
    return runs


#: the divergence watchdog's retries, in order: (lr factor, seed offset, documented change)
RETRY_PLAN: tuple[tuple[float, int, str], ...] = (
    (0.5, 0, "learning rate halved"),
    (0.5, 1, "learning rate halved and a new seed (init and data order offset by 1)"),
)


def teacher_accuracy(teacher: nn.Module, splits: Splits, logits: torch.Tensor | None = None) -> float:
    logits = predict(teacher, splits.x_test) if logits is None else logits
    if logits.ndim != 2 or logits.shape[1] != splits.spec.num_classes:
        raise InputError(
            f"the teacher outputs {tuple(logits.shape[1:])} scores per image but dataset "
            f"{splits.spec.name} has {splits.spec.num_classes} classes"
        )
    return accuracy(logits, splits.y_test)


def attack_setting(kind: str, config: AuditConfig | None = None) -> tuple[str | None, str | None]:
    """(setting, access) of a run kind: data-free attacks by family; KD variants use output vectors only."""
    if kind in DATA_FREE_ATTACKS:
        return "data_free", access_of(kind, config.datafree if config else None)
    if kind in ("normal_kd", "skeptical"):
        return "data_available", "black_box"
    return None, None


def _record(result: MemberResult, splits: Splits, teacher_logits: torch.Tensor | None = None,
            retries: list[Retry] | None = None) -> RunRecord:
    m, model = result.member, result.model
    fidelity = fidelity_ens = None
    if teacher_logits is not None:
        c = splits.spec.num_classes
        fidelity = fidelity_metrics(teacher_logits, predict(model, splits.x_test), splits.y_test, c)
        if isinstance(model, MultiExitNet):
            fidelity_ens = fidelity_metrics(teacher_logits, predict(model, splits.x_test, ensemble=True), splits.y_test, c)
    exits: dict[str, float] = {}
    if isinstance(model, MultiExitNet):
        for stage in (1, 2, 3):
            exits[f"exit{stage}"] = round(accuracy(predict(model, splits.x_test, exit_index=MultiExitNet.exit_index(stage)), splits.y_test), 3)
        exits["final"] = round(accuracy(predict(model, splits.x_test), splits.y_test), 3)
        exits["ensemble"] = round(accuracy(predict(model, splits.x_test, ensemble=True), splits.y_test), 3)
    return RunRecord(
        kind=m.kind,
        student=m.arch,
        seed=m.seed,
        test_accuracy=round(accuracy(predict(model, splits.x_test), splits.y_test), 3),
        exit_accuracies=exits,
        best_epoch=result.best_epoch,
        val_curve=result.val_curve,
        teacher_queries=result.teacher_queries,
        seconds=result.seconds,
        setting=attack_setting(m.kind)[0],
        access=result.extra.get("access", attack_setting(m.kind)[1]),
        selection=result.extra.get("selection_rule"),
        fidelity=fidelity,
        fidelity_ensemble=fidelity_ens,
        status="diverged" if result.diverged else "ok",
        diverged_reason=result.diverged,
        retries=list(retries or []),
    )


def _retry_diverged(result: MemberResult, config: AuditConfig, splits: Splits, teacher: nn.Module,
                    device: torch.device, seed: int) -> tuple[MemberResult, list[Retry]]:
    """Retrain a diverged cohort member alone, per RETRY_PLAN, until it trains or the plan runs out.

    A member trains alone exactly as it would in its cohort (tested), so the only differences
    from the original attempt are the documented changes.
    """
    retries: list[Retry] = []
    m = result.member
    for factor, offset, change in RETRY_PLAN:
        if result.diverged is None:
            break
        lr = config.schedule.lr * factor
        retries.append(Retry(reason=result.diverged, change=f"{change} (lr {lr:g}, seed offset {offset})"))
        member = Member(m.key, m.kind, m.arch, m.seed, m.selection, m.window, m.nasty_omega, m.nasty_tau, seed_offset=offset)
        result = Cohort(
            [member], splits, config.schedule.model_copy(update={"lr": lr}),
            reference=teacher, kd=config.kd, skeptical=config.skeptical, device=device, stream_seed=seed + offset,
        ).train()[0]
    return result, retries


def run_audit(
    config: AuditConfig,
    teacher: nn.Module,
    teacher_sha256: str,
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    done_runs: dict[str, RunRecord] | None = None,
    data_root: Path | None = None,
    checkpoint_dir: Path | None = None,
) -> Report:
    """Run every planned run not in `done_runs` and assemble the report.

    With `checkpoint_dir`, each seed's cohort is checkpointed after every epoch
    (`seed<N>.pt`), so a crashed audit resumes mid-seed instead of from the seed's start.
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    splits = load_splits(
        config.dataset,
        data_root=data_root,
        dataset_path=config.dataset_path,
        val_fraction=config.val_fraction,
        fraction=config.fraction,
        split_seed=config.base_seed,
    ).to(device)
    teacher = teacher.to(device) if not getattr(teacher, "is_remote", False) else teacher
    teacher.eval()
    teacher_logits = predict(teacher, splits.x_test)  # once per audit: accuracy and every run's fidelity
    teacher_acc = teacher_accuracy(teacher, splits, teacher_logits)
    for attack in config.attacks:
        if attack in DATA_FREE_ATTACKS:
            check_teacher(attack, teacher, config.datafree)  # ZSKT on a feature-less teacher fails before any training
            plan_datafree(attack, config.datafree, config.dataset)  # and so does a budget too small to run

    runs = plan_runs(config)
    index = {r.key: i for i, r in enumerate(runs)}
    records: dict[str, RunRecord] = dict(done_runs or {})
    emit = progress or (lambda _e: None)

    for seed in range(config.base_seed, config.base_seed + config.seeds):
        todo = [r for r in runs if r.seed == seed and r.key not in records]
        if not todo:
            continue
        cohort_todo = [r for r in todo if r.kind not in DATA_FREE_ATTACKS]
        members = [Member(r.key, r.kind, r.student, seed) for r in cohort_todo]  # type: ignore[arg-type]
        for m in members:
            emit(ProgressEvent("run_started", m.key, index[m.key], len(runs), 0, config.schedule.epochs, None))

        def on_epoch(ep: EpochReport) -> None:
            emit(ProgressEvent("epoch_end", ep.member.key, index[ep.member.key], len(runs), ep.epoch, ep.epochs, ep.val_accuracy))
            if should_cancel is not None and should_cancel():
                raise CancelledError("the audit was cancelled")

        if members:
            cohort = Cohort(
                members, splits, config.schedule,
                reference=teacher, kd=config.kd, skeptical=config.skeptical, device=device, stream_seed=seed,
            )
            ckpt = checkpoint_dir / f"seed{seed}.pt" if checkpoint_dir is not None else None
            for result in cohort.train(on_epoch, checkpoint=ckpt):
                retries: list[Retry] = []
                if result.diverged is not None:
                    result, retries = _retry_diverged(result, config, splits, teacher, device, seed)
                rec = _record(result, splits, teacher_logits, retries)
                records[result.member.key] = rec
                emit(ProgressEvent("run_finished", rec_key(rec), index[rec_key(rec)], len(runs),
                                   config.schedule.epochs, config.schedule.epochs, rec.val_curve[rec.best_epoch - 1], rec))

        # data-free runs: no thief data; one at a time, each checkpoint is a progress "epoch"
        for r in (r for r in todo if r.kind in DATA_FREE_ATTACKS):
            checkpoints = plan_datafree(r.kind, config.datafree, config.dataset).checkpoints
            emit(ProgressEvent("run_started", r.key, index[r.key], len(runs), 0, checkpoints, None))
            result = train_datafree(
                r.kind, r.student, seed, splits, teacher, config.datafree,
                kd=config.kd, skeptical=config.skeptical, device=device, key=r.key, on_checkpoint=on_epoch,
            )
            rec = _record(result, splits, teacher_logits)
            records[r.key] = rec
            emit(ProgressEvent("run_finished", r.key, index[r.key], len(runs), checkpoints, checkpoints,
                               rec.val_curve[rec.best_epoch - 1], rec))

    return assemble_report(config, runs, records, splits, teacher_acc, teacher_sha256, device, time.perf_counter() - started)


def rec_key(rec: RunRecord) -> str:
    return RunSpec(rec.kind, rec.student, rec.seed).key


def assemble_report(
    config: AuditConfig,
    runs: list[RunSpec],
    records: dict[str, RunRecord],
    splits: Splits,
    teacher_acc: float,
    teacher_sha256: str,
    device: torch.device,
    wall_seconds: float,
) -> Report:
    missing = [r.key for r in runs if r.key not in records]
    if missing:
        raise ValueError(f"cannot assemble a report: runs not finished: {', '.join(missing[:5])}")
    # diverged runs (after every retry) are listed in `runs` but never enter a mean
    ok = {k: r for k, r in records.items() if r.status == "ok"}
    scratch: dict[str, AccuracyStats] = {}
    scratch_fid: dict[str, Fidelity | None] = {}
    for student in config.students:
        recs = [ok[r.key] for r in runs if r.kind == "scratch" and r.student == student and r.key in ok]
        if recs:
            scratch[student] = AccuracyStats.of([x.test_accuracy for x in recs])
            scratch_fid[student] = Fidelity.mean_of([x.fidelity for x in recs if x.fidelity is not None])

    attacks: list[AttackResult] = []
    for student in config.students:
        if student not in scratch:
            continue  # no baseline: every scratch run diverged (listed in `runs`)
        for attack in config.attacks:
            planned = [r for r in runs if r.kind == attack and r.student == student]
            recs = [ok[r.key] for r in planned if r.key in ok]
            if not recs:
                continue  # every run diverged: nothing to average (listed in `runs`)
            variants = [(attack, [x.test_accuracy for x in recs], [x.fidelity for x in recs])]
            if attack == "skeptical" or attack.endswith("_skeptical"):
                variants.append((f"{attack}_e", [x.exit_accuracies["ensemble"] for x in recs], [x.fidelity_ensemble for x in recs]))
            setting, access = attack_setting(attack, config)
            for name, values, fids in variants:
                stats = AccuracyStats.of(values)
                attacks.append(AttackResult(
                    attack=name,
                    student=student,
                    accuracy=stats,
                    delta_base=round(stats.mean - scratch[student].mean, 3),
                    teacher_queries=sum(x.teacher_queries for x in recs),
                    seconds=round(sum(x.seconds for x in recs), 3),
                    setting=setting,  # type: ignore[arg-type]
                    access=access,  # type: ignore[arg-type]
                    fidelity=Fidelity.mean_of([f for f in fids if f is not None]),
                    excluded_runs=len(planned) - len(recs),
                ))

    if attacks:
        best, verdict = decide_verdict(scratch, attacks)
        best_attack, best_student = best.attack, best.student
    else:  # every attack run (or every scratch baseline) diverged: nothing to compare, say so
        verdict, best_attack, best_student = "inconclusive", "none", config.students[0]
    return Report(
        teacher=TeacherInfo(architecture=config.teacher_arch, sha256=teacher_sha256, accuracy=round(teacher_acc, 3),
                            num_classes=splits.spec.num_classes),
        dataset=DatasetInfo(name=config.dataset, train_size=len(splits.x_train), val_size=len(splits.x_val),
                            test_size=len(splits.x_test), fraction=config.fraction),
        scratch=[ScratchResult(student=s, accuracy=a, fidelity=scratch_fid.get(s)) for s, a in scratch.items()],
        attacks=attacks,
        summary=Summary(
            delta_acc=delta_acc(attacks, best_student),
            best_attack=best_attack,
            best_student=best_student,
            verdict=verdict,
            students=[StudentSummary(student=s, delta_acc=delta_acc(attacks, s)) for s in config.students],
        ),
        runs=[records[r.key] for r in runs],
        config={**config.model_dump(mode="json"), "split_sha256": splits.split_sha256, "wall_seconds": round(wall_seconds, 1)},
        environment=Environment(
            kdaudit=kdaudit.__version__,
            torch=torch.__version__,
            device=_device_name(device),
        ),
        manifest=build_manifest(config, runs, records, splits, teacher_sha256, device, wall_seconds),
    )


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the tree kdaudit's engine was loaded from; None whenever that fails."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except Exception:  # noqa: BLE001 - provenance is best effort: never fail an audit over it
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) in (40, 64) else None


def selection_rules(config: AuditConfig) -> dict[str, str]:
    rules = {
        "reported_split": "test: every accuracy and fidelity number; never used to choose anything",
        "checkpoint_split": f"validation ({config.val_fraction:g} of the training data, split seed {config.base_seed})",
        "students": f"best validation accuracy over all epochs 1..{config.schedule.epochs} (rule best_val)",
        "divergence": "non-finite loss, or validation accuracy never above chance + 2 pts over >= 2 epochs; "
        "retried: " + "; then ".join(c for _, _, c in RETRY_PLAN) + "; still diverged = excluded from every mean",
    }
    if any(a in DATA_FREE_ATTACKS for a in config.attacks):
        rules["data_free"] = DATAFREE_SELECTION_RULE
    return rules


def build_manifest(config: AuditConfig, runs: list[RunSpec], records: dict[str, RunRecord], splits: Splits,
                   teacher_sha256: str, device: torch.device, wall_seconds: float) -> Manifest:
    return Manifest(
        teacher_sha256=teacher_sha256,
        split_sha256=splits.split_sha256,
        config=config.model_dump(mode="json"),
        kdaudit_version=kdaudit.__version__,
        git_commit=git_commit(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=_device_name(device),
        seeds=list(range(config.base_seed, config.base_seed + config.seeds)),
        selection=selection_rules(config),
        timing={"wall_seconds": round(wall_seconds, 1), "run_seconds": {r.key: records[r.key].seconds for r in runs}},
    )
