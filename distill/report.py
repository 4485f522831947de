"""The `kdaudit.report/v1` schema and the verdict rule.

Accuracies are percentages on the *test* split; the test split is never used to choose a
checkpoint (that is what the validation split is for), so the numbers here are honest
held-out estimates. The verdict rule is written into every report so a reader never has
to guess how "leaks" was decided.
"""

from __future__ import annotations

import statistics
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictInt

from kdaudit.distill.budget_table import BudgetPoint, BudgetSummary
from kdaudit.distill.cost import TheftCost
from kdaudit.distill.intervals import INTERVAL_METHOD, Comparison, Interval, mean_interval
from kdaudit.distill.intervals import MIN_EFFECT_PTS as EFFECT_PTS

SCHEMA = "kdaudit.report/v1"
Verdict = Literal["leaks", "resists", "inconclusive"]
Setting = Literal["data_available", "data_free"]
Access = Literal["white_box", "grey_box", "black_box"]
#: compare.py's bar for "changed beyond seed noise" (the verdicts' own bar is intervals.MIN_EFFECT_PTS)
MIN_EFFECT_PTS = 0.5
Protection = Literal["none", "holds", "broken", "inconclusive"]
VERDICT_RULE = (
    f"{INTERVAL_METHOD}. A comparison is settled when its interval excludes zero and |difference| >= {EFFECT_PTS:g} pts. "
    "The teacher LEAKS if the best attack's student is settled above the scratch student and above the label-smoothing "
    "student (real knowledge transfer, not regularisation); it RESISTS if every attack's student is settled below scratch; "
    "otherwise INCONCLUSIVE, with the seeds that would likely settle it. One seed, a teacher at chance or a scratch student "
    "at chance never gives a conclusive verdict. Delta_acc = max(skeptical, skeptical_e) - normal_kd for the same student."
)
PROTECTION_RULE = (
    "Protection (does the teacher resist distillation, and does that survive a thief who knows the skeptical student?), "
    "with the same intervals: NONE if normal KD is not settled below scratch and either its mean is not below scratch "
    f"or its interval rules out a drop of more than {EFFECT_PTS:g} pt; HOLDS if normal KD is settled below scratch and so is every other attack; BROKEN if normal KD "
    "is settled below scratch but some attack is not (it recovers to scratch level or beyond) and is settled above normal "
    "KD; otherwise INCONCLUSIVE. Over several settings or students the weakest one counts (none > broken > inconclusive > holds)."
)


class AccuracyStats(BaseModel):
    mean: float
    std: float
    runs: list[float]
    ci95: Interval | None = Field(default=None, description="95% Student t-interval of the mean over seeds; None with one seed.")

    @classmethod
    def of(cls, values: list[float]) -> AccuracyStats:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(mean=round(statistics.fmean(values), 3), std=round(std, 3), runs=[round(v, 3) for v in values],
                   ci95=mean_interval(values))


class TeacherInfo(BaseModel):
    architecture: str | None = Field(description="Our zoo's architecture; None for a black box (ONNX, remote).")
    sha256: str
    accuracy: float = Field(description="Teacher test accuracy, percent (under its declared preprocessing).")
    num_classes: int
    format: str | None = Field(default=None, description="weights (safetensors / state_dict), onnx or remote.")
    access: Access | None = Field(default=None, description="What kdaudit can see of the teacher: white_box weights or a black_box.")
    preprocessing: dict[str, Any] | None = Field(default=None, description="The teacher's input contract as applied "
                                                 "(distill/preprocess.py): preset, pixel_scale, mean, std.")
    expected_accuracy: float | None = Field(default=None, description="The owner's declared test accuracy, percent.")
    sanity: dict[str, Any] | None = Field(default=None, description="The teacher sanity gate (distill/gate.py): "
                                          "passed, or forced past a failure, and why.")


class DatasetInfo(BaseModel):
    name: str
    train_size: int = Field(description="Training images the thief used (after --fraction).")
    val_size: int
    test_size: int
    fraction: float
    class_names: list[str] | None = Field(default=None, description="Label order, where the dataset names its classes (image folders).")
    skipped_files: int = Field(default=0, description="Image files that could not be read and were left out (image folders).")


