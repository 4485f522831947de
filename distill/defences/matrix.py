"""The defence x attack matrix (`kdaudit.defences/v1`) and how it is assembled from audit reports.

One row per defence: its parameters, what it costs an honest user (utility.py), every attack's
student accuracy over seeds with its 95% interval and Delta_base against the scratch student,
the leakage and protection verdicts of distill/verdicts.py over that row's attacks, and the
worst case (the strongest attack's mean). The summary names the Pareto front and one
recommendation under a stated rule (pareto.py). Numbers come from `run_audit` reports: one
audit per teacher (the owner's, each nasty teacher), its serving policies swept as output
policies, so every row of one teacher shares its scratch baseline and its cohorts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from kdaudit.distill.defences.pareto import Point, pareto_front, recommend, recommendation_rule
from kdaudit.distill.defences.registry import Defence, Stage
from kdaudit.distill.intervals import INTERVAL_METHOD, compare
from kdaudit.distill.report import PROTECTION_RULE, VERDICT_RULE, AccuracyStats, AttackResult, Report
from kdaudit.distill.verdicts import Baselines, judge

SCHEMA = "kdaudit.defences/v1"
#: attacks a label-only thief runs: normal KD / the skeptical student on the served answers' top class
LABEL_ONLY_PREFIX = "label_only_"
#: a defence that may move the top class still leaves a label-only thief its argmax; when it moved
#: the top class on at most this share of test answers (percent), that thief's students are the
#: `label` setting's (it reads the same labels on all but that share)
LABEL_ONLY_MAX_CHANGED_PCT = 1.0
LABEL_ONLY_RULE = (
    "label_only_* = the same attack trained on the endpoint's top class alone (a thief who ignores the scores); "
    "listed for every defence that serves more than a label (for `label` it is the row's own normal_kd / skeptical). "
    "For defences that may move the top class (rsig, noise) the label-only students are the `label` setting's when "
    f"the defence moved the top class on at most {LABEL_ONLY_MAX_CHANGED_PCT:g}% of test answers; beyond that the "
    "label-only thief is not measured, the row's worst case is a lower bound and the row is not recommended"
)


#: the utility measurement's rules (measured in distill/defences/utility.py; torch-free here, the schema)
ECE_BINS = 15
ECE_RULE = (f"expected calibration error over {ECE_BINS} equal-width confidence bins on (0, 1]: sum over bins of "
            "(share of test images in the bin) x |accuracy - mean confidence|, in points; confidence = the top score "
            "the endpoint returns (probabilities as sent, logits through a softmax); none for label-only answers")


class Utility(BaseModel):
    """The honest user's view of one defence (test split, percent / points)."""

    top1: float = Field(description="Top-1 accuracy of the served answers, percent.")
    top1_drop: float = Field(description="Undefended teacher's top-1 minus this, points (the utility lost).")
    top5: float | None = Field(description="Top-5 accuracy, percent; None when fewer than 5 classes are ranked.")
    ece: float | None = Field(description="Expected calibration error, points (ECE_RULE); None for label-only answers.")
    argmax_changed: float = Field(description="Share of test answers whose top class differs from the undefended teacher's, percent.")


class AttackCell(BaseModel):
    attack: str
    student: str
    accuracy: AccuracyStats = Field(description="Test accuracy over seeds, percent, with its 95% t-interval.")
    delta_base: float = Field(description="Mean minus the scratch student's mean, points.")
    vs_scratch: str | None = Field(default=None, description="higher / lower / unsettled against scratch (Welch interval).")
    teacher_queries: int
    source: str = Field(description="Audit setting the runs came from (teacher, output policy).")


