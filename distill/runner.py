"""Run an audit: expand the config into runs, train them seed by seed, assemble the report.

This is the engine's one entry point for the CLI and the workers. Progress goes out
through a callback (the CLI draws a progress bar, a worker writes the database), the
caller can cancel between epochs, and runs already finished (`done_runs`, e.g. from the
database after a worker crash) are not trained again.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

import kdaudit
from kdaudit.core.errors import CancelledError, InputError
from kdaudit.distill.access import BILLING_RULES, OutputPolicy, check_against_response
from kdaudit.distill.budget_curve import evaluate_curve
from kdaudit.distill.budget_table import budget_summary
from kdaudit.distill.config import DATA_FREE_ATTACKS, DFME_LABEL_ONLY, AuditConfig, DataFreeSettings
from kdaudit.distill.cost import FULL_TRAIN_IMAGES, TheftCost, theft_cost
from kdaudit.distill.data import Splits, load_splits
from kdaudit.distill.datafree import SELECTION_RULE as DATAFREE_SELECTION_RULE
from kdaudit.distill.datafree import WATCHDOG_RULE as DATAFREE_WATCHDOG_RULE
from kdaudit.distill.datafree import (
    access_of,
    check_teacher,
    plan_datafree,
    reference_iterations,
    retry_datafree,
    train_datafree,
)
from kdaudit.distill.fidelity import fidelity_metrics
from kdaudit.distill.gate import check_teacher_sanity
from kdaudit.distill.report import (
    VERDICT_SEVERITY,
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
    SweepRow,
    SweepTable,
    TeacherInfo,
    ThreatInfo,
    VariantResult,
    WorstCase,
    delta_acc,
)
from kdaudit.distill.teacher_facts import teacher_facts
from kdaudit.distill.teacher_input import TeacherInputAdapter, apply_contract
from kdaudit.distill.train import Cohort, EpochReport, Member, MemberResult, accuracy, predict, resolve_device
from kdaudit.distill.variants import BASE, DEFAULT_AC_STAGE, Variant, describe, expand_variants, variant_name
from kdaudit.distill.variants import apply as apply_variant
from kdaudit.distill.verdicts import Baselines, Leakage, headline, judge, weakest
from kdaudit.distill.verdicts import words as verdict_words
from kdaudit.models.multi_exit import MultiExitNet


@dataclass(frozen=True)
class RunSpec:
    kind: str  # scratch | scratch_ls (label smoothing) | normal_kd | skeptical | datafree_* (distill/datafree.py)
    student: str
    seed: int
    variant: str = BASE  # distill/variants.py; base-setting keys carry no prefix

    @property
    def key(self) -> str:
        core = f"{self.kind}/{self.student}/seed{self.seed}"
        return core if self.variant == BASE else f"{self.variant}:{core}"


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
    """All runs of an audit: per seed and student, the baselines (scratch, and label smoothing unless
    `label_smoothing` is None) and every attack, then each variant's attacks (and its own baselines
    when it changes the data fraction)."""
    baselines = ("scratch",) if config.label_smoothing is None else ("scratch", "scratch_ls")
    runs: dict[str, RunSpec] = {}
    variants = expand_variants(config)
    for seed in range(config.base_seed, config.base_seed + config.seeds):
        for student in config.students:
            for v in variants:
                if v.is_base or "fraction" in v.overrides:  # one baseline per data fraction, however many variants share it
                    for kind in baselines:
                        r = RunSpec(kind, student, seed, scratch_variant(v))
                        runs.setdefault(r.key, r)
                for a in v.attacks:
                    r = RunSpec(a, student, seed, v.name)
                    runs.setdefault(r.key, r)
    return list(runs.values())


def scratch_variant(v: Variant) -> str:
    """The variant whose scratch runs are `v`'s baseline: the one that changes only the data fraction."""
    return variant_name({"fraction": v.overrides["fraction"]}) if "fraction" in v.overrides else BASE


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
            retries: list[Retry] | None = None, spec: RunSpec | None = None, output: str = "logits") -> RunRecord:
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
        variant=spec.variant if spec is not None else BASE,
        output=output,
        stopped=result.stopped,
        budget_curve=evaluate_curve(model, result.extra, splits.x_test, splits.y_test),
    )


