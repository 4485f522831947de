"""Render a `kdaudit.report/v1` report as one self-contained HTML page.

    html = render_report_html(report)          # a Report, or its JSON dict

The page needs nothing from the network: CSS is inline, plots are matplotlib (Agg) figures
embedded as inline SVG, and there are no scripts. It holds the verdict in one sentence, the
teacher and the threat model, one table per student architecture (mean ± std, the per-seed
values, Δbase and Δacc) and two plots: accuracy per attack with the seed spread, and the
per-epoch validation curves of every run. Each attack keeps one colour everywhere.

This module owns the page and its order of sections; each section is built by its own
module (verdict_html, plots, budget_html, tables). No web framework imports; matplotlib is
imported on first use.
"""

from __future__ import annotations

import json
from typing import Any

from kdaudit.distill.report import Report
from kdaudit.reporting.budget_html import budget_section
from kdaudit.reporting.html_format import escape, pct, pts
from kdaudit.reporting.kinds import KIND_DESCRIPTIONS, kind_colour, kind_label, order_kinds
from kdaudit.reporting.plots import accuracy_plot, curves_plot
from kdaudit.reporting.tables import settings_section, student_table
from kdaudit.reporting.verdict_html import CSS as VERDICT_CSS
from kdaudit.reporting.verdict_html import (
    VERDICT_WORDS,
    comparisons_section,
    protection_badge,
    rules_paragraphs,
    verdict_sentence,
)


def _threat_model(report: Report, kinds: list[str]) -> str:
    c, d, t = report.config, report.dataset, report.teacher
    kd = c.get("kd") or {}
    sk = c.get("skeptical") or {}
    sched = c.get("schedule") or {}
    students = ", ".join(f"<code>{escape(s)}</code>" for s in (c.get("students") or [x.student for x in report.scratch]))
    queries = max((a.teacher_queries for a in report.attacks), default=0)
    items = "".join(
        f'<li><span class="swatch" style="background:{kind_colour(k, kinds)}" aria-hidden="true"></span>'
        f"<strong>{escape(kind_label(k))}</strong>: {escape(KIND_DESCRIPTIONS.get(k, 'an attack recorded in this report'))}</li>"
        for k in kinds
    )
    share = f"{d.fraction * 100:g}%"
    th = report.threat
    seen = th.output_description if th is not None else "its output scores"
    budget = ""
    if th is not None and th.query_budget is not None:
        budget = f", at most {th.query_budget:,} billed queries per run"
    if th is not None and th.remote:
        budget += f"; the teacher is the endpoint {th.remote.get('url', '')}"
    return f"""
<section aria-labelledby="h-teacher" class="cols">
<div>
<h2 id="h-teacher">Teacher</h2>
<dl>
<dt>architecture</dt><dd><code>{escape(t.architecture)}</code></dd>
<dt>test accuracy</dt><dd>{pct(t.accuracy)} on {escape(d.name)} ({t.num_classes} classes, {d.test_size:,} test images)</dd>
<dt>sha256</dt><dd><code class="hash">{escape(t.sha256)}</code></dd>
</dl>
</div>
<div>
<h2 id="h-threat">Threat model</h2>
<p>The thief can send images to the teacher and read {escape(seen)} (black-box query access,
no weights){escape(budget)}. They hold {share} of the {escape(d.name)} training split &mdash; {d.train_size:,} labelled images,
{d.val_size:,} more for validation &mdash; and train students of {students}
for {escape(sched.get("epochs", "?"))} epochs, {escape(c.get("seeds", "?"))} seed(s) each
(up to {queries:,} teacher queries per attack and student, summed over seeds).
KD temperature τ = {escape(kd.get("temperature", "?"))}, soft-loss weight α = {escape(kd.get("alpha", "?"))};
skeptical exit stage: {escape(sk.get("ac_stage") or "architecture default")}.</p>
<ul class="kinds">{items}</ul>
</div>
</section>"""


def _cost_paragraph(report: Report) -> str:
    """Cost of theft: the strongest attack's measured cost, extrapolated, with its assumptions."""
    c = report.summary.theft_cost
    if c is None:
        return ""
    items = "".join(f"<li>{escape(a)}</li>" for a in c.assumptions)
    return (f'<p id="theft-cost"><strong>Cost of theft:</strong> {escape(c.summary())}</p>'
            f"<details><summary>Assumptions behind the cost</summary><ul>{items}</ul></details>")


