"""Run an audit: expand the config into runs, train them seed by seed, hand the records on.

This is the engine's one entry point for the CLI and the workers. Progress goes out
through a callback (the CLI draws a progress bar, a worker writes the database), the
caller can cancel between epochs, and runs already finished (`done_runs`, e.g. from the
database after a worker crash) are not trained again. Which runs to train is planning
(distill/planning/), each finished run becomes a record (distill/records.py), the report
is assembled from the records (distill/assemble.py) with its manifest (distill/manifest.py);
their names stay importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from kdaudit.core.errors import CancelledError, InputError
from kdaudit.distill.access import OutputPolicy, check_against_response
from kdaudit.distill.assemble import (
    assemble_report,
    threat_info,
)
from kdaudit.distill.budget_table import budget_summary
from kdaudit.distill.config import DATA_FREE_ATTACKS, AuditConfig
from kdaudit.distill.data import Splits, load_splits
from kdaudit.distill.datafree import check_teacher, plan_datafree, retry_datafree, train_datafree
from kdaudit.distill.gate import check_teacher_sanity
from kdaudit.distill.planning import runs as _planning
from kdaudit.distill.planning.runs import RunSpec, trains_in_cohort
from kdaudit.distill.planning.sizes import datafree_settings
from kdaudit.distill.planning.threat import check_attacks
from kdaudit.distill.records import run_record
from kdaudit.distill.report import Report, Retry, RunRecord
from kdaudit.distill.retry import retry_diverged
from kdaudit.distill.teacher_facts import teacher_facts
from kdaudit.distill.teacher_input import TeacherInputAdapter, apply_contract
from kdaudit.distill.train import Cohort, EpochReport, Member, accuracy, predict, resolve_device
from kdaudit.distill.variants import Variant, expand_variants
from kdaudit.distill.variants import apply as apply_variant

#: the old private names of the functions that moved out (distill/records.py, distill/retry.py)
_record = run_record
_retry_diverged = retry_diverged


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
    """All runs of an audit, in training order (distill/planning/runs.py `plan_runs` over its variants)."""
    return _planning.plan_runs(config, expand_variants(config))


def teacher_accuracy(teacher: nn.Module, splits: Splits, logits: torch.Tensor | None = None) -> float:
    logits = predict(teacher, splits.x_test) if logits is None else logits
    if logits.ndim != 2 or logits.shape[1] != splits.spec.num_classes:
        raise InputError(
            f"the teacher outputs {tuple(logits.shape[1:])} scores per image but dataset "
            f"{splits.spec.name} has {splits.spec.num_classes} classes"
        )
    return accuracy(logits, splits.y_test)


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
    only_seeds: Collection[int] | None = None,
) -> Report | None:
    """Run every planned run not in `done_runs` and assemble the report.

    With `only_seeds`, train just those seeds' runs and return None: one part of an audit
    split across workers (workers/); the part that finds every run done assembles the report
    by calling this again with all runs in `done_runs` (it then trains nothing).

    Per seed, every data-available run that shares the thief's data (same fraction), across
    the base setting and all variants, trains in one cohort: one teacher query per batch,
    each member's output policy applied to the shared answer. With `checkpoint_dir`, each
    cohort is checkpointed after every epoch, so a crashed audit resumes mid-seed.
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    variants = {v.name: v for v in expand_variants(config)}
    configs = {name: apply_variant(config, v.overrides, v.attacks) if not v.is_base else config for name, v in variants.items()}
    split_cache: dict[float, Splits] = {}

    def splits_for(fraction: float) -> Splits:
        if fraction not in split_cache:
            split_cache[fraction] = load_splits(
                config.dataset, data_root=data_root, dataset_path=config.dataset_path,
                val_fraction=config.val_fraction, fraction=fraction, split_seed=config.base_seed,
            ).to(device)
        return split_cache[fraction]

    splits = splits_for(config.fraction)
    remote = bool(getattr(teacher, "is_remote", False))
    teacher = teacher if remote else teacher.to(device)
    teacher.eval()
    raw_teacher = teacher
    # the owner's input contract: every image the teacher sees goes through it (students keep ours)
    teacher = apply_contract(teacher, config.teacher_input, splits.spec.in_channels, splits.mean, splits.std)
    _check_threat(config, configs, variants, teacher, splits.spec.num_classes)  # before any query is sent
    teacher_logits = _test_logits(teacher, splits)  # once per audit: accuracy and every run's fidelity
    teacher_acc = teacher_accuracy(teacher, splits, teacher_logits)
    gate = check_teacher_sanity(  # before any student trains: a crippled teacher stops the audit here
        raw_teacher, config.teacher_input, teacher_acc, num_classes=splits.spec.num_classes,
        channels=splits.spec.in_channels, dataset_mean=splits.mean, dataset_std=splits.std,
        measure=lambda t: teacher_accuracy(t, splits, _test_logits(t, splits)), expected=config.expected_accuracy,
        force=config.force, compare_presets=not remote,  # a remote endpoint answers every extra test pass for real
    )

    runs = plan_runs(config)
    index = {r.key: i for i, r in enumerate(runs)}
    records: dict[str, RunRecord] = dict(done_runs or {})
    emit = progress or (lambda _e: None)

    def on_epoch(ep: EpochReport) -> None:
        emit(ProgressEvent("epoch_end", ep.member.key, index[ep.member.key], len(runs), ep.epoch, ep.epochs, ep.val_accuracy))
        if should_cancel is not None and should_cancel():
            raise CancelledError("the audit was cancelled")

    def finish(spec: RunSpec, rec: RunRecord, epochs: int) -> None:
        records[spec.key] = rec
        emit(ProgressEvent("run_finished", spec.key, index[spec.key], len(runs), epochs, epochs,
                           rec.val_curve[rec.best_epoch - 1], rec))

    for seed in range(config.base_seed, config.base_seed + config.seeds):
        if only_seeds is not None and seed not in only_seeds:
            continue
        todo = [r for r in runs if r.seed == seed and r.key not in records]
        by_fraction: dict[float, list[RunSpec]] = {}
        for r in todo:
            if trains_in_cohort(r.kind):
                by_fraction.setdefault(configs[r.variant].fraction, []).append(r)
        for fraction, cohort_todo in by_fraction.items():
            specs = {r.key: r for r in cohort_todo}
            members = [_member(r, configs[r.variant]) for r in cohort_todo]
            for m in members:
                emit(ProgressEvent("run_started", m.key, index[m.key], len(runs), 0, config.schedule.epochs, None))
            part = splits_for(fraction)
            cohort = Cohort(
                members, part, config.schedule, reference=teacher, kd=config.kd, skeptical=config.skeptical,
                device=device, stream_seed=seed, query_budget=config.threat.query_budget, billing=config.threat.billing,
            )
            name = f"seed{seed}.pt" if fraction == config.fraction else f"seed{seed}-fraction{fraction:g}.pt"
            ckpt = checkpoint_dir / name if checkpoint_dir is not None else None
            for result in cohort.train(on_epoch, checkpoint=ckpt):
                spec = specs[result.member.key]
                retries: list[Retry] = []
                if result.diverged is not None:
                    result, retries = retry_diverged(result, configs[spec.variant], part, teacher, device, seed)
                rec = run_record(result, part, teacher_logits, retries, spec, configs[spec.variant].threat.output)
                finish(spec, rec, config.schedule.epochs)

        # data-free runs: no thief data; one at a time, each checkpoint is a progress "epoch"
        for r in (r for r in todo if not trains_in_cohort(r.kind)):
            vc = configs[r.variant]
            settings = datafree_settings(vc)
            checkpoints = plan_datafree(r.kind, settings, config.dataset).checkpoints
            emit(ProgressEvent("run_started", r.key, index[r.key], len(runs), 0, checkpoints, None))
            viewed = _viewed(teacher, vc.threat.output)
            result = train_datafree(
                r.kind, r.student, seed, splits, viewed, settings,
                kd=vc.kd, skeptical=vc.skeptical, device=device, key=r.key, on_checkpoint=on_epoch,
            )
            pairs: list[tuple[str, str]] = []
            if result.diverged is not None:  # NaN, generator collapse or stuck at chance: retried per DATAFREE_RETRY_PLAN
                result, pairs = retry_datafree(result, splits, viewed, settings, kd=vc.kd, skeptical=vc.skeptical,
                                               device=device, on_checkpoint=_cancel_only(should_cancel))
            retries = [Retry(reason=why, change=change) for why, change in pairs]
            finish(r, run_record(result, splits, teacher_logits, retries, spec=r, output=vc.threat.output), checkpoints)

    if only_seeds is not None:
        return None
    report = assemble_report(config, runs, records, splits, teacher_acc, teacher_sha256, device, time.perf_counter() - started)
    report.threat = threat_info(config, runs, records, len(splits.x_test), teacher)
    report.budget = budget_summary(report.runs)
    report.teacher = report.teacher.model_copy(update=teacher_facts(config, raw_teacher, splits, gate))
    report.dataset = report.dataset.model_copy(update={"class_names": list(splits.class_names) if splits.class_names else None,
                                                       "skipped_files": splits.skipped_files})
    return report