def _retry_diverged(result: MemberResult, config: AuditConfig, splits: Splits, teacher: nn.Module,
                    device: torch.device, seed: int) -> tuple[MemberResult, list[Retry]]:
    """Retrain a diverged cohort member alone, per RETRY_PLAN, until it trains or the plan runs out.

    A member trains alone exactly as it would in its cohort (tested), so the only differences
    from the original attempt are the documented changes. Retries' teacher queries and seconds
    are added to the run's: the thief paid for them, and the query budget covers all attempts.
    """
    retries: list[Retry] = []
    m = result.member
    spent, seconds = result.teacher_queries, result.seconds
    budget = config.threat.query_budget
    uses_teacher = m.kind not in ("scratch", "scratch_ls")
    for factor, offset, change in RETRY_PLAN:
        if result.diverged is None:
            break
        left = None if budget is None or not uses_teacher else budget - spent
        if left is not None and left < config.schedule.batch_size:  # the run's budget is its budget, retries included
            result.diverged += f"; not retried: {left:,} of the run's {budget:,} teacher queries left, less than one batch"
            break
        lr = config.schedule.lr * factor
        retries.append(Retry(reason=result.diverged, change=f"{change} (lr {lr:g}, seed offset {offset})"))
        result = Cohort(
            [dataclasses.replace(m, seed_offset=offset)], splits, config.schedule.model_copy(update={"lr": lr}),
            reference=teacher, kd=config.kd, skeptical=config.skeptical, device=device, stream_seed=seed + offset,
            query_budget=left if left is not None else budget, billing=config.threat.billing,
        ).train()[0]
        spent += result.teacher_queries
        seconds += result.seconds
    result.teacher_queries, result.seconds = spent, round(seconds, 3)
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
    configs = {name: apply_variant(config, v.overrides) if not v.is_base else config for name, v in variants.items()}
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
        force=config.force,
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
            if r.kind not in DATA_FREE_ATTACKS:
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
                    result, retries = _retry_diverged(result, configs[spec.variant], part, teacher, device, seed)
                rec = _record(result, part, teacher_logits, retries, spec, configs[spec.variant].threat.output)
                finish(spec, rec, config.schedule.epochs)

        # data-free runs: no thief data; one at a time, each checkpoint is a progress "epoch"
        for r in (r for r in todo if r.kind in DATA_FREE_ATTACKS):
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
            finish(r, _record(result, splits, teacher_logits, retries, spec=r, output=vc.threat.output), checkpoints)

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


def datafree_settings(vc: AuditConfig) -> DataFreeSettings:
    """Data-free runs take the threat model's query budget unless their own is set."""
    if vc.datafree.budget is not None or vc.threat.query_budget is None:
        return vc.datafree
    return vc.datafree.model_copy(update={"budget": vc.threat.query_budget})


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
            if attack in DATA_FREE_ATTACKS:
                if attack.startswith("datafree_dfme") and (policy.hard or response == "labels"):
                    raise InputError(DFME_LABEL_ONLY.format(attack=attack))
                if not policy.full_scores:
                    raise InputError(f"{attack} needs a score for every class (output policy logits or probs); "
                                     f"{policy.spec} hides them")
                if policy.kind != "logits" and "zskt" in attack:
                    raise InputError(f"{attack} backpropagates through the teacher's logits; it runs with output policy logits only")
                check_teacher(attack, teacher, vc.datafree)  # ZSKT on a feature-less teacher fails before any training
                plan_datafree(attack, datafree_settings(vc), config.dataset)  # and so does a budget too small to run
    budget = config.threat.query_budget
    if budget is not None and any(a not in DATA_FREE_ATTACKS for v in variants.values() for a in v.attacks):
        if budget < config.schedule.batch_size:
            raise InputError(f"query budget {budget} is smaller than one training batch ({config.schedule.batch_size} images)")


def threat_info(config: AuditConfig, runs: list[RunSpec], records: dict[str, RunRecord], test_images: int,
                teacher: nn.Module) -> ThreatInfo:
    policy = OutputPolicy.parse(config.threat.output)
    notes = []
    if any(OutputPolicy.parse(r.output).hard for r in records.values()):
        notes.append("label-only runs: the teacher names a class and nothing else, so their KD term is "
                     "cross-entropy on the teacher's labels at tau 1 (the configured temperature does not apply)")
    spec = getattr(teacher, "spec", None)
    return ThreatInfo(
        output=policy.spec,
        output_description=policy.describe(),
        query_budget=config.threat.query_budget,
        billing=BILLING_RULES[config.threat.billing],
        evaluation_queries=test_images,
        remote=spec.public_dict() if spec is not None and hasattr(spec, "public_dict") else None,
        budget_stopped_runs=sum(1 for r in runs if records[r.key].stopped),
        notes=notes,
    )


