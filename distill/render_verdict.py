"""HTML for the two verdicts: the badges, the comparisons (with intervals) behind them, the rules.

Kept apart from distill/render_html.py (the page and its plots) so that the verdict's
presentation and its rules (distill/verdicts.py) can be read side by side. The sentence
itself is never rebuilt here: it is `summary.headline`, the same string the CLI prints.
"""

from __future__ import annotations

import html

from kdaudit.distill.intervals import INTERVAL_METHOD, MIN_EFFECT_PTS, Comparison
from kdaudit.distill.report import Report

PROTECTION_WORDS = {"none": "NO PROTECTION", "holds": "PROTECTION HOLDS", "broken": "PROTECTION BROKEN",
                    "inconclusive": "PROTECTION INCONCLUSIVE"}
#: badge colour class per protection verdict (the page's CSS has leaks/resists/inconclusive)
PROTECTION_CLASS = {"none": "leaks", "broken": "leaks", "holds": "resists", "inconclusive": "inconclusive"}

CSS = """
.badges{display:flex;gap:.4rem;flex-wrap:wrap;margin-bottom:.4rem}
td.settled-higher{color:var(--leaks);font-weight:600}td.settled-lower{color:var(--resists);font-weight:600}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def protection_badge(report: Report) -> str:
    p = report.summary.protection
    if p is None:
        return ""
    return f'<span class="badge {PROTECTION_CLASS[p]}" id="protection" data-protection="{_e(p)}">{_e(PROTECTION_WORDS[p])}</span>'


def _ci(c: Comparison) -> str:
    return "—" if c.interval is None else f"{c.interval.low:+.2f} … {c.interval.high:+.2f}"


def _row(c: Comparison, label: str) -> str:
    settled = {"higher": "higher", "lower": "lower"}.get(c.outcome, "not settled")
    needed = "—" if c.outcome != "unsettled" else ("under the minimum effect" if c.seeds_needed is None else f"≈ {c.seeds_needed}")
    cls = f"settled-{c.outcome}" if c.outcome != "unsettled" else ""
    return (f"<tr><th scope=\"row\">{_e(label)}</th><td><code>{_e(c.student)}</code></td>"
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
        reasons.append(f"<li><strong>Leakage ({_e(s.verdict.upper())}):</strong> {_e(s.verdict_reason)}</li>")
    if p is not None:
        reasons.append(f"<li><strong>Protection ({_e(p.verdict.upper())}):</strong> {_e(p.reason)}</li>")
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
    return (f'<p class="rule"><strong>Leakage.</strong> {_e(s.rule)}</p>'
            f'<p class="rule"><strong>Protection.</strong> {_e(s.protection_rule)}</p>'
            f'<p class="rule meta">Intervals: {_e(INTERVAL_METHOD)}.</p>')
