"""Compare two reports (e.g. before/after a defence): what changed beyond seed noise.

Per (attack, student) present in either report: the mean accuracy difference b - a, flagged
when |diff| > 2 x max(std_a, std_b) and > MIN_EFFECT_PTS (the verdict rule's own noise bar);
plus the verdict change. A pair present in only one report is listed, never flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kdaudit.distill.report import MIN_EFFECT_PTS, Report


@dataclass
class Row:
    attack: str
    student: str
    a: float | None
    b: float | None
    diff: float | None
    noise: float | None
    flagged: bool


@dataclass
class Comparison:
    rows: list[Row]
    verdict_a: str
    verdict_b: str
    notes: list[str]

    @property
    def verdict_changed(self) -> bool:
        return self.verdict_a != self.verdict_b

    def to_dict(self) -> dict[str, Any]:
        return {"verdict_a": self.verdict_a, "verdict_b": self.verdict_b, "verdict_changed": self.verdict_changed,
                "rows": [asdict(r) for r in self.rows], "notes": self.notes}

    def table(self) -> str:
        out = [f"{'attack':<26} {'student':<18} {'a %':>8} {'b %':>8} {'b - a':>8} {'noise':>7}"]
        for r in self.rows:
            def f(v: float | None, sign: bool = False) -> str:
                return "—" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")
            out.append(f"{r.attack:<26} {r.student:<18} {f(r.a):>8} {f(r.b):>8} {f(r.diff, True):>8} {f(r.noise):>7}"
                       + ("  * exceeds seed noise" if r.flagged else ""))
        out.append(f"verdict: {self.verdict_a} -> {self.verdict_b}" + (" (CHANGED)" if self.verdict_changed else " (unchanged)"))
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)


def _entries(report: Report) -> dict[tuple[str, str], tuple[float, float]]:
    out = {("scratch", s.student): (s.accuracy.mean, s.accuracy.std) for s in report.scratch}
    out.update({(a.attack, a.student): (a.accuracy.mean, a.accuracy.std) for a in report.attacks})
    return out


def compare_reports(a: Report, b: Report) -> Comparison:
    ea, eb = _entries(a), _entries(b)
    rows = []
    for key in list(dict.fromkeys([*ea, *eb])):
        va, vb = ea.get(key), eb.get(key)
        if va is None or vb is None:
            rows.append(Row(key[0], key[1], va and va[0], vb and vb[0], None, None, False))
            continue
        diff = round(vb[0] - va[0], 3)
        noise = round(2 * max(va[1], vb[1]), 3)
        rows.append(Row(key[0], key[1], va[0], vb[0], diff, noise, abs(diff) > noise and abs(diff) > MIN_EFFECT_PTS))
    notes = []
    if a.teacher.sha256 != b.teacher.sha256:
        notes.append("different teacher files (sha256 differ)")
    if a.dataset.name != b.dataset.name:
        notes.append(f"different datasets: {a.dataset.name} vs {b.dataset.name}")
    if any(len(x.accuracy.runs) < 2 for rep in (a, b) for x in [*rep.scratch, *rep.attacks]):
        notes.append("a side has a single seed: its std is 0, so the noise bar is only the 0.5-pt minimum")
    return Comparison(rows, a.summary.verdict, b.summary.verdict, notes)
