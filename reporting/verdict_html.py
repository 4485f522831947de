"""The verdicts on the page: the sentence, the badges, the comparisons (with intervals) behind them, the rules.

Kept apart from reporting/html_page.py (the page) so that the verdict's presentation and its
rules (distill/verdicts.py) can be read side by side. The sentence itself is never rebuilt
here: it is `summary.headline`, the same string the CLI prints (only reports written before
headlines existed get the older sentence built by `verdict_sentence`).
"""

from __future__ import annotations

from kdaudit.distill.intervals import INTERVAL_METHOD, MIN_EFFECT_PTS, Comparison
from kdaudit.distill.report import MIN_EFFECT_PTS as SEED_NOISE_PTS  # compare.py's bar, not the intervals'
from kdaudit.distill.report import AttackResult, Report
from kdaudit.reporting.html_format import escape, pct
from kdaudit.reporting.kinds import attack_phrase, kind_label

VERDICT_WORDS = {"leaks": "LEAKS", "resists": "RESISTS", "inconclusive": "INCONCLUSIVE"}
PROTECTION_WORDS = {"none": "NO PROTECTION", "holds": "PROTECTION HOLDS", "broken": "PROTECTION BROKEN",
                    "inconclusive": "PROTECTION INCONCLUSIVE"}
#: badge colour class per protection verdict (the page's CSS has leaks/resists/inconclusive)
PROTECTION_CLASS = {"none": "leaks", "broken": "leaks", "holds": "resists", "inconclusive": "inconclusive"}

CSS = """
.badges{display:flex;gap:.4rem;flex-wrap:wrap;margin-bottom:.4rem}
td.settled-higher{color:var(--leaks);font-weight:600}td.settled-lower{color:var(--resists);font-weight:600}
"""


def noise_margin(report: Report, attack: AttackResult) -> float:
    """The margin VERDICT_RULE applies to one attack (pts)."""
    scratch = next((s.accuracy for s in report.scratch if s.student == attack.student), None)
    scratch_std = scratch.std if scratch is not None else 0.0
    return max(2 * max(attack.accuracy.std, scratch_std), SEED_NOISE_PTS)


def verdict_sentence(report: Report) -> str:
    """The verdict in one plain-text sentence: `summary.headline` (the CLI and JSON say the same);
    reports written before headlines existed get the older sentence built here."""
    s = report.summary
    if s.headline:
        return s.headline
    best = next((a for a in report.attacks if a.attack == s.best_attack and a.student == s.best_student), None)
    word = VERDICT_WORDS.get(s.verdict, s.verdict.upper())
    if best is None:  # a hand-edited report; say what we can
        return f"The teacher {word}: the best attack is {kind_label(s.best_attack)} on a {s.best_student} student."
    scratch = next((x.accuracy.mean for x in report.scratch if x.student == best.student), None)
    margin = noise_margin(report, best)
    base = f" ({pct(scratch)})" if scratch is not None else ""
    attack = f"a {best.student} student {attack_phrase(best.attack)}"
    if s.verdict == "leaks":
        return (
            f"The teacher LEAKS to distillation: {attack} reaches {pct(best.accuracy.mean)}, "
            f"{best.delta_base:.2f} pts above the same student trained from scratch{base}, "
            f"more than the noise margin of {margin:.2f} pts."
        )
    if s.verdict == "resists":
        return (
            f"The teacher RESISTS distillation: every attack's student stays below the student trained from scratch "
            f"by more than the noise margin; even the best, {attack}, reaches only {pct(best.accuracy.mean)} "
            f"({best.delta_base:+.2f} pts against scratch{base})."
        )
    return (
        f"The audit is INCONCLUSIVE: the best attack, {attack}, reaches {pct(best.accuracy.mean)}, "
        f"{best.delta_base:+.2f} pts against the same student trained from scratch{base}, "
        f"within the noise margin of {margin:.2f} pts."
    )


def protection_badge(report: Report) -> str:
    p = report.summary.protection
    if p is None:
        return ""
    return f'<span class="badge {PROTECTION_CLASS[p]}" id="protection" data-protection="{escape(p)}">{escape(PROTECTION_WORDS[p])}</span>'


def _ci(c: Comparison) -> str:
    return "—" if c.interval is None else f"{c.interval.low:+.2f} … {c.interval.high:+.2f}"


def _row(c: Comparison, label: str) -> str:
    settled = {"higher": "higher", "lower": "lower"}.get(c.outcome, "not settled")
    needed = "—" if c.outcome != "unsettled" else ("under the minimum effect" if c.seeds_needed is None else f"≈ {c.seeds_needed}")
    cls = f"settled-{c.outcome}" if c.outcome != "unsettled" else ""
    return (f"<tr><th scope=\"row\">{escape(label)}</th><td><code>{escape(c.student)}</code></td>"
            f'<td class="num">{c.diff:+.2f}</td><td class="num">{_ci(c)}</td><td class="{cls}">{settled}</td>'
            f'<td class="num">{needed}</td></tr>')


def comparisons_section(report: Report) -> str:
    """Every comparison the verdicts use, with its 95% interval and what it settles."""
    rows: list[str] = []
    for a in report.attacks:
        if a.vs_scratch is not None:
            rows.append(_row(a.vs_scratch, f"{a.attack} − scratch"))
        if a.vs_label_smoothing is not None:
            rows.append(_row(a.vs_label_smoothing, f"{a.attack} − label smoothing"))
    p = report.summary.protection_detail
    if p is not None and p.attack_vs_normal_kd is not None and p.attack is not None:
        where = f" ({p.setting})" if p.setting and report.variants else ""
        rows.append(_row(p.attack_vs_normal_kd, f"{p.attack} − normal_kd{where}"))
    if not rows:
        return ""
    s = report.summary
    reasons = []
    if s.verdict_reason:
        reasons.append(f"<li><strong>Leakage ({escape(s.verdict.upper())}):</strong> {escape(s.verdict_reason)}</li>")
    if p is not None:
        reasons.append(f"<li><strong>Protection ({escape(p.verdict.upper())}):</strong> {escape(p.reason)}</li>")
    return (
        '<section aria-labelledby="h-evidence"><h2 id="h-evidence">The evidence behind the verdicts</h2>'
        f"<ul>{''.join(reasons)}</ul>"
        '<div class="table-wrap"><table id="comparisons"><caption>Differences in test accuracy (points, mean over seeds) '
        f"with their 95% Welch intervals; settled = the interval excludes zero and |difference| ≥ {MIN_EFFECT_PTS:g} pt. "
        "Seeds needed: per student, to likely settle an unsettled difference if the means and spreads held.</caption>"
        '<thead><tr><th scope="col">comparison</th><th scope="col">student</th><th scope="col" class="num">difference</th>'
        '<th scope="col" class="num">95% interval</th><th scope="col">settled</th><th scope="col" class="num">seeds needed</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def rules_paragraphs(report: Report) -> str:
    s = report.summary
    return (f'<p class="rule"><strong>Leakage.</strong> {escape(s.rule)}</p>'
            f'<p class="rule"><strong>Protection.</strong> {escape(s.protection_rule)}</p>'
            f'<p class="rule meta">Intervals: {escape(INTERVAL_METHOD)}.</p>')
