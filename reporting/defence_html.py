"""The defence comparison (`kdaudit.defences/v1`, `kdaudit defend` / POST /v1/defences) as one
self-contained HTML page: the recommendation and its rule, the defence x attack matrix, and a
scatter of what each defence costs honest users (top-1 lost) against what the strongest thief
still gets (worst-case student accuracy), the Pareto front joined by a line.

The table's cells are distill/defences/render.py's (same columns, same `mean ±h (Δbase)` text),
the page style is the audit report's (reporting/html_page.py), the plot goes through
reporting/svg.py: one way to show each thing, whichever report it is in.
"""

from __future__ import annotations

import json
from typing import Any

from kdaudit.distill.defences.matrix import DefenceMatrix
from kdaudit.distill.defences.render import COLUMNS, cell_text, strongest
from kdaudit.reporting.html_format import escape
from kdaudit.reporting.html_page import _CSS
from kdaudit.reporting.svg import new_figure, style_axes, svg_element


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def matrix_table(m: DefenceMatrix) -> str:
    """The matrix as an HTML table: utility columns, the strongest cell per attack column, the worst case, verdicts."""
    columns = [c for c, attacks in COLUMNS.items() if any(strongest(r, attacks) for r in m.rows)]
    head = ["defence", "stage", "top-1 %", "top-1 lost", "top-5 %", "ECE", "argmax changed %", *columns,
            "worst case", "leakage", "protection"]
    front = set(m.pareto_front)
    body = []
    for r in m.rows:
        u, worst = r.utility, r.worst_case
        tags = ('<span class="tag">recommended</span>' if r.name == m.recommendation.defence else "") + (
            '<span class="tag">Pareto</span>' if r.name in front else "")
        cells = [f"<th scope=\"row\"><code>{escape(r.name)}</code>{tags}</th>", f"<td>{escape(r.stage)}</td>",
                 *(f'<td class="num">{v}</td>' for v in (f"{u.top1:.1f}", f"{u.top1_drop:+.1f}", _num(u.top5),
                                                        _num(u.ece), f"{u.argmax_changed:.1f}")),
                 *(f'<td class="num">{escape(cell_text(strongest(r, COLUMNS[c])))}</td>' for c in columns),
                 f"<td>{escape(f'{worst.accuracy.mean:.1f} ({worst.attack})' if worst else 'n/a')}</td>",
                 f"<td>{escape(r.leakage)}</td>", f"<td>{escape(r.protection or 'n/a')}</td>"]
        best = ' class="best"' if r.name == m.recommendation.defence else ""
        body.append(f"<tr{best} title=\"{escape(r.description)}\">{''.join(cells)}</tr>")
    heads = "".join(f"<th scope=\"col\">{escape(h)}</th>" for h in head)
    return ('<div class="table-wrap"><table id="defence-matrix"><caption>Attack cells: student test accuracy, mean '
            "±95% CI half-width over seeds (Δ vs the scratch student), percent; the strongest student per column."
            f"</caption><thead><tr>{heads}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def tradeoff_plot(m: DefenceMatrix, prefix: str = "tradeoff") -> str | None:
    """Scatter: top-1 lost (x) against worst-case student accuracy (y), both costs; the front as a line."""
    points = {r.name: (r.utility.top1_drop, r.worst_case.accuracy.mean) for r in m.rows if r.worst_case is not None}
    if not points:
        return None
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    front = [points[n] for n in m.pareto_front if n in points]
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), color="#8a8a8e", linewidth=1, linestyle="--", label="Pareto front", zorder=1)
    for name, (x, y) in points.items():
        chosen = name == m.recommendation.defence
        ax.scatter([x], [y], s=60 if chosen else 30, zorder=3, color="#b3261e" if chosen else "#1d4f91",
                   marker="*" if chosen else "o")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(m.config.get("max_utility_loss", 1.0), color="#1b6e37", linewidth=1, linestyle=":",
               label=f"max utility loss ({m.config.get('max_utility_loss', 1.0):g} pt)")
    ax.set_xlabel("Top-1 accuracy lost by honest users (points)")
    ax.set_ylabel("Worst-case student accuracy (%)")
    ax.set_title("Utility lost vs leakage (lower-left is better; star = recommended)", fontsize=10)
    style_axes(ax)
    ax.legend(fontsize=8, frameon=False, loc="best")
    return svg_element(fig, prefix, "Scatter plot: for each defence, the top-1 accuracy honest users lose against the "
                       "best attack's mean student accuracy, with the Pareto front and the recommendation marked")


def render_defences_html(matrix: DefenceMatrix | dict[str, Any], *, audit_id: str | None = None) -> str:
    """The whole defence comparison as one HTML document (no scripts, inline SVG)."""
    m = matrix if isinstance(matrix, DefenceMatrix) else DefenceMatrix.model_validate(matrix)
    owner = m.teachers[0]
    rec = m.recommendation
    plot = tradeoff_plot(m)
    figure = (f"<figure>{plot}<figcaption>Each dot is a defence; both axes are costs to the owner.</figcaption></figure>"
              if plot else "<p>No defence has attack results to plot.</p>")
    teachers = "".join(f"<dt><code>{escape(t.key)}</code></dt><dd>{t.accuracy:.2f}% test top-1 · sha256 "
                       f"<code class=\"hash\">{escape(t.sha256)}</code></dd>" for t in m.teachers)
    rules = "".join(f"<dt>{escape(k)}</dt><dd class=\"rule\">{escape(v)}</dd>" for k, v in m.rules.items())
    ident = f" · audit <code>{escape(audit_id)}</code>" if audit_id else ""
    verdict = "resists" if rec.defence else "inconclusive"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="kdaudit {escape(m.environment.get("kdaudit", ""))}">
<title>kdaudit defence comparison: {escape(m.config.get("teacher_arch", ""))} on {escape(m.config.get("dataset", ""))}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header>
<p class="meta">kdaudit defence comparison{ident} · schema <code>{escape(m.schema_)}</code></p>
<h1>Which defence should <code>{escape(m.config.get("teacher_arch", ""))}</code> deploy?</h1>
<p class="meta">The owner's teacher: {owner.accuracy:.2f}% test top-1.</p>
</header>
<section aria-labelledby="h-rec">
<h2 id="h-rec">Recommendation</h2>
<p class="verdict {verdict}" id="recommendation"><span class="badge {verdict}">{escape(rec.defence or "none qualifies")}</span>{escape(rec.reason)}</p>
<p class="rule">Rule: {escape(rec.rule)}</p>
<p>Pareto front: {escape(", ".join(m.pareto_front) or "n/a")}</p>
</section>
<section aria-labelledby="h-matrix">
<h2 id="h-matrix">Defence × attack matrix</h2>
{matrix_table(m)}
</section>
<section aria-labelledby="h-plot">
<h2 id="h-plot">Utility lost vs leakage</h2>
{figure}
</section>
<section aria-labelledby="h-rules">
<h2 id="h-rules">How the numbers are decided</h2>
<dl>{rules}</dl>
</section>
<section aria-labelledby="h-prov">
<h2 id="h-prov">Provenance</h2>
<dl>{teachers}</dl>
<details><summary>Configuration, audits and environment</summary><pre>{escape(json.dumps(
        {"config": m.config, "audits": m.audits, "environment": m.environment}, indent=2, sort_keys=True))}</pre></details>
</section>
</main>
</body>
</html>
"""