class Fidelity(BaseModel):
    """How closely a student copies the teacher on the test split (percent unless noted).

    `mistake_agreement` is the strongest sign of copying rather than learning: of the test
    images the teacher gets wrong, the share where the student predicts the *same wrong*
    class. `class_gap` is teacher minus student accuracy per class (points); `kl` is
    KL(teacher || student) at temperature 1, nats per image (batchmean). Test images whose
    teacher outputs are not finite are left out (`images` counts those used).
    """

    agreement: float = Field(description="Top-1 agreement with the teacher, percent.")
    mistake_agreement: float | None = Field(description="Same wrong class on the teacher's mistakes, percent; None if the teacher makes none.")
    teacher_mistakes: int = Field(description="Test images the teacher gets wrong (the denominator of mistake_agreement).")
    class_gap: list[float] = Field(description="Per class: teacher accuracy minus student accuracy, points.")
    max_class_gap: float = Field(description="Largest per-class gap, points.")
    kl: float | None = Field(description="KL(teacher || student) at tau 1, nats per image; None if not finite.")
    images: int = 0

    @classmethod
    def mean_of(cls, items: list[Fidelity]) -> Fidelity | None:
        """Mean over seeds (per field; per class for class_gap)."""
        if not items:
            return None

        def avg(values: list[float | None]) -> float | None:
            vs = [v for v in values if v is not None]
            return round(statistics.fmean(vs), 3) if vs else None

        gaps = [round(statistics.fmean(g), 3) for g in zip(*(f.class_gap for f in items), strict=True)]
        return cls(
            agreement=avg([f.agreement for f in items]) or 0.0,
            mistake_agreement=avg([f.mistake_agreement for f in items]),
            teacher_mistakes=items[0].teacher_mistakes,
            class_gap=gaps,
            max_class_gap=avg([f.max_class_gap for f in items]) or 0.0,
            kl=avg([f.kl for f in items]),
            images=items[0].images,
        )


class ScratchResult(BaseModel):
    student: str
    accuracy: AccuracyStats
    fidelity: Fidelity | None = Field(default=None, description="Mean over seeds: the baseline for a student that never saw the teacher.")


class AttackResult(BaseModel):
    attack: str
    student: str
    accuracy: AccuracyStats
    delta_base: float = Field(description="Student mean minus scratch mean, percentage points.")
    teacher_queries: int = Field(description="Billed teacher queries (images), summed over the seeds' runs that count "
                                 "(diverged runs, excluded from the means, are left out here too; their queries are in `runs`).")
    seconds: float
    setting: Setting | None = Field(default=None, description="data_available (the thief has task images) or data_free.")
    access: Access | None = Field(default=None, description="What the attack needs from the teacher: output vectors (black_box), also activations (grey_box), or weights (white_box).")
    fidelity: Fidelity | None = Field(default=None, description="Mean over the seeds' runs (ensemble exit for *_e variants).")
    excluded_runs: int = Field(default=0, description="Runs of this attack that diverged even after retries; left out of every number here.")
    cost: TheftCost | None = Field(default=None, description="Measured cost per run and its extrapolation to a full-scale attack (distill/cost.py).")
    vs_scratch: Comparison | None = Field(default=None, description="This student minus the scratch student, with its Welch interval.")
    vs_label_smoothing: Comparison | None = Field(default=None, description="This student minus the label-smoothing student.")


class Retry(BaseModel):
    """One retry by the divergence watchdog: why the previous attempt failed, what changed."""

    reason: str
    change: str


class RunRecord(BaseModel):
    """One trained network (one attack x student x seed), with its learning curve."""

    kind: str
    student: str
    seed: int
    test_accuracy: float
    exit_accuracies: dict[str, float] = Field(default_factory=dict)
    best_epoch: int
    val_curve: list[float]
    teacher_queries: int
    seconds: float
    setting: Setting | None = None
    access: Access | None = None
    selection: str | None = Field(default=None, description="How the checkpoint was chosen, when not by validation accuracy.")
    fidelity: Fidelity | None = Field(default=None, description="Final exit vs the teacher on the test split.")
    fidelity_ensemble: Fidelity | None = Field(default=None, description="Multi-exit students: the exits' ensemble vs the teacher.")
    status: Literal["ok", "diverged"] = Field(default="ok", description="diverged: still NaN/inf, stuck at chance or (data-free) with a collapsed generator after every retry; excluded from all means.")
    retries: list[Retry] = Field(default_factory=list, description="Every retry of this run by the divergence watchdog.")
    diverged_reason: str | None = Field(default=None, description="Why the last attempt still failed (status diverged only).")
    variant: str = Field(default="base", description="The audited setting this run belongs to (distill/variants.py).")
    output: str = Field(default="logits", description="Output policy the thief saw (distill/access.py).")
    stopped: str | None = Field(default=None, description="Why training ended before its schedule (the query budget ran out).")
    budget_curve: list[BudgetPoint] = Field(default_factory=list, description="Runs that query the teacher: test accuracy vs "
                                            "teacher queries, from this run's checkpoints or epochs (distill/budget_curve.py).")
    loss_terms: list[dict[str, float | None]] = Field(
        default_factory=list, description="Data-available runs: per epoch trained, the mean of each named loss term "
        "over its batches (the attack's `loss_terms`, distill/attacks/; null where not finite).")


