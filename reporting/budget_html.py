"""The report's leakage-vs-query-budget section: one plot and the milestone table.

Kept apart from reporting/html_page.py (which owns the page) so that the page needs only a
one-line hook: `budget_section(report)` returns "" when no run has a budget curve.
"""

from __future__ import annotations

from kdaudit.distill.report import Report
from kdaudit.reporting.html_format import escape
from kdaudit.reporting.kinds import kind_colour, kind_label, order_kinds
from kdaudit.reporting.svg import new_figure, style_axes, svg_element


def budget_plot(report: Report, prefix: str = "budget") -> str | None:
    """Test accuracy vs teacher queries (log x), one line per run that queried the teacher, coloured by attack (diverged runs faint)."""

    runs = [r for r in report.runs if r.budget_curve]
    if not runs:
        return None
    kinds = order_kinds(r.kind for r in runs)
    styles = ["-", "--", ":", "-."]
    students = list(dict.fromkeys(r.student for r in runs))
    fig = new_figure(6.4, 3.8)
    ax = fig.add_subplot()
    for r in runs:
        xs = [p.queries for p in r.budget_curve]
        ys = [p.accuracy for p in r.budget_curve]
        ax.plot(xs, ys, color=kind_colour(r.kind, kinds), linestyle=styles[students.index(r.student) % len(styles)],
                marker="o", markersize=2.5, linewidth=1.2, alpha=1.0 if r.status == "ok" else 0.35)
    for b in (s.budget for s in (report.budget[0].cells if report.budget else [])):
        ax.axvline(b, color="#bbbbbb", linewidth=0.8, zorder=0)
    ax.axhline(report.teacher.accuracy, color="#222222", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("Teacher queries (images sent, log scale)")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_ylim(0, 100)
    style_axes(ax)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=kind_colour(k, kinds), linewidth=2, label=kind_label(k)) for k in kinds]
    if len(students) > 1:
        handles += [Line2D([], [], color="#444444", linestyle=styles[i % len(styles)], label=f"student {s}")
                    for i, s in enumerate(students)]
    handles.append(Line2D([], [], color="#222222", linestyle="--", label=f"teacher ({report.teacher.accuracy:.1f}%)"))
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=min(len(handles), 3), frameon=False)
    fig.suptitle("Leakage vs query budget: what each run's thief had after N queries", fontsize=10)
    return svg_element(fig, prefix, "Line chart: test accuracy of the student a thief would keep after each number "
                "of teacher queries, one line per run, coloured by attack")


def budget_table_html(report: Report) -> str:

    if not report.budget:
        return ""
    budgets = [c.budget for c in report.budget[0].cells]
    head = "".join(f"<th scope=\"col\">{b:,} queries</th>" for b in budgets)
    rows = []
    for s in report.budget:
        cells = "".join(
            f"<td>{c.accuracy_mean:.1f}%" + (f" <span class=\"meta\">({c.runs}/{s.seeds} runs)</span>" if c.runs != s.seeds else "") + "</td>"
            if c.accuracy_mean is not None else "<td>not reached</td>"
            for c in s.cells
        )
        variant = f" · {escape(s.variant)}" if s.variant else ""
        rows.append(f"<tr><th scope=\"row\">{escape(kind_label(s.attack))}{variant} · <code>{escape(s.student)}</code></th>{cells}</tr>")
    return (f'<table><caption>Mean test accuracy over seeds at each query budget</caption><thead><tr><th scope="col">attack · student</th>'
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def budget_section(report: Report) -> str:
    """The whole section, or "" when the report has no budget curves (no run queried the teacher)."""

    svg = budget_plot(report)
    if svg is None:
        return ""
    rules = "; ".join(escape(r) for r in dict.fromkeys(s.rule for s in report.budget))
    return (f'<section aria-labelledby="h-budget">\n<h2 id="h-budget">Leakage vs query budget</h2>\n'
            f"<figure>{svg}<figcaption>Each point: the student the thief would keep after that many teacher queries "
            f"({rules}). A budget beyond what a run spent is not extrapolated.</figcaption></figure>\n"
            f"{budget_table_html(report)}\n</section>")