def rec_key(rec: RunRecord) -> str:
    return RunSpec(rec.kind, rec.student, rec.seed, rec.variant).key


def _attack_results(config: AuditConfig, attacks_run: tuple[str, ...] | list[str], runs: list[RunSpec],
                    ok: dict[str, RunRecord], scratch: dict[str, AccuracyStats], train_images: int = 0,
                    device_type: str = "cpu") -> list[AttackResult]:
    """Mean/std per (attack, student) over seeds, against that student's scratch baseline."""
    results: list[AttackResult] = []
    for student in config.students:
        if student not in scratch:
            continue  # no baseline: every scratch run diverged (listed in `runs`)
        for attack in attacks_run:
            planned = [r for r in runs if r.kind == attack and r.student == student]
            recs = [ok[r.key] for r in planned if r.key in ok]
            if not recs:
                continue  # every run diverged: nothing to average (listed in `runs`)
            variants = [(attack, [x.test_accuracy for x in recs], [x.fidelity for x in recs])]
            if attack == "skeptical" or attack.endswith("_skeptical"):
                variants.append((f"{attack}_e", [x.exit_accuracies["ensemble"] for x in recs], [x.fidelity_ensemble for x in recs]))
            setting, access = attack_setting(attack, config)
            cost = attack_cost(config, attack, student, recs, train_images, device_type)
            for name, values, fids in variants:
                stats = AccuracyStats.of(values)
                results.append(AttackResult(
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
                    cost=cost,
                ))
    return results


def attack_cost(config: AuditConfig, attack: str, student: str, recs: list[RunRecord], train_images: int,
                device_type: str) -> TheftCost | None:
    """The attack's measured cost per run, extrapolated to the full dataset and schedule (distill/cost.py)."""
    seconds = [max(r.seconds, 1e-6) for r in recs]
    queries = [r.teacher_queries for r in recs]
    try:
        if attack in DATA_FREE_ATTACKS:
            plan = plan_datafree(attack, datafree_settings(config), config.dataset)
            return theft_cost(attack, student, device_type, seconds, queries, None, None, None, config.dataset, True,
                              datafree_iterations=plan.iterations, full_iterations=reference_iterations(attack, config.dataset),
                              fixed_queries=min(plan.checkpoints * plan.selection_samples, min(queries)))
        epochs = max(1, round(statistics.fmean(len(r.val_curve) for r in recs)))  # a budget may have stopped runs early
        full = None if config.dataset in FULL_TRAIN_IMAGES else round(train_images / config.fraction / (1 - config.val_fraction))
        return theft_cost(attack, student, device_type, seconds, queries, train_images,
                          None if full is None else max(full, train_images), epochs, config.dataset, False,
                          billing=config.threat.billing)
    except ValueError:  # e.g. a run with no measurable time: report no extrapolation rather than a wrong one
        return None