class ProtectionDetail(BaseModel):
    """The protection verdict for one setting (or overall) and the comparisons behind it (PROTECTION_RULE)."""

    verdict: Protection
    student: str | None = Field(default=None, description="The student the verdict is about (the weakest, with several).")
    setting: str | None = Field(default=None, description="The setting in words (with variants: the weakest setting).")
    variant: str | None = Field(default=None, description="The setting's name (base or a variant).")
    scratch_accuracy: float | None = Field(default=None, description="That student's scratch mean, percent.")
    normal_kd_accuracy: float | None = Field(default=None, description="Its normal-KD mean, percent.")
    normal_kd_vs_scratch: Comparison | None = None
    attack: str | None = Field(default=None, description="broken: the attack that breaks it; holds/inconclusive: the strongest attack.")
    attack_accuracy: float | None = Field(default=None, description="That attack's mean test accuracy, percent.")
    attack_vs_normal_kd: Comparison | None = None
    attack_vs_scratch: Comparison | None = None
    seeds_needed: int | None = Field(default=None, description="Inconclusive: seeds per student that would likely settle it.")
    reason: str = Field(description="Why, in words.")


class VariantResult(BaseModel):
    """One audited setting besides the base one (a sweep point or a panel entry)."""

    name: str = Field(description="e.g. output=top5, fraction=0.1, temperature=20, ac_stage=1 (comma-joined in a grid).")
    axis: str = Field(description="The sweep table it belongs to: output, fraction, temperature, ac_stage, grid or panel.")
    axes: list[str] = Field(default_factory=list, description="Every table it appears in (a panel entry may also be a sweep point).")
    settings: dict[str, Any] = Field(description="The knobs changed from the base setting.")
    description: str = Field(description="The setting in words.")
    scratch: list[ScratchResult] = Field(description="The from-scratch baseline used (its own when the data fraction changes).")
    attacks: list[AttackResult]
    verdict: Verdict
    best_attack: str
    best_student: str
    label_smoothing: list[ScratchResult] = Field(default_factory=list, description="The label-smoothing baseline used.")
    protection: ProtectionDetail | None = None
    verdict_reason: str | None = None
    seeds_needed: int | None = None


class SweepRow(BaseModel):
    value: str
    attack: str
    student: str
    accuracy: AccuracyStats
    delta_base: float
    teacher_queries: int


class SweepTable(BaseModel):
    """One knob's effect: every attack it changes, at the base value and each swept value."""

    axis: str
    base_value: str
    rows: list[SweepRow]


class WorstCase(BaseModel):
    """The strongest student over every audited setting: the owner's worst case.

    Strongest = highest mean test accuracy (ties: larger Delta_base), across students and data
    fractions: what the best-equipped thief in the audit walks away with. Each setting's gain
    over its own scratch baseline is its `delta_base`."""

    variant: str
    description: str
    attack: str
    student: str
    accuracy: AccuracyStats
    delta_base: float
    teacher_queries: int
    verdict: Verdict = Field(description="The verdict of that setting.")
    cost: TheftCost | None = Field(default=None, description="What this strongest attack would cost at full scale.")


class ThreatInfo(BaseModel):
    """The threat model the base setting assumed, and how queries were billed."""

    output: str
    output_description: str
    query_budget: int | None = Field(description="Billed teacher queries allowed per run (None: no cap).")
    billing: str = Field(description="The billing rule, in words.")
    evaluation_queries: int = Field(description="Test images the auditor sends the teacher per evaluation pass (accuracy, fidelity); "
                                    "no thief pays for these. An audit split across workers makes one pass per part.")
    remote: dict[str, Any] | None = Field(default=None, description="The remote teacher endpoint (URL, response kind), when there is one; never its headers.")
    budget_stopped_runs: int = Field(default=0, description="Runs whose training ended early because the budget ran out (each says where in `runs`).")
    notes: list[str] = Field(default_factory=list)