def _test_logits(teacher: nn.Module, splits: Splits) -> torch.Tensor:
    """The teacher's logits on the test split, remembered on the teacher object for this split.

    A worker that trains a part of a split audit and then assembles the report calls run_audit
    twice with the same teacher; a remote teacher would otherwise be billed the test split twice.
    """
    holder = teacher.teacher if isinstance(teacher, TeacherInputAdapter) else teacher  # adapters are made per call
    key = (splits.split_sha256, teacher.contract.model_dump_json() if isinstance(teacher, TeacherInputAdapter) else None)
    memo = getattr(holder, "_kdaudit_test_logits", None)
    if not isinstance(memo, dict):
        memo = holder._kdaudit_test_logits = {}  # plain attribute: not a parameter or buffer
    if key not in memo:  # one entry per (split, input contract): the sanity gate measures several
        memo[key] = predict(teacher, splits.x_test)
    return memo[key]


def _cancel_only(should_cancel: Callable[[], bool] | None) -> Callable[[EpochReport], None]:
    """For retries: honour cancellation without re-reporting progress epochs already shown."""
    def check(_ep: EpochReport) -> None:
        if should_cancel is not None and should_cancel():
            raise CancelledError("the audit was cancelled")
    return check


def _member(r: RunSpec, vc: AuditConfig) -> Member:
    policy = OutputPolicy.parse(vc.threat.output)
    return Member(r.key, r.kind, r.student, r.seed,  # type: ignore[arg-type]
                  view=None if policy.kind == "logits" else policy, kd=vc.kd, skeptical=vc.skeptical,
                  label_smoothing=vc.label_smoothing or 0.0)


