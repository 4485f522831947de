"""What the engine needs to know about one attack, written once (issue "One house that shows its architecture").

Every place that used to switch on an attack's name (config validation, the runner, the
trainers, the variants, the cost and quota estimates, the API, the HTML report) asks an
`AttackSpec` instead, so a new attack is one new module in this package. Deliberately
torch-free: the API process, the config schema and the planning code import it, and the
trainer is named as a string that only `load_trainer` resolves.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

Setting = Literal["data-available", "data-free"]
Family = Literal["kd", "skeptical", "zskt", "dfad", "dfme"]
Access = Literal["black-box", "grey-box", "white-box"]
StudentKind = Literal["single-exit", "multi-exit"]
#: the skeptical student's terms after its teacher-facing ones (Kundu et al. 2021): self-distillation
#: of the deep exit from the final one, then cross-entropy on the final exit
SKEPTICAL_TAIL = ("self_distill", "ce")


@dataclass(frozen=True)
class AttackSpec:
    """One attack: what it is called, what it needs of the teacher, what it trains."""

    name: str
    #: human phrase for tables and the HTML report
    label: str
    setting: Setting
    family: Family
    #: a skeptical (multi-exit, self-distilling) student; the report adds its exit-ensemble readout `<name>_e`
    skeptical: bool
    #: what it needs of the teacher by default (DFAD becomes grey-box with `dfad_teacher_gradient`: distill/datafree.py)
    access: Access
    #: False = it can run on a label-only endpoint (its KD term becomes CE on the teacher's labels)
    needs_scores: bool
    student_kind: StudentKind
    #: names of its loss terms, in the order they are added into the total
    loss_terms: tuple[str, ...]
    #: "module:callable" of the code that trains it, resolved lazily so this package never imports torch
    trainer: str
    #: it backpropagates through the teacher's raw logits, so only output policy `logits` lets it run
    needs_logits: bool = False
    #: why a label-only endpoint cannot run it, when that deserves more than "needs a score for every class"
    label_only_reason: str | None = None

    @property
    def data_free(self) -> bool:
        """It never sees the thief's data: a generator synthesises its queries."""
        return self.setting == "data-free"

    @property
    def report_setting(self) -> str:
        """The setting as the report's JSON spells it (`data_available` / `data_free`)."""
        return self.setting.replace("-", "_")

    @property
    def report_access(self) -> str:
        """The default access as the report's JSON spells it (`black_box` / `grey_box`)."""
        return self.access.replace("-", "_")

    def load_trainer(self) -> Callable[..., Any]:
        """Import the trainer named by `trainer` (this pulls in torch)."""
        module, _, attr = self.trainer.partition(":")
        return getattr(importlib.import_module(module), attr)


def skeptical_form(base: AttackSpec, *, name: str, label: str, teacher_terms: tuple[str, ...],
                   family: Family | None = None) -> AttackSpec:
    """The skeptical student of an attack: the same teacher access, a multi-exit student whose
    auxiliary exit takes `teacher_terms`, then self-distillation and cross-entropy. The family
    stays the base's (a data-free skeptical student is still ZSKT/DFAD/DFME) unless given."""
    return replace(base, name=name, label=label, family=family or base.family, skeptical=True,
                   student_kind="multi-exit", loss_terms=(*teacher_terms, *SKEPTICAL_TAIL))