class StudentSummary(BaseModel):
    student: str
    delta_acc: float | None = None


class Summary(BaseModel):
    delta_acc: float | None = Field(description="Delta_acc for the best attack's student (None without both attacks).")
    best_attack: str
    best_student: str
    verdict: Verdict
    rule: str = VERDICT_RULE
    students: list[StudentSummary] = Field(default_factory=list)
    worst_case: WorstCase | None = Field(default=None, description="Strongest student over the base setting and every variant.")
    headline: str | None = Field(default=None, description="One sentence: the overall verdict and the weakest setting.")
    theft_cost: TheftCost | None = Field(default=None, description="Cost of the best attack (the worst case's, with variants) "
                                         "extrapolated to the full dataset and schedule; assumptions inside.")
    base_verdict: Verdict | None = Field(default=None, description="The base setting's own verdict, when variants were audited "
                                         "(`verdict` is then the worst over all settings).")
    verdict_reason: str | None = Field(default=None, description="Why the leakage verdict is what it is, with the intervals.")
    seeds_needed: int | None = Field(default=None, description="Leakage inconclusive: seeds per student that would likely settle it.")
    protection: Protection | None = Field(default=None, description="none / holds / broken / inconclusive (PROTECTION_RULE); "
                                          "overall = the weakest setting's. None without a normal_kd attack.")
    protection_detail: ProtectionDetail | None = None
    protection_rule: str = PROTECTION_RULE


class Environment(BaseModel):
    kdaudit: str
    torch: str
    device: str


class Manifest(BaseModel):
    """Provenance: everything needed to trace a report back to its inputs and re-run it.

    Two audits with equal manifests (`identity()`, i.e. all but `timing`) give equal numbers
    on CPU (tested). `timing` is wall time and per-run seconds, which vary between runs.
    """

    teacher_sha256: str
    split_sha256: str
    config: dict[str, Any] = Field(description="The fully resolved AuditConfig.")
    kdaudit_version: str
    git_commit: str | None = Field(default=None, description="`git rev-parse HEAD` of kdaudit's source tree, when it is a git checkout.")
    torch: str
    cuda: str | None = None
    device: str
    seeds: list[StrictInt]
    selection: dict[str, str] = Field(description="How every number was selected: which split, which epochs.")
    timing: dict[str, Any] = Field(default_factory=dict, description="wall_seconds and per-run seconds (not part of the identity).")

    def identity(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"timing"})


class Report(BaseModel):
    schema_: str = Field(default=SCHEMA, alias="schema")
    teacher: TeacherInfo
    dataset: DatasetInfo
    scratch: list[ScratchResult]
    label_smoothing: list[ScratchResult] = Field(default_factory=list, description="The same student trained on the same data "
                                                 "with label smoothing, no teacher: the regularisation baseline.")
    attacks: list[AttackResult]
    summary: Summary
    runs: list[RunRecord] = Field(default_factory=list)
    variants: list[VariantResult] = Field(default_factory=list, description="Settings audited besides the base one.")
    sweeps: list[SweepTable] = Field(default_factory=list, description="One table per swept knob.")
    threat: ThreatInfo | None = None
    config: dict[str, Any]
    environment: Environment
    manifest: Manifest | None = None
    budget: list[BudgetSummary] = Field(default_factory=list, description="Leakage vs query budget: accuracy at 10k / "
                                        "100k / 1M teacher queries per attack x student (x variant) that queries the teacher (distill/budget_table.py).")

    model_config = {"populate_by_name": True}

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


VERDICT_SEVERITY: dict[str, int] = {"resists": 0, "inconclusive": 1, "leaks": 2}
#: the owner's view: a setting where normal KD is not even poisoned is the weakest
PROTECTION_SEVERITY: dict[str, int] = {"holds": 0, "inconclusive": 1, "broken": 2, "none": 3}


def delta_acc(attacks: list[AttackResult], student: str) -> float | None:
    by = {a.attack: a.accuracy.mean for a in attacks if a.student == student}
    skept = [by[k] for k in ("skeptical", "skeptical_e") if k in by]
    if "normal_kd" not in by or not skept:
        return None
    return round(max(skept) - by["normal_kd"], 3)