class PolicyView(nn.Module):
    """The teacher as a data-free thief sees it through an output policy (full scores only)."""

    def __init__(self, teacher: nn.Module, policy: OutputPolicy):
        super().__init__()
        self.teacher, self.policy = teacher, policy
        self.is_remote = bool(getattr(teacher, "is_remote", False))
        self.has_features = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.teacher(x)
        view = self.policy.apply(out[0] if isinstance(out, list) else out)
        return view.clamp(min=LOG_FLOOR)  # a probability of exactly 0 would make DFAD's L1 infinite


#: the floor for log-probabilities a data-free thief feeds its losses (e^-100 ~ 4e-44)
LOG_FLOOR = -100.0


def _viewed(teacher: nn.Module, output: str) -> nn.Module:
    policy = OutputPolicy.parse(output)
    return teacher if policy.kind == "logits" else PolicyView(teacher, policy)


def _check_threat(config: AuditConfig, configs: dict[str, AuditConfig], variants: dict[str, Variant],
                  teacher: nn.Module, num_classes: int) -> None:
    """Refuse, before any training, threat models that cannot run: clear errors, no wasted hours."""
    response = getattr(getattr(teacher, "spec", None), "response", "logits")
    for name, v in variants.items():
        vc = configs[name]
        policy = OutputPolicy.parse(vc.threat.output)
        policy.check_classes(num_classes)
        check_against_response(policy, response)
        for attack in v.attacks:
            check_attacks([attack], policy, response=response)  # the output-policy rules (distill/planning/threat.py)
            if attack in DATA_FREE_ATTACKS:
                check_teacher(attack, teacher, vc.datafree)  # ZSKT on a feature-less teacher fails before any training
                plan_datafree(attack, datafree_settings(vc), config.dataset)  # and so does a budget too small to run
    budget = config.threat.query_budget
    if budget is not None and any(a not in DATA_FREE_ATTACKS for v in variants.values() for a in v.attacks):
        if budget < config.schedule.batch_size:
            raise InputError(f"query budget {budget} is smaller than one training batch ({config.schedule.batch_size} images)")
