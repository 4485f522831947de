"""Assemble the report from finished runs' records: means per attack, verdicts, variants, sweeps.

Pure bookkeeping over `RunRecord`s (distill/records.py): nothing here trains or queries a
teacher, so the worker that finds every part of a split audit done can assemble the report.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch
from torch import nn

import kdaudit
from kdaudit.distill.access import OutputPolicy
from kdaudit.distill.attacks import attack_spec
from kdaudit.distill.config import AuditConfig
from kdaudit.distill.cost import FULL_TRAIN_IMAGES, TheftCost, theft_cost
from kdaudit.distill.data import Splits
from kdaudit.distill.datafree import plan_datafree, reference_iterations
from kdaudit.distill.manifest import build_manifest, device_name
from kdaudit.distill.oracle import BILLING_RULES
from kdaudit.distill.planning.runs import BASE, RunSpec, scratch_variant
from kdaudit.distill.planning.sizes import datafree_settings
from kdaudit.distill.records import attack_setting
from kdaudit.distill.report import (
    VERDICT_SEVERITY,
    AccuracyStats,
    AttackResult,
    DatasetInfo,
    Environment,
    Fidelity,
    Report,
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
from kdaudit.distill.variants import DEFAULT_AC_STAGE, Variant, describe, expand_variants
from kdaudit.distill.variants import apply as apply_variant
from kdaudit.distill.verdicts import Baselines, Leakage, headline, judge, weakest
from kdaudit.distill.verdicts import words as verdict_words


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
            if attack_spec(attack).skeptical:  # a multi-exit student: its exit ensemble is reported too
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
        if attack_spec(attack).data_free:
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
            device=device_name(device),
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
    vc = apply_variant(config, v.overrides, v.attacks)
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


