"""The two verdicts an owner reads, and the one sentence that carries both.

*Leakage* (VERDICT_RULE): does the best thief's student beat what the data alone gives
(a scratch student, and a label-smoothing student, so that regularisation is not mistaken
for the teacher's knowledge)? *Protection* (PROTECTION_RULE): does normal distillation fall
below scratch (the teacher resists a naive thief) and does every other attack stay down too?
Both are decided on Welch intervals over seeds (distill/intervals.py): a verdict is
conclusive only when its comparisons are settled, and an unsettled one says how many seeds
would likely settle it. The headline is built here once and stored in `summary.headline`;
the CLI, the HTML page and the web UI all print that string.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdaudit.distill.intervals import MIN_EFFECT_PTS, compare, seeds_for_halfwidth, spreads
from kdaudit.distill.report import (
    PROTECTION_SEVERITY,
    AccuracyStats,
    AttackResult,
    ProtectionDetail,
    Verdict,
)

#: a teacher or scratch student within this many points of chance (100/C) decides nothing (the watchdog's margin)
CHANCE_MARGIN_PTS = 2.0

WORDS = {
    "normal_kd": "normally distilled student",
    "skeptical": "skeptical student",
    "skeptical_e": "skeptical student's exit ensemble",
    "datafree_zskt": "data-free ZSKT student",
    "datafree_zskt_skeptical": "data-free skeptical ZSKT student",
    "datafree_zskt_skeptical_e": "data-free skeptical ZSKT ensemble",
    "datafree_dfad": "data-free DFAD student",
    "datafree_dfad_skeptical": "data-free skeptical DFAD student",
    "datafree_dfad_skeptical_e": "data-free skeptical DFAD ensemble",
}


def words(attack: str) -> str:
    return WORDS.get(attack, attack.replace("_", " "))


@dataclass
class Baselines:
    """What every attack is judged against, per student."""

    scratch: dict[str, AccuracyStats]
    label_smoothing: dict[str, AccuracyStats] = field(default_factory=dict)
    teacher_accuracy: float = 100.0
    num_classes: int = 10
    test_size: int = 0

    @property
    def floor(self) -> float:
        """One test image's worth of accuracy (pts): the smallest per-seed spread we believe."""
        return 100.0 / self.test_size if self.test_size else 0.0

    @property
    def chance(self) -> float:
        return 100.0 / self.num_classes

    def at_chance(self, acc: float) -> bool:
        return acc <= self.chance + CHANCE_MARGIN_PTS


@dataclass
class Leakage:
    verdict: Verdict
    best: AttackResult | None
    reason: str
    seeds_needed: int | None = None


def annotate(attacks: list[AttackResult], base: Baselines) -> None:
    """Fill each attack's `vs_scratch` and `vs_label_smoothing` comparisons (in place)."""
    for a in attacks:
        sc = base.scratch.get(a.student)
        if sc is not None:
            a.vs_scratch = compare(a.attack, a.accuracy.runs, "scratch", sc.runs, a.student, base.floor)
        ls = base.label_smoothing.get(a.student)
        if ls is not None:
            a.vs_label_smoothing = compare(a.attack, a.accuracy.runs, "label_smoothing", ls.runs, a.student, base.floor)


def _guard(base: Baselines, student: str) -> str | None:
    """Why no verdict can be conclusive, or None."""
    if base.at_chance(base.teacher_accuracy):
        return (f"the teacher scores {base.teacher_accuracy:.1f}% on the test split, at chance ({base.chance:.0f}% for "
                f"{base.num_classes} classes): there is nothing to leak or protect, so no verdict is drawn")
    sc = base.scratch.get(student)
    if sc is not None and base.at_chance(sc.mean):
        return (f"the scratch {student} student scores {sc.mean:.1f}%, at chance: this setting trains nothing, "
                "so no comparison with it means anything")
    return None


