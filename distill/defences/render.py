"""The matrix as a table a terminal and a README both show (GitHub markdown), plus the summary lines.

Each attack cell is `mean ±h (Δbase)`: the mean student accuracy over seeds, the half-width of
its 95% t-interval, and the difference to the scratch student. With several students (or both
skeptical exits), a column shows the strongest, the one the owner must plan for.
"""

from __future__ import annotations

from kdaudit.distill.defences.matrix import LABEL_ONLY_PREFIX, AttackCell, DefenceMatrix, DefenceRow

#: table column -> the attacks it takes its strongest cell from
COLUMNS: dict[str, tuple[str, ...]] = {
    "normal KD": ("normal_kd",),
    "skeptical": ("skeptical", "skeptical_e"),
    "label-only": tuple(LABEL_ONLY_PREFIX + a for a in ("normal_kd", "skeptical", "skeptical_e")),
    "DFAD": ("datafree_dfad",),
}


def cell_text(c: AttackCell | None) -> str:
    if c is None:
        return "-"
    ci = c.accuracy.ci95
    half = f" ±{(ci.high - ci.low) / 2:.1f}" if ci is not None else ""
    return f"{c.accuracy.mean:.1f}{half} ({c.delta_base:+.1f})"


def strongest(row: DefenceRow, attacks: tuple[str, ...]) -> AttackCell | None:
    return max((c for c in row.attacks if c.attack in attacks), key=lambda c: c.accuracy.mean, default=None)


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(m: DefenceMatrix) -> str:
    columns = [c for c, attacks in COLUMNS.items() if any(strongest(r, attacks) for r in m.rows)]
    head = ["defence", "top-1", "lost", "top-5", "ECE", "argmax changed %", *columns, "worst case", "leakage", "protection"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    front = set(m.pareto_front)
    for r in m.rows:
        u = r.utility
        name = f"**{r.name}**" if r.name == m.recommendation.defence else r.name
        name += " ◆" if r.name in front else ""
        cells = [name, f"{u.top1:.1f}", f"{u.top1_drop:+.1f}", _num(u.top5), _num(u.ece), f"{u.argmax_changed:.1f}"]
        cells += [cell_text(strongest(r, COLUMNS[c])) for c in columns]
        worst = r.worst_case
        cells += [f"{worst.accuracy.mean:.1f} ({worst.attack})" if worst else "-", r.leakage, r.protection or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(m: DefenceMatrix) -> str:
    owner = m.teachers[0]
    lines = [
        f"owner's teacher: {owner.accuracy:.2f}% test top-1 (sha256 {owner.sha256[:12]}…)",
        *(f"{t.key}: {t.accuracy:.2f}% test top-1, checkpoint epoch {t.recipe.get('epoch', '?')} "
          f"({t.recipe.get('checkpoint_rule', 'given')})" for t in m.teachers[1:] if t.recipe),
        "cells: student test accuracy mean ±95% CI half-width over seeds (Δbase vs the scratch student), percent; "
        "◆ = Pareto front (utility lost vs worst case)",
        f"Pareto front: {', '.join(m.pareto_front)}",
        f"recommendation: {m.recommendation.defence or 'none qualifies'} — {m.recommendation.reason}",
        f"rule: {m.recommendation.rule}",
    ]
    return "\n".join(lines)