def _scratch(config: AuditConfig, runs: list[RunSpec], ok: dict[str, RunRecord],
             kind: str = "scratch") -> tuple[dict[str, AccuracyStats], dict[str, Fidelity | None]]:
    scratch: dict[str, AccuracyStats] = {}
    fid: dict[str, Fidelity | None] = {}
    for student in config.students:
        recs = [ok[r.key] for r in runs if r.kind == kind and r.student == student and r.key in ok]
        if recs:
            scratch[student] = AccuracyStats.of([x.test_accuracy for x in recs])
            fid[student] = Fidelity.mean_of([x.fidelity for x in recs if x.fidelity is not None])
    return scratch, fid


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
    variants = expand_variants(config)
    base_runs = [r for r in runs if r.variant == BASE]
    scratch, scratch_fid = _scratch(config, base_runs, ok)
    ls, ls_fid = _scratch(config, base_runs, ok, "scratch_ls")
    attacks = _attack_results(config, variants[0].attacks, base_runs, ok, scratch, len(splits.x_train), device.type)
    context = Baselines(scratch, ls, teacher_acc, splits.spec.num_classes, len(splits.x_test))
    # every attack run (or every scratch baseline) may have diverged: judge() then says so (best_attack "none")
    leak, protection = judge(attacks, context, setting=describe({}, config), variant=BASE)
    best_attack, best_student = (leak.best.attack, leak.best.student) if leak.best else ("none", config.students[0])
    verdict = leak.verdict

    variant_results = [_variant_result(config, v, runs, ok, (scratch, scratch_fid, ls, ls_fid), splits, device.type, context)
                       for v in variants[1:]]
    summary = Summary(
        delta_acc=delta_acc(attacks, best_student),
        best_attack=best_attack,
        best_student=best_student,
        verdict=verdict,
        students=[StudentSummary(student=s, delta_acc=delta_acc(attacks, s)) for s in config.students],
        verdict_reason=leak.reason,
        seeds_needed=leak.seeds_needed,
        protection=protection.verdict if protection is not None else None,
        protection_detail=protection,
    )
    summary.headline = headline(protection, leak, config.seeds)
    if variant_results:
        _summarise_variants(summary, config, attacks, leak, variant_results)
    best_result = next((a for a in attacks if a.attack == best_attack and a.student == best_student), None)
    summary.theft_cost = summary.worst_case.cost if summary.worst_case is not None else (best_result.cost if best_result else None)
    return Report(
        teacher=TeacherInfo(architecture=config.teacher_arch, sha256=teacher_sha256, accuracy=round(teacher_acc, 3),
                            num_classes=splits.spec.num_classes),
        dataset=DatasetInfo(name=config.dataset, train_size=len(splits.x_train), val_size=len(splits.x_val),
                            test_size=len(splits.x_test), fraction=config.fraction),
        scratch=[ScratchResult(student=s, accuracy=a, fidelity=scratch_fid.get(s)) for s, a in scratch.items()],
        label_smoothing=[ScratchResult(student=s, accuracy=a, fidelity=ls_fid.get(s)) for s, a in ls.items()],
        attacks=attacks,
        summary=summary,
        runs=[records[r.key] for r in runs],
        variants=variant_results,
        sweeps=sweep_tables(config, attacks, variant_results),
        config={**config.model_dump(mode="json"), "split_sha256": splits.split_sha256, "wall_seconds": round(wall_seconds, 1)},
        environment=Environment(
            kdaudit=kdaudit.__version__,
            torch=torch.__version__,
            device=_device_name(device),
        ),
        manifest=build_manifest(config, runs, records, splits, teacher_sha256, device, wall_seconds),
    )


def _variant_result(config: AuditConfig, v: Variant, all_runs: list[RunSpec], ok: dict[str, RunRecord],
                    base: tuple[dict[str, AccuracyStats], dict[str, Fidelity | None], dict[str, AccuracyStats],
                                dict[str, Fidelity | None]],
                    splits: Splits, device_type: str, context: Baselines) -> VariantResult:
    runs = [r for r in all_runs if r.variant == v.name]
    own = "fraction" in v.overrides
    if own:
        baseline_runs = [r for r in all_runs if r.variant == scratch_variant(v)]
        base = (*_scratch(config, baseline_runs, ok), *_scratch(config, baseline_runs, ok, "scratch_ls"))
    scratch, fid, ls, ls_fid = base
    vc = apply_variant(config, v.overrides)
    train_images = round(len(splits.x_train) * vc.fraction / config.fraction)
    attacks = _attack_results(vc, v.attacks, runs, ok, scratch, train_images, device_type)
    words = describe(v.overrides, config)
    leak, protection = judge(attacks, dataclasses.replace(context, scratch=scratch, label_smoothing=ls),
                             setting=words, variant=v.name)
    best_attack, best_student = (leak.best.attack, leak.best.student) if leak.best else ("none", config.students[0])
    return VariantResult(
        name=v.name, axis=v.axis, axes=list(v.tables), settings=v.overrides, description=words,
        scratch=[ScratchResult(student=s, accuracy=a, fidelity=fid.get(s)) for s, a in scratch.items()],
        label_smoothing=[ScratchResult(student=s, accuracy=a, fidelity=ls_fid.get(s)) for s, a in ls.items()],
        attacks=attacks, verdict=leak.verdict, best_attack=best_attack, best_student=best_student,
        protection=protection, verdict_reason=leak.reason, seeds_needed=leak.seeds_needed,
    )