_CSS = """
:root{--fg:#1d1d1f;--muted:#5b5b61;--line:#d9d9de;--bg:#fff;--soft:#f5f5f7;
--leaks:#b3261e;--resists:#1b6e37;--inconclusive:#8a5a00}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:1.25rem 1rem 3rem}
h1{font-size:1.5rem;margin:.2rem 0 1rem}h2{font-size:1.2rem;margin:1.8rem 0 .6rem}h3{font-size:1.05rem;margin:1.4rem 0 .4rem}
code{font:0.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.hash{word-break:break-all}
.verdict{border-left:6px solid var(--muted);background:var(--soft);padding:.9rem 1rem;border-radius:6px;font-size:1.08rem;margin:0}
.verdict.leaks{border-color:var(--leaks)}.verdict.resists{border-color:var(--resists)}.verdict.inconclusive{border-color:var(--inconclusive)}
.badge{display:inline-block;font-weight:700;letter-spacing:.04em;padding:.05rem .45rem;border-radius:4px;color:#fff;background:var(--muted);margin-right:.4rem}
.badge.leaks{background:var(--leaks)}.badge.resists{background:var(--resists)}.badge.inconclusive{background:var(--inconclusive)}
.meta{color:var(--muted);font-size:.9rem}
.cols{display:grid;grid-template-columns:1fr 1.4fr;gap:0 2rem}
@media (max-width:760px){.cols{grid-template-columns:1fr}}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;margin:0}dt{color:var(--muted)}dd{margin:0;min-width:0}
.kinds{padding-left:1.1rem}.kinds li{margin:.2rem 0}
.table-wrap{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-size:.92rem}
caption{text-align:left;color:var(--muted);font-size:.85rem;padding:.3rem 0}
th,td{border-bottom:1px solid var(--line);padding:.35rem .55rem;text-align:left;white-space:nowrap}
thead th{background:var(--soft);font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best{background:#fff6e5}
.tag{font-size:.75rem;background:#ffe0a3;border-radius:3px;padding:0 .3rem;margin-left:.3rem}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em;vertical-align:-.05em}
figure{margin:1rem 0}figcaption{color:var(--muted);font-size:.85rem}
svg.plot{width:100%;height:auto;max-width:900px;display:block}
details{margin:.5rem 0}summary{cursor:pointer;color:var(--muted)}
pre{background:var(--soft);padding:.7rem;overflow-x:auto;font-size:.8rem;border-radius:6px}
.rule{font-size:.9rem}
.visually-hidden{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
@media print{main{max-width:none}details{display:none}}
"""


def render_report_html(report: Report | dict[str, Any], *, title: str | None = None, audit_id: str | None = None) -> str:
    """The whole report as one self-contained HTML document (a str)."""
    if not isinstance(report, Report):
        report = Report.model_validate(report)
    s, t, d = report.summary, report.teacher, report.dataset
    kinds = order_kinds((["scratch"] if report.scratch else []) + [a.attack for a in report.attacks] + [r.kind for r in report.runs])
    title = title or f"kdaudit report: {t.architecture} on {d.name} ({VERDICT_WORDS.get(s.verdict, s.verdict)})"
    students = list(dict.fromkeys([x.student for x in report.scratch] + [a.student for a in report.attacks]))
    tables = "\n".join(student_table(report, st, kinds) for st in students)
    acc_svg = accuracy_plot(report)
    curves_svg = curves_plot(report)
    curves = (
        f'<figure>{curves_svg}<figcaption>Validation accuracy (percent of the validation split) after each epoch; '
        f"the test accuracy in the tables is that of each run's best validation epoch.</figcaption></figure>"
        if curves_svg
        else "<p>This report has no per-epoch validation curves.</p>"
    )
    config = json.dumps(report.config, indent=2, sort_keys=True)
    env = report.environment
    ident = f" · audit <code>{escape(audit_id)}</code>" if audit_id else ""
    verdict_class = escape(s.verdict)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="kdaudit {escape(env.kdaudit)}">
<title>{escape(title)}</title>
<style>{_CSS}{VERDICT_CSS}</style>
</head>
<body>
<main>
<header>
<p class="meta">kdaudit report{ident} · schema <code>{escape(report.schema_)}</code></p>
<h1>Does <code>{escape(t.architecture)}</code> leak to distillation?</h1>
</header>
<section aria-labelledby="h-verdict">
<h2 id="h-verdict" class="visually-hidden">Verdict</h2>
<p class="verdict {verdict_class}" id="verdict" data-verdict="{verdict_class}"><span class="badges"><span class="badge {verdict_class}">{"LEAKAGE " if s.verdict == "inconclusive" else ""}{escape(VERDICT_WORDS.get(s.verdict, s.verdict))}</span>{protection_badge(report)}</span>{escape(verdict_sentence(report))}</p>
<p class="meta">Best attack: {escape(kind_label(s.best_attack))} on <code>{escape(s.best_student)}</code> ·
Δacc (skeptical − normal KD): {escape(pts(s.delta_acc))}</p>
{_cost_paragraph(report)}
</section>
{comparisons_section(report)}
{_threat_model(report, kinds)}
<section aria-labelledby="h-plots">
<h2 id="h-plots">Accuracy per attack</h2>
<figure>{acc_svg}<figcaption>Test accuracy in percent. Bars are the mean over seeds, whiskers ±1 standard deviation,
dots the single seeds; the dashed line is the teacher.</figcaption></figure>
<h2 id="h-curves">Learning curves</h2>
{curves}
</section>
{budget_section(report)}
<section aria-labelledby="h-tables">
<h2 id="h-tables">Results per student architecture</h2>
{tables}
</section>
{settings_section(report)}
<section aria-labelledby="h-rule">
<h2 id="h-rule">How the verdicts are decided</h2>
{rules_paragraphs(report)}
</section>
<section aria-labelledby="h-prov">
<h2 id="h-prov">Provenance</h2>
<dl>
<dt>kdaudit</dt><dd>{escape(env.kdaudit)}</dd>
<dt>torch</dt><dd>{escape(env.torch)}</dd>
<dt>device</dt><dd>{escape(env.device)}</dd>
<dt>data split</dt><dd><code class="hash">{escape(report.config.get("split_sha256", "n/a"))}</code></dd>
<dt>wall time</dt><dd>{escape(report.config.get("wall_seconds", "n/a"))} s</dd>
</dl>
<details><summary>Full audit configuration</summary><pre>{escape(config)}</pre></details>
</section>
</main>
</body>
</html>
"""