class DefenceRow(BaseModel):
    name: str
    stage: Stage
    description: str
    parameters: dict[str, Any]
    teacher: str = Field(description="'owner' or 'nasty@omega': which teacher serves the answers.")
    utility: Utility
    attacks: list[AttackCell]
    worst_case: AttackCell | None = Field(description="The attack whose student scores highest (the owner's worst case).")
    worst_case_complete: bool = Field(default=True, description="False when an attack of the panel (the label-only "
                                      "thief) was not measured: the worst case is then a lower bound (LABEL_ONLY_RULE).")
    leakage: str = Field(description="leaks / resists / inconclusive over this row's attacks (VERDICT_RULE).")
    protection: str | None = Field(description="none / holds / broken / inconclusive (PROTECTION_RULE).")
    verdict_reason: str
    notes: list[str] = Field(default_factory=list)


class TeacherEntry(BaseModel):
    key: str
    sha256: str
    accuracy: float = Field(description="Test accuracy with full logits, percent.")
    recipe: dict[str, Any] | None = Field(default=None, description="Nasty teachers: protect's recipe as used (omega, tau, "
                                          "schedule, late-window checkpoint rule) and the epoch chosen.")
    path: str | None = None


class Recommendation(BaseModel):
    defence: str | None
    rule: str
    reason: str


class DefenceMatrix(BaseModel):
    schema_: str = Field(default=SCHEMA, alias="schema")
    config: dict[str, Any]
    teachers: list[TeacherEntry]
    rows: list[DefenceRow]
    pareto_front: list[str] = Field(description="Defences no other beats on both utility lost and worst case.")
    recommendation: Recommendation
    rules: dict[str, str]
    audits: list[dict[str, Any]] = Field(default_factory=list, description="Per audit: teacher, outputs, split sha256, "
                                         "git commit, seeds, wall seconds (provenance of every number).")
    environment: dict[str, Any] = Field(default_factory=dict)

    model_config = {"populate_by_name": True}

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


def attacks_for(defence: Defence, reports: list[Report], argmax_changed: float = 0.0) -> tuple[list[AttackResult], list[str], bool]:
    """The row's attack results (copies) from its teacher's audit(s), notes on what is left out, and
    whether every attack of the panel was measured (False: the worst case is only a lower bound).

    `argmax_changed`: the share of test answers (percent) whose top class the defence moved (utility.py)."""
    serving = defence.serving
    own = _setting(reports, serving)
    notes: list[str] = []
    if own is None:
        raise ValueError(f"no audit setting for output {serving} (defence {defence.name})")
    cells = [a.model_copy(deep=True) for a in own]
    family, policy = defence.family, defence.policy
    if policy.kind == "label":
        return cells, notes, True
    # top1 too: a hard-label thief trains at tau 1 on CE, not KD on a one-hot target
    if family.keeps_argmax or argmax_changed <= LABEL_ONLY_MAX_CHANGED_PCT:
        label = _setting(reports, "label") or []
        cells += [a.model_copy(deep=True, update={"attack": LABEL_ONLY_PREFIX + a.attack}) for a in label]
        if not family.keeps_argmax:
            notes.append(f"label-only thief: the `label` setting's students (this defence moved the top class on "
                         f"{argmax_changed:.2f}% of test answers, so a thief keeping the top class sees the teacher's labels)")
        return cells, notes, bool(label)
    notes.append(f"no label-only attack measured: this defence moved the top class on {argmax_changed:.2f}% of test "
                 "answers; the worst case is a lower bound and the row is not recommended")
    return cells, notes, False


def _setting(reports: list[Report], output: str) -> list[AttackResult] | None:
    for r in reports:
        if output == "logits":
            return r.attacks
        for v in r.variants:
            if v.settings.get("output") == output:
                return v.attacks
    return None