def _summarise_variants(summary: Summary, config: AuditConfig, base_attacks: list[AttackResult], base_leak: Leakage,
                        variants: list[VariantResult]) -> None:
    """Worst case over every setting; the overall verdicts are the weakest setting's (distill/verdicts.py)."""
    base_words = describe({}, config)
    candidates = [(BASE, base_words, base_leak.verdict, a) for a in base_attacks]
    candidates += [(v.name, v.description, v.verdict, a) for v in variants for a in v.attacks]
    if not candidates:
        return
    name, words, verdict, a = max(candidates, key=lambda c: (c[3].accuracy.mean, c[3].delta_base))
    summary.worst_case = WorstCase(variant=name, description=words, attack=a.attack, student=a.student, accuracy=a.accuracy,
                                   delta_base=a.delta_base, teacher_queries=a.teacher_queries, verdict=verdict,  # type: ignore[arg-type]
                                   cost=a.cost)
    # a setting whose every run diverged has no result: it is listed (verdict inconclusive) but decides nothing
    settings = [(base_words, base_leak)]
    settings += [(v.description, Leakage(v.verdict, _best_of(v), v.verdict_reason or "", v.seeds_needed)) for v in variants if v.attacks]
    words_l, leak = max(settings, key=lambda t: (VERDICT_SEVERITY[t[1].verdict],
                                                 t[1].best.delta_base if t[1].best is not None else float("-inf")))
    summary.base_verdict = base_leak.verdict
    summary.verdict = leak.verdict
    summary.verdict_reason, summary.seeds_needed = leak.reason, leak.seeds_needed
    protections = [p for p in [summary.protection_detail] + [v.protection for v in variants] if p is not None]
    protection = weakest(protections) if protections else None
    summary.protection_detail = protection
    summary.protection = protection.verdict if protection is not None else None
    strongest = (f"the strongest thief overall is the {verdict_words(a.attack)} on {a.student} under {words}: "
                 f"{a.accuracy.mean:.2f}% ± {a.accuracy.std:.2f}, {a.delta_base:+.2f} pts vs scratch, "
                 f"{a.teacher_queries:,} teacher queries")
    summary.headline = headline(protection, leak, config.seeds,
                                where=f" in the weakest setting ({protection.setting})" if protection is not None else "",
                                leak_where=f" in {words_l}", worst_case=strongest)


def _best_of(v: VariantResult) -> AttackResult | None:
    return next((a for a in v.attacks if a.attack == v.best_attack and a.student == v.best_student), None)


def sweep_tables(config: AuditConfig, base_attacks: list[AttackResult], variants: list[VariantResult]) -> list[SweepTable]:
    """One table per swept knob (and one for a grid or a panel), base value included for reference."""
    base = {"output": config.threat.output, "fraction": config.fraction, "temperature": config.kd.temperature,
            "ac_stage": config.skeptical.ac_stage or DEFAULT_AC_STAGE}
    tables: list[SweepTable] = []
    axes = list(dict.fromkeys(a for v in variants for a in (v.axes or [v.axis])))
    for axis in axes:
        members = [v for v in variants if axis in (v.axes or [v.axis])]
        changed = {a.attack for v in members for a in v.attacks}
        rows = [SweepRow(value="base" if axis in ("grid", "panel") else str(base[axis]), attack=a.attack, student=a.student,
                         accuracy=a.accuracy, delta_base=a.delta_base, teacher_queries=a.teacher_queries)
                for a in base_attacks if a.attack in changed]
        for v in members:
            value = v.name if axis in ("grid", "panel") else str(v.settings[axis])
            rows += [SweepRow(value=value, attack=a.attack, student=a.student, accuracy=a.accuracy,
                              delta_base=a.delta_base, teacher_queries=a.teacher_queries) for a in v.attacks]
        tables.append(SweepTable(axis=axis, base_value="base" if axis in ("grid", "panel") else str(base[axis]), rows=rows))
    if len(config.students) > 1 and base_attacks:
        rows = [SweepRow(value=a.student, attack=a.attack, student=a.student, accuracy=a.accuracy, delta_base=a.delta_base,
                         teacher_queries=a.teacher_queries) for a in base_attacks]
        tables.append(SweepTable(axis="student", base_value=config.students[0], rows=rows))
    return tables


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
    if any(a in DATA_FREE_ATTACKS for v in expand_variants(config) for a in v.attacks):
        rules["data_free"] = DATAFREE_SELECTION_RULE
        rules["data_free_divergence"] = DATAFREE_WATCHDOG_RULE
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