def _max_seeds(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def judge_leakage(attacks: list[AttackResult], base: Baselines) -> Leakage:
    """VERDICT_RULE on annotated attacks."""
    if not attacks:
        return Leakage("inconclusive", None, "no attack produced a result (every run diverged)")
    best = max(attacks, key=lambda a: (a.delta_base, a.accuracy.mean))
    why = _guard(base, best.student)
    if why is not None:
        return Leakage("inconclusive", best, why)
    vs, vl = best.vs_scratch, best.vs_label_smoothing
    head = f"the best thief, the {words(best.attack)} on {best.student}, reaches {best.accuracy.mean:.1f}%"
    if vs is not None and vs.higher and (vl is None or vl.higher):
        ls = f" and {vl.text()} over label smoothing" if vl is not None else ""
        return Leakage("leaks", best, f"{head}, {vs.text()} over scratch{ls}")
    if all(a.vs_scratch is not None and a.vs_scratch.lower for a in attacks):
        return Leakage("resists", best, f"every attack stays below scratch; {head}, {vs.text() if vs else ''} against scratch")
    if vs is not None and vs.higher and vl is not None:
        return Leakage("inconclusive", best, f"{head}: above scratch ({vs.text()}) but not settled above label smoothing "
                       f"({vl.text()}), so the gain may be regularisation rather than the teacher's knowledge", vl.seeds_needed)
    if best.delta_base > 0:
        needed = vs.seeds_needed if vs is not None else 3
    else:
        needed = _max_seeds([a.vs_scratch.seeds_needed for a in attacks if a.vs_scratch is not None and not a.vs_scratch.lower])
    text = vs.text() if vs is not None else f"{best.delta_base:+.2f} pts"
    tail = "" if needed is not None else f"; every unsettled difference is under the {MIN_EFFECT_PTS:g}-pt minimum effect"
    return Leakage("inconclusive", best, f"{head}, {text} against scratch: not settled{tail}", needed)


def judge_protection(attacks: list[AttackResult], base: Baselines, *, setting: str | None = None,
                     variant: str | None = None) -> ProtectionDetail | None:
    """PROTECTION_RULE for one setting: the weakest student's verdict; None without normal KD."""
    details = [d for s in dict.fromkeys(a.student for a in attacks)
               if (d := _protection_for(s, [a for a in attacks if a.student == s], base)) is not None]
    if not details:
        return None
    worst = weakest(details)
    return worst.model_copy(update={"setting": setting, "variant": variant})


def weakest(details: list[ProtectionDetail]) -> ProtectionDetail:
    """The weakest protection (PROTECTION_SEVERITY; ties: the strongest attack)."""
    return max(details, key=lambda d: (PROTECTION_SEVERITY[d.verdict], d.attack_accuracy or 0.0))


def _protection_for(student: str, attacks: list[AttackResult], base: Baselines) -> ProtectionDetail | None:
    kd = next((a for a in attacks if a.attack == "normal_kd"), None)
    if kd is None or kd.vs_scratch is None:
        return None
    c0 = kd.vs_scratch
    others = [a for a in attacks if a is not kd and a.vs_scratch is not None]
    strongest = max(others, key=lambda a: a.accuracy.mean, default=None)
    common = {"student": student, "normal_kd_vs_scratch": c0, "normal_kd_accuracy": kd.accuracy.mean,
              "scratch_accuracy": base.scratch[student].mean}
    why = _guard(base, student)
    if why is not None:
        return ProtectionDetail(verdict="inconclusive", reason=why, **common)
    if c0.lower:
        if all(a.vs_scratch.lower for a in others):  # type: ignore[union-attr]
            detail = _with_attack(strongest, kd, base)
            tail = (f"; the strongest, the {words(strongest.attack)}, reaches {strongest.accuracy.mean:.1f}% "
                    f"({strongest.vs_scratch.text()} against scratch)") if strongest is not None else ""  # type: ignore[union-attr]
            return ProtectionDetail(verdict="holds", reason=f"normal KD falls below scratch ({c0.text()}) and so does every other "
                                    f"attack{tail}", **common, **detail)
        rising = [a for a in others if not a.vs_scratch.lower]  # type: ignore[union-attr]
        vs_kd = {a.attack: compare(a.attack, a.accuracy.runs, "normal_kd", kd.accuracy.runs, student, base.floor) for a in rising}
        breakers = [a for a in rising if vs_kd[a.attack].higher]
        if breakers:
            b = max(breakers, key=lambda a: a.accuracy.mean)
            return ProtectionDetail(verdict="broken", reason=(
                f"normal KD falls below scratch ({c0.text()}) but the {words(b.attack)} recovers to {b.accuracy.mean:.1f}% "
                f"({vs_kd[b.attack].text()} over normal KD; {b.vs_scratch.text()} against scratch)"),  # type: ignore[union-attr]
                **common, **_with_attack(b, kd, base))
        b = max(rising, key=lambda a: a.accuracy.mean)
        needed = _max_seeds([_min_known(vs_kd[a.attack].seeds_needed, a.vs_scratch.seeds_needed) for a in rising])  # type: ignore[union-attr]
        return ProtectionDetail(verdict="inconclusive", seeds_needed=needed, reason=(
            f"normal KD falls below scratch ({c0.text()}); the {words(b.attack)} reaches {b.accuracy.mean:.1f}% "
            f"({b.vs_scratch.text()} against scratch, {vs_kd[b.attack].text()} over normal KD): "  # type: ignore[union-attr]
            "neither settled below scratch nor settled above normal KD"), **common, **_with_attack(b, kd, base))
    if c0.not_lower or (c0.diff >= 0 and c0.interval is not None):
        why = (f"ruling out a drop of more than {MIN_EFFECT_PTS:g} pt" if c0.not_lower
               else "its mean is above scratch and nothing settles a drop")
        return ProtectionDetail(verdict="none", reason=(
            f"normal KD is not below scratch ({c0.text()}, {why}): "
            "the teacher does not resist even a naive thief"), **common, **_with_attack(strongest, kd, base))
    sc = base.scratch[student]
    s1, s2 = spreads(kd.accuracy.runs, sc.runs, base.floor)
    have = min(len(kd.accuracy.runs), len(sc.runs))
    toward_none = seeds_for_halfwidth(c0.diff + MIN_EFFECT_PTS, s1, s2, have) if have > 1 else 3
    needed = _min_known(c0.seeds_needed, toward_none)
    return ProtectionDetail(verdict="inconclusive", seeds_needed=needed, reason=(
        f"normal KD against scratch is {c0.text()}: neither settled below scratch nor ruling out a drop"),
        **common, **_with_attack(strongest, kd, base))


def _min_known(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _with_attack(a: AttackResult | None, kd: AttackResult, base: Baselines) -> dict:
    if a is None:
        return {}
    return {"attack": a.attack, "attack_accuracy": a.accuracy.mean, "attack_vs_scratch": a.vs_scratch,
            "attack_vs_normal_kd": compare(a.attack, a.accuracy.runs, "normal_kd", kd.accuracy.runs, a.student, base.floor)}


# ---------------------------------------------------------------- the owner's sentence


def _seeds(n: int | None) -> str:
    if n is None:
        return ""
    return f"; about {n} seeds would likely settle it" if n <= 50 else "; more than 50 seeds would be needed"


def protection_clause(p: ProtectionDetail, where: str = "") -> str:
    scratch, kd = p.scratch_accuracy, p.normal_kd_accuracy
    c0 = p.normal_kd_vs_scratch
    sc = f" ({scratch:.1f}%)" if scratch is not None else ""
    if p.verdict == "broken" and c0 is not None and p.attack is not None and p.attack_vs_normal_kd is not None:
        level = "above" if p.attack_vs_scratch is not None and p.attack_vs_scratch.higher else "within the noise of"
        return (f"Protection BROKEN{where}: normal distillation falls {-c0.diff:.1f} pts below a student trained without the "
                f"teacher{sc}, but the {words(p.attack)} recovers to {p.attack_accuracy:.1f}% "
                f"({p.attack_vs_normal_kd.diff:+.1f} pts over normal KD, {level} that student)")
    if p.verdict == "holds" and c0 is not None:
        tail = (f"; the strongest, the {words(p.attack)}, reaches {p.attack_accuracy:.1f}%") if p.attack else ""
        return (f"Protection HOLDS{where}: normal distillation falls {-c0.diff:.1f} pts below a student trained without the "
                f"teacher{sc} and every attack audited stays below it too{tail}")
    if p.verdict == "none" and kd is not None:
        return (f"No protection{where}: normal distillation is not below a student trained without the teacher "
                f"({kd:.1f}% vs {scratch:.1f}%)" if scratch is not None else f"No protection{where}")
    return f"Protection INCONCLUSIVE{where}: {p.reason}{_seeds(p.seeds_needed)}"


def judge(attacks: list[AttackResult], base: Baselines, *, setting: str | None = None,
          variant: str | None = None) -> tuple[Leakage, ProtectionDetail | None]:
    """Annotate the attacks with their comparisons, then both verdicts for one setting."""
    annotate(attacks, base)
    return judge_leakage(attacks, base), judge_protection(attacks, base, setting=setting, variant=variant)


def leakage_clause(leak: Leakage, where: str = "") -> str:
    b = leak.best
    if b is None:
        return "leakage INCONCLUSIVE: no attack produced a result"
    if leak.verdict == "leaks" and b.vs_scratch is not None:
        ls = (f" and {b.vs_label_smoothing.diff:+.1f} over a label-smoothing student"
              if b.vs_label_smoothing is not None else "")
        return (f"the teacher LEAKS{where}: the {words(b.attack)} reaches {b.accuracy.mean:.1f}%, {b.vs_scratch.diff:+.1f} pts over "
                f"scratch{ls}")
    if leak.verdict == "resists":
        return f"the teacher RESISTS distillation{where}: every attack stays below scratch (best: the {words(b.attack)}, {b.accuracy.mean:.1f}%)"
    return f"leakage INCONCLUSIVE{where}: {leak.reason}{_seeds(leak.seeds_needed)}"


def headline(protection: ProtectionDetail | None, leak: Leakage, seeds: int, *,
             where: str = "", leak_where: str = "", worst_case: str = "") -> str:
    """One sentence: protection (when normal KD was audited), then leakage, then the evidence's size."""
    parts = []
    if protection is not None:
        parts.append(protection_clause(protection, where))
        parts.append(leakage_clause(leak, leak_where))
    else:
        clause = leakage_clause(leak, leak_where)
        parts.append(clause[0].upper() + clause[1:])
    if worst_case:
        parts.append(worst_case)
    return "; ".join(parts) + f" ({seeds} seed{'s' if seeds != 1 else ''}, 95% Welch intervals)."
