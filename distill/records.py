"""A trained run as the report records it: its setting, accuracies, fidelity and curves.

Measured once per run, when it finishes (distill/runner.py); the report is later assembled
from these records alone (distill/assemble.py), so a split audit's parts can be joined.
"""

from __future__ import annotations

import torch

from kdaudit.distill.attacks import find_attack
from kdaudit.distill.budget_curve import evaluate_curve
from kdaudit.distill.config import AuditConfig
from kdaudit.distill.data import Splits
from kdaudit.distill.datafree import access_of
from kdaudit.distill.fidelity import fidelity_metrics
from kdaudit.distill.planning.runs import BASE, RunSpec
from kdaudit.distill.report import Retry, RunRecord
from kdaudit.distill.train import MemberResult, accuracy, predict
from kdaudit.models.multi_exit import MultiExitNet


def attack_setting(kind: str, config: AuditConfig | None = None) -> tuple[str | None, str | None]:
    """(setting, access) of a run kind: data-free attacks by family; KD variants use output vectors only."""
    spec = find_attack(kind)
    if spec is None:  # a baseline
        return None, None
    if spec.data_free:  # DFAD's access depends on its settings (distill/datafree.py `access_of`)
        return spec.report_setting, access_of(kind, config.datafree if config else None)
    return spec.report_setting, spec.report_access


def run_record(result: MemberResult, splits: Splits, teacher_logits: torch.Tensor | None = None,
               retries: list[Retry] | None = None, spec: RunSpec | None = None, output: str = "logits") -> RunRecord:
    """Measure a trained member on the test split: the run's record in the report."""
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
        loss_terms=list(getattr(result, "loss_curve", None) or []),
    )


