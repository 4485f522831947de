"""The page's two plots: test accuracy per attack (bars, seed spread) and every run's validation
curve. One colour per result kind (reporting/kinds.py), inline SVG (reporting/svg.py)."""

from __future__ import annotations

from typing import Any

from kdaudit.distill.report import Report
from kdaudit.reporting.kinds import kind_colour, kind_label, order_kinds
from kdaudit.reporting.svg import new_figure, style_axes, svg_element


def accuracy_plot(report: Report, prefix: str = "acc") -> str:
    """Bars: mean test accuracy per student and kind, error bars ±1 std, dots = single seeds."""
    import numpy as np

    students = [s.student for s in report.scratch] or sorted({a.student for a in report.attacks})
    rows: dict[str, dict[str, Any]] = {s: {} for s in students}
    for sc in report.scratch:
        rows.setdefault(sc.student, {})["scratch"] = sc.accuracy
    for sc in report.label_smoothing:
        rows.setdefault(sc.student, {})["scratch_ls"] = sc.accuracy
    for a in report.attacks:
        rows.setdefault(a.student, {})[a.attack] = a.accuracy
    kinds = order_kinds(k for r in rows.values() for k in r)
    n = max(len(kinds), 1)
    width = 0.8 / n
    fig = new_figure(max(6.4, 1.6 + 1.5 * len(rows) * n / 2), 3.6)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, kind in enumerate(kinds):
        xs, means, stds = [], [], []
        for j, student in enumerate(rows):
            st = rows[student].get(kind)
            if st is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            xs.append(x)
            means.append(st.mean)
            stds.append(st.std)
            jitter = rng.uniform(-width * 0.22, width * 0.22, len(st.runs)) if len(st.runs) > 1 else [0.0]
            ax.scatter(x + np.asarray(jitter), st.runs, s=16, color="#222222", zorder=3, linewidths=0)
        colour = kind_colour(kind, kinds)
        ax.bar(xs, means, width * 0.92, color=colour, label=kind_label(kind), zorder=2,
               yerr=stds, capsize=3, error_kw={"elinewidth": 1, "ecolor": "#222222"})
    ax.axhline(report.teacher.accuracy, color="#222222", linestyle="--", linewidth=1,
               label=f"teacher ({report.teacher.accuracy:.1f}%)")
    ax.set_xticks(range(len(rows)), [f"student {s}" for s in rows])
    ax.set_ylabel("Test accuracy (%)")
    ax.set_ylim(0, 100 if max([report.teacher.accuracy] + [st.mean + st.std for r in rows.values() for st in r.values()]) <= 100 else None)
    ax.set_title("Test accuracy per attack (bars: mean ± std over seeds; dots: single seeds)", fontsize=10)
    style_axes(ax)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=min(len(kinds) + 1, 4), frameon=False)
    return svg_element(fig, prefix, "Bar chart: test accuracy per attack and student, mean and standard deviation over seeds, "
                "with single seeds as dots and the teacher's accuracy as a dashed line")


def curves_plot(report: Report, prefix: str = "curves") -> str | None:
    """Validation accuracy per epoch for every run: one panel per student, one colour per kind."""
    runs = [r for r in report.runs if r.val_curve]
    if not runs:
        return None
    students = list(dict.fromkeys(r.student for r in runs))
    kinds = order_kinds(r.kind for r in runs)
    seeds = sorted({r.seed for r in runs})
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    cols = min(len(students), 2)
    nrows = (len(students) + cols - 1) // cols
    fig = new_figure(6.4 if cols == 1 else 9.6, 3.4 * nrows + 0.5)
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True)
    for idx, student in enumerate(students):
        ax = axes[idx // cols][idx % cols]
        for r in (r for r in runs if r.student == student):
            si = seeds.index(r.seed)
            epochs = list(range(1, len(r.val_curve) + 1))
            ax.plot(epochs, r.val_curve, color=kind_colour(r.kind, kinds), linestyle=styles[si % len(styles)],
                    marker=markers[si % len(markers)], markersize=3.5, linewidth=1.4)
        ax.set_title(f"student {student}", fontsize=10)
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Validation accuracy (%)")
        longest = max(len(r.val_curve) for r in runs)
        ax.set_xlim(0.8, longest + 0.2)
        if longest <= 12:
            ax.set_xticks(range(1, longest + 1))
        style_axes(ax)
    for idx in range(len(students), nrows * cols):
        axes[idx // cols][idx % cols].set_visible(False)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=kind_colour(k, kinds), linewidth=2, label=kind_label(k)) for k in kinds]
    if len(seeds) > 1:
        handles += [Line2D([], [], color="#444444", linestyle=styles[i % len(styles)], marker=markers[i % len(markers)],
                           markersize=3.5, label=f"seed {sd}") for i, sd in enumerate(seeds)]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    fig.suptitle("Validation accuracy per epoch, every run (colour: attack; line style: seed)", fontsize=10)
    return svg_element(fig, prefix, "Line chart: validation accuracy per epoch for every trained student, "
                "coloured by attack, one line style per seed")