def build_row(defence: Defence, reports: list[Report], utility: Utility) -> DefenceRow:
    attacks, notes, complete = attacks_for(defence, reports, utility.argmax_changed)
    base = reports[0]
    context = Baselines(scratch={s.student: s.accuracy for s in base.scratch},
                        label_smoothing={s.student: s.accuracy for s in base.label_smoothing},
                        teacher_accuracy=base.teacher.accuracy, num_classes=base.teacher.num_classes,
                        test_size=base.dataset.test_size)
    leak, protection = judge(attacks, context, setting=defence.describe(), variant=defence.name)
    source = f"{defence.teacher_key}, output {defence.serving}"
    cells = [AttackCell(attack=a.attack, student=a.student, accuracy=a.accuracy, delta_base=a.delta_base,
                        vs_scratch=a.vs_scratch.outcome if a.vs_scratch else None, teacher_queries=a.teacher_queries,
                        source=source if not a.attack.startswith(LABEL_ONLY_PREFIX) else f"{defence.teacher_key}, output label")
             for a in attacks]
    worst = max(cells, key=lambda c: (c.accuracy.mean, c.delta_base), default=None)
    return DefenceRow(
        name=defence.name, stage=defence.stage, description=defence.describe(), parameters=defence.parameters(),
        teacher=defence.teacher_key, utility=utility, attacks=cells, worst_case=worst, leakage=leak.verdict,
        protection=protection.verdict if protection is not None else None,
        verdict_reason=leak.reason + (f"; protection: {protection.reason}" if protection is not None else ""), notes=notes,
        worst_case_complete=complete,
    )


def summarise(rows: list[DefenceRow], max_loss: float) -> tuple[list[str], Recommendation]:
    # a row whose worst case is only a lower bound (label-only thief not measured) is neither on the front nor recommended
    none = next((r for r in rows if r.name == "none"), None)
    points = [Point(r.name, r.utility.top1_drop, r.worst_case.accuracy.mean, _calibration_cost(r, none))
              for r in rows if r.worst_case is not None and r.worst_case_complete]
    front = pareto_front(points)
    best = recommend(points, max_loss)
    rule = recommendation_rule(max_loss)
    if best is None:
        return front, Recommendation(defence=None, rule=rule, reason=f"no defence loses at most {max_loss:g} pt of top-1")
    row = next(r for r in rows if r.name == best.name)
    reason = (f"{best.name}: the strongest thief ({row.worst_case.attack}) reaches {best.worst_case:.2f}% "  # type: ignore[union-attr]
              f"while honest users lose {best.utility_lost:+.2f} pt of top-1")
    if none is not None and none is not row and none.worst_case is not None:
        u0, u = none.utility, row.utility
        if u0.ece is not None and u.ece is not None and u.ece != u0.ece:
            reason += f" and calibration moves from ECE {u0.ece:.1f} to {u.ece:.1f} pts"
        reason += "; " + _versus_none(row.worst_case, none.worst_case)  # type: ignore[arg-type]
    return front, Recommendation(defence=best.name, rule=rule, reason=reason)


def _calibration_cost(row: DefenceRow, none: DefenceRow | None) -> float:
    """ECE added over no defence, points (0 when either has none): the recommendation's tie-break."""
    if none is None or row.utility.ece is None or none.utility.ece is None:
        return 0.0
    return max(0.0, row.utility.ece - none.utility.ece)


def _versus_none(worst: AttackCell, none_worst: AttackCell) -> str:
    """Is the recommended defence's worst case settled below the undefended one's? (Welch, distill/intervals.py)"""
    c = compare(worst.attack, worst.accuracy.runs, none_worst.attack, none_worst.accuracy.runs, worst.student)
    settled = "settled" if c.outcome == "lower" else "NOT settled: within seed noise of no defence"
    return f"against no defence ({none_worst.accuracy.mean:.2f}%) that is {c.text()}, {settled}"


def rules(max_loss: float) -> dict[str, str]:
    return {"utility": ECE_RULE + "; top-1 drop = undefended teacher (owner's model, full logits) minus the served top-1; "
            "top-5 only where the answer ranks >= 5 classes", "intervals": INTERVAL_METHOD, "leakage": VERDICT_RULE,
            "protection": PROTECTION_RULE, "label_only": LABEL_ONLY_RULE, "recommendation": recommendation_rule(max_loss),
            "pareto": "a defence is on the front when no other has both utility lost <= and worst case <=, one strictly "
                      "(rows whose worst case is a lower bound are left out)",
            "worst_case": "the highest mean test accuracy over the row's attacks and students (skeptical_e included)",
            "splits": "students pick checkpoints on the validation split; every number here is on the test split"}
