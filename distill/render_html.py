"""Render a `kdaudit.report/v1` report as one self-contained HTML page.

    html = render_report_html(report)          # a Report, or its JSON dict

The page needs nothing from the network: CSS is inline, plots are matplotlib (Agg) figures
embedded as inline SVG, and there are no scripts. It holds the verdict in one sentence, the
teacher and the threat model, one table per student architecture (mean ± std, the per-seed
values, Δbase and Δacc) and two plots: accuracy per attack with the seed spread, and the
per-epoch validation curves of every run. Each attack keeps one colour everywhere.

Engine-side: no web framework imports; matplotlib is imported on first use.
"""

from __future__ import annotations

import html
import io
import json
import re
from collections.abc import Iterable
from typing import Any

from kdaudit.distill.render_budget import budget_section
from kdaudit.distill.render_verdict import CSS as VERDICT_CSS
from kdaudit.distill.render_verdict import comparisons_section, protection_badge, rules_paragraphs
from kdaudit.distill.report import MIN_EFFECT_PTS, AttackResult, Report

#: display order of the result kinds; unknown kinds (future attacks) come after these
KIND_ORDER = ("scratch", "scratch_ls", "normal_kd", "skeptical", "skeptical_e", "data_free")
#: Okabe-Ito colours (colour-blind safe); one per kind, in plots and tables alike
KIND_COLOURS = {
    "scratch": "#7a7a7a",
    "scratch_ls": "#b8b8b8",
    "normal_kd": "#0072b2",
    "skeptical": "#d55e00",
    "skeptical_e": "#cc79a7",
    "data_free": "#009e73",
}
_SPARE_COLOURS = ("#e69f00", "#56b4e9", "#8c564b", "#332288", "#999933")
KIND_LABELS = {
    "scratch": "scratch (no teacher)",
    "scratch_ls": "label smoothing (no teacher)",
    "normal_kd": "normal KD",
    "skeptical": "skeptical student",
    "skeptical_e": "skeptical-E (exit ensemble)",
    "data_free": "data-free KD",
}
KIND_DESCRIPTIONS = {
    "scratch": "the same student trained on the thief's labelled images alone, without the teacher: the baseline",
    "scratch_ls": "the same student trained on the same images with label smoothing, without the teacher: the baseline "
    "that tells real knowledge transfer from regularisation",
    "normal_kd": "Hinton knowledge distillation from the teacher's output scores",
    "skeptical": "the skeptical student (Kundu et al. 2021): the teacher's loss enters at an intermediate exit, "
    "self-distillation trains the final head",
    "skeptical_e": "the skeptical student evaluated as the ensemble of its exits",
    "data_free": "distillation without the thief's own images (synthetic queries only)",
}
VERDICT_WORDS = {"leaks": "LEAKS", "resists": "RESISTS", "inconclusive": "INCONCLUSIVE"}


def kind_colour(kind: str, known: Iterable[str] = ()) -> str:
    """The colour of a result kind; kinds outside KIND_COLOURS get a spare colour by position."""
    if kind in KIND_COLOURS:
        return KIND_COLOURS[kind]
    others = sorted({k for k in known if k not in KIND_COLOURS} | {kind})
    return _SPARE_COLOURS[others.index(kind) % len(_SPARE_COLOURS)]


def kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind.replace("_", " "))


def _order(kinds: Iterable[str]) -> list[str]:
    kinds = list(dict.fromkeys(kinds))
    known = [k for k in KIND_ORDER if k in kinds]
    return known + sorted(k for k in kinds if k not in KIND_ORDER)


ATTACK_PHRASES = {
    "normal_kd": "trained with normal KD",
    "skeptical": "trained as a skeptical student",
    "skeptical_e": "trained as a skeptical student and read out through its exit ensemble (skeptical-E)",
    "data_free": "trained with data-free KD",
}


def attack_phrase(kind: str) -> str:
    """How a student of this kind came about, for the verdict sentence."""
    return ATTACK_PHRASES.get(kind, f"trained with {kind_label(kind)}")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(v: float) -> str:
    return f"{v:.2f}%"


def _pts(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f} pts"


# ---------------------------------------------------------------- verdict


def noise_margin(report: Report, attack: AttackResult) -> float:
    """The margin VERDICT_RULE applies to one attack (pts)."""
    scratch = next((s.accuracy for s in report.scratch if s.student == attack.student), None)
    scratch_std = scratch.std if scratch is not None else 0.0
    return max(2 * max(attack.accuracy.std, scratch_std), MIN_EFFECT_PTS)


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
    base = f" ({_pct(scratch)})" if scratch is not None else ""
    attack = f"a {best.student} student {attack_phrase(best.attack)}"
    if s.verdict == "leaks":
        return (
            f"The teacher LEAKS to distillation: {attack} reaches {_pct(best.accuracy.mean)}, "
            f"{best.delta_base:.2f} pts above the same student trained from scratch{base}, "
            f"more than the noise margin of {margin:.2f} pts."
        )
    if s.verdict == "resists":
        return (
            f"The teacher RESISTS distillation: every attack's student stays below the student trained from scratch "
            f"by more than the noise margin; even the best, {attack}, reaches only {_pct(best.accuracy.mean)} "
            f"({best.delta_base:+.2f} pts against scratch{base})."
        )
    return (
        f"The audit is INCONCLUSIVE: the best attack, {attack}, reaches {_pct(best.accuracy.mean)}, "
        f"{best.delta_base:+.2f} pts against the same student trained from scratch{base}, "
        f"within the noise margin of {margin:.2f} pts."
    )


# ---------------------------------------------------------------- plots


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


_SVG_PREAMBLE = re.compile(r"^.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_ID = re.compile(r'\bid="([^"]+)"')


def _svg(fig, prefix: str, title: str) -> str:
    """The figure as an inline <svg> element: no XML preamble, no metadata, no namespace URLs
    (the HTML parser supplies them), ids prefixed so several figures can share one page."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = _METADATA.sub("", _SVG_PREAMBLE.sub("", buf.getvalue(), count=1))
    text = _XMLNS.sub("", text)
    for old in set(_ID.findall(text)):
        new = f"{prefix}-{old}"
        text = text.replace(f'id="{old}"', f'id="{new}"').replace(f'"#{old}"', f'"#{new}"')
        text = text.replace(f"url(#{old})", f"url(#{new})")
    # accessible name; let CSS size it
    text = re.sub(r'<svg\b([^>]*?)\swidth="[^"]*"\s+height="[^"]*"', r"<svg\1", text, count=1)
    return text.replace("<svg", f'<svg role="img" aria-label="{_e(title)}" class="plot"', 1).strip()


def _style_axes(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)


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
    kinds = _order(k for r in rows.values() for k in r)
    n = max(len(kinds), 1)
    width = 0.8 / n
    fig = _figure(max(6.4, 1.6 + 1.5 * len(rows) * n / 2), 3.6)
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
    _style_axes(ax)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=min(len(kinds) + 1, 4), frameon=False)
    return _svg(fig, prefix, "Bar chart: test accuracy per attack and student, mean and standard deviation over seeds, "
                "with single seeds as dots and the teacher's accuracy as a dashed line")


def curves_plot(report: Report, prefix: str = "curves") -> str | None:
    """Validation accuracy per epoch for every run: one panel per student, one colour per kind."""
    runs = [r for r in report.runs if r.val_curve]
    if not runs:
        return None
    students = list(dict.fromkeys(r.student for r in runs))
    kinds = _order(r.kind for r in runs)
    seeds = sorted({r.seed for r in runs})
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    cols = min(len(students), 2)
    nrows = (len(students) + cols - 1) // cols
    fig = _figure(6.4 if cols == 1 else 9.6, 3.4 * nrows + 0.5)
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
        _style_axes(ax)
    for idx in range(len(students), nrows * cols):
        axes[idx // cols][idx % cols].set_visible(False)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=kind_colour(k, kinds), linewidth=2, label=kind_label(k)) for k in kinds]
    if len(seeds) > 1:
        handles += [Line2D([], [], color="#444444", linestyle=styles[i % len(styles)], marker=markers[i % len(markers)],
                           markersize=3.5, label=f"seed {sd}") for i, sd in enumerate(seeds)]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    fig.suptitle("Validation accuracy per epoch, every run (colour: attack; line style: seed)", fontsize=10)
    return _svg(fig, prefix, "Line chart: validation accuracy per epoch for every trained student, "
                "coloured by attack, one line style per seed")


# ---------------------------------------------------------------- tables and page


def _seed_labels(report: Report, student: str, kind: str, n: int) -> list[int]:
    base_kind = "skeptical" if kind == "skeptical_e" else kind
    seeds = sorted(r.seed for r in report.runs if r.student == student and r.kind == base_kind)
    if len(seeds) == n:
        return seeds
    base = int(report.config.get("base_seed", 0) or 0)
    return list(range(base, base + n))


def _student_table(report: Report, student: str, kinds_all: list[str]) -> str:
    s = report.summary
    scratch = next((x for x in report.scratch if x.student == student), None)
    smooth = next((x for x in report.label_smoothing if x.student == student), None)
    attacks = [a for a in report.attacks if a.student == student]
    by_kind = {a.attack: a for a in attacks}
    kinds = _order(([] if scratch is None else ["scratch"]) + ([] if smooth is None else ["scratch_ls"]) + [a.attack for a in attacks])
    n_seeds = max([len(scratch.accuracy.runs) if scratch else 0] + [len(a.accuracy.runs) for a in attacks])
    seeds = _seed_labels(report, student, "scratch" if scratch else kinds[0], n_seeds)
    dacc = next((x.delta_acc for x in s.students if x.student == student), None)
    if dacc is None and student == s.best_student:
        dacc = s.delta_acc
    head = "".join(f'<th scope="col" class="num">seed {sd}</th>' for sd in seeds)
    out = [
        f'<section class="student" aria-labelledby="t-{_e(student)}">',
        f'<h3 id="t-{_e(student)}">Student <code>{_e(student)}</code></h3>',
        '<div class="table-wrap"><table>',
        f"<caption>Test accuracy of the <code>{_e(student)}</code> student per attack, in percent; "
        f"Δbase is the difference to the same student trained from scratch.</caption>",
        '<thead><tr><th scope="col">attack</th><th scope="col" class="num">accuracy % (mean ± std)</th>'
        '<th scope="col" class="num">95% CI of the mean</th>'
        f'{head}<th scope="col" class="num">Δbase</th><th scope="col" class="num">teacher queries</th>'
        '<th scope="col" class="num">train time</th></tr></thead><tbody>',
    ]
    for kind in kinds:
        if kind in ("scratch", "scratch_ls"):
            st = (scratch if kind == "scratch" else smooth).accuracy  # type: ignore[union-attr]
            delta = None if kind == "scratch" or scratch is None else round(st.mean - scratch.accuracy.mean, 3)
            queries = 0
            secs = sum(r.seconds for r in report.runs if r.student == student and r.kind == kind) or None
        else:
            a = by_kind[kind]
            st, delta, queries, secs = a.accuracy, a.delta_base, a.teacher_queries, a.seconds
        best = kind == s.best_attack and student == s.best_student
        cls = ' class="best"' if best else ""
        values = "".join(f'<td class="num">{v:.2f}</td>' for v in st.runs)
        values += '<td class="num">—</td>' * (len(seeds) - len(st.runs))
        colour = kind_colour(kind, kinds_all)
        mark = ' <span class="tag">best attack</span>' if best else ""
        out.append(
            f'<tr{cls} data-kind="{_e(kind)}"><th scope="row"><span class="swatch" style="background:{colour}" '
            f'aria-hidden="true"></span>{_e(kind_label(kind))}{mark}</th>'
            f'<td class="num">{st.mean:.2f} ± {st.std:.2f}</td>'
            f'<td class="num">{"—" if st.ci95 is None else f"{st.ci95.low:.2f} – {st.ci95.high:.2f}"}</td>{values}'
            f'<td class="num">{"—" if delta is None else _pts(delta)}</td>'
            f'<td class="num">{queries:,}</td>'
            f'<td class="num">{"—" if kind == "skeptical_e" or secs is None else f"{secs:.1f} s"}</td></tr>'
        )
    out.append("</tbody></table></div>")
    out.append(
        f'<p class="dacc">Δacc (best skeptical variant − normal KD) for this student: <strong>{_pts(dacc)}</strong>'
        + ("" if dacc is not None else " (needs both normal KD and the skeptical student)")
        + "</p>"
    )
    exits = [r for r in report.runs if r.student == student and r.exit_accuracies]
    if exits:
        names = list(dict.fromkeys(k for r in exits for k in r.exit_accuracies))
        out.append('<details><summary>Accuracy of each exit of the skeptical student</summary><div class="table-wrap"><table>')
        out.append(f"<caption>Test accuracy (%) at each exit of the multi-exit <code>{_e(student)}</code> student</caption>")
        out.append('<thead><tr><th scope="col">run</th>' + "".join(f'<th scope="col" class="num">{_e(n)}</th>' for n in names) + "</tr></thead><tbody>")
        for r in exits:
            cells = "".join(f'<td class="num">{r.exit_accuracies[n]:.2f}</td>' if n in r.exit_accuracies else "<td>—</td>" for n in names)
            out.append(f'<tr><th scope="row">{_e(kind_label(r.kind))}, seed {r.seed}</th>{cells}</tr>')
        out.append("</tbody></table></div></details>")
    out.extend(_fidelity_table(report, student, scratch, attacks))
    out.append("</section>")
    return "\n".join(out)


def _fidelity_table(report: Report, student: str, scratch: Any, attacks: list[AttackResult]) -> list[str]:
    """Fidelity to the teacher (mean over seeds); scratch is the baseline a copier must beat."""
    rows = ([("scratch", scratch.fidelity)] if scratch is not None and scratch.fidelity is not None else []) + [
        (a.attack, a.fidelity) for a in attacks if a.fidelity is not None
    ]
    if not rows:
        return []
    out = [
        '<details><summary>Fidelity to the teacher: agreement, agreement on the teacher\'s mistakes, KL</summary>',
        '<div class="table-wrap"><table>',
        f"<caption>How closely the <code>{_e(student)}</code> student copies the teacher on the test split (mean over seeds). "
        "Agreement on the teacher's mistakes: of the test images the teacher gets wrong, the share where the student "
        "predicts the same wrong class; compare with scratch, which never saw the teacher.</caption>",
        '<thead><tr><th scope="col">attack</th><th scope="col" class="num">top-1 agreement %</th>'
        '<th scope="col" class="num">agreement on teacher mistakes %</th><th scope="col" class="num">teacher mistakes</th>'
        '<th scope="col" class="num">max per-class gap (pts)</th><th scope="col" class="num">KL(T‖S), τ=1</th></tr></thead><tbody>',
    ]
    for kind, f in rows:
        mis = "—" if f.mistake_agreement is None else f"{f.mistake_agreement:.1f}"
        kl = "—" if f.kl is None else f"{f.kl:.3f}"
        out.append(
            f'<tr data-kind="{_e(kind)}"><th scope="row">{_e(kind_label(kind))}</th><td class="num">{f.agreement:.1f}</td>'
            f'<td class="num">{mis}</td><td class="num">{f.teacher_mistakes}</td>'
            f'<td class="num">{_pts(f.max_class_gap)}</td><td class="num">{kl}</td></tr>'
        )
    out.append("</tbody></table></div></details>")
    excluded = [a for a in attacks if a.excluded_runs]
    diverged = [r for r in report.runs if r.student == student and r.status != "ok"]
    if diverged or excluded:
        items = "".join(f"<li>{_e(kind_label(r.kind))}, seed {r.seed}: {_e(r.diverged_reason or 'diverged')}</li>" for r in diverged)
        note = _e("; then ".join(RETRY_NOTE))
        out.append(f'<p class="warn">Diverged runs, excluded from every number above (retries: {note}):</p><ul>{items}</ul>')
    return out


RETRY_NOTE = ("learning rate halved", "learning rate halved and a new seed")


def _threat_model(report: Report, kinds: list[str]) -> str:
    c, d, t = report.config, report.dataset, report.teacher
    kd = c.get("kd") or {}
    sk = c.get("skeptical") or {}
    sched = c.get("schedule") or {}
    students = ", ".join(f"<code>{_e(s)}</code>" for s in (c.get("students") or [x.student for x in report.scratch]))
    queries = max((a.teacher_queries for a in report.attacks), default=0)
    items = "".join(
        f'<li><span class="swatch" style="background:{kind_colour(k, kinds)}" aria-hidden="true"></span>'
        f"<strong>{_e(kind_label(k))}</strong>: {_e(KIND_DESCRIPTIONS.get(k, 'an attack recorded in this report'))}</li>"
        for k in kinds
    )
    pct = f"{d.fraction * 100:g}%"
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
<dt>architecture</dt><dd><code>{_e(t.architecture)}</code></dd>
<dt>test accuracy</dt><dd>{_pct(t.accuracy)} on {_e(d.name)} ({t.num_classes} classes, {d.test_size:,} test images)</dd>
<dt>sha256</dt><dd><code class="hash">{_e(t.sha256)}</code></dd>
</dl>
</div>
<div>
<h2 id="h-threat">Threat model</h2>
<p>The thief can send images to the teacher and read {_e(seen)} (black-box query access,
no weights){_e(budget)}. They hold {pct} of the {_e(d.name)} training split &mdash; {d.train_size:,} labelled images,
{d.val_size:,} more for validation &mdash; and train students of {students}
for {_e(sched.get("epochs", "?"))} epochs, {_e(c.get("seeds", "?"))} seed(s) each
(up to {queries:,} teacher queries per attack and student, summed over seeds).
KD temperature τ = {_e(kd.get("temperature", "?"))}, soft-loss weight α = {_e(kd.get("alpha", "?"))};
skeptical exit stage: {_e(sk.get("ac_stage") or "architecture default")}.</p>
<ul class="kinds">{items}</ul>
</div>
</section>"""


def _cost_paragraph(report: Report) -> str:
    """Cost of theft: the strongest attack's measured cost, extrapolated, with its assumptions."""
    c = report.summary.theft_cost
    if c is None:
        return ""
    items = "".join(f"<li>{_e(a)}</li>" for a in c.assumptions)
    return (f'<p id="theft-cost"><strong>Cost of theft:</strong> {_e(c.summary())}</p>'
            f"<details><summary>Assumptions behind the cost</summary><ul>{items}</ul></details>")


def _settings_section(report: Report) -> str:
    """Worst case and one table per sweep/panel, when the audit covered more than one setting."""
    if not report.sweeps and report.summary.worst_case is None:
        return ""
    parts = ['<section aria-labelledby="h-settings">', '<h2 id="h-settings">Settings audited</h2>']
    wc = report.summary.worst_case
    if wc is not None:
        parts.append(
            f'<p id="worst-case"><strong>Worst case for the owner:</strong> {_e(kind_label(wc.attack))} on <code>{_e(wc.student)}</code> '
            f"under {_e(wc.description)} reaches {_pct(wc.accuracy.mean)} ± {wc.accuracy.std:.2f} "
            f"({wc.delta_base:+.2f} pts against scratch, {wc.teacher_queries:,} teacher queries; that setting's verdict: "
            f"{_e(VERDICT_WORDS.get(wc.verdict, wc.verdict))}).</p>"
        )
    for table in report.sweeps:
        rows = "".join(
            f"<tr><td>{_e(r.value)}</td><td>{_e(kind_label(r.attack))}</td><td><code>{_e(r.student)}</code></td>"
            f'<td class="num">{r.accuracy.mean:.2f} ± {r.accuracy.std:.2f}</td><td class="num">{r.delta_base:+.2f}</td>'
            f'<td class="num">{r.teacher_queries:,}</td></tr>'
            for r in table.rows
        )
        parts.append(
            f'<div class="table-wrap"><table data-axis="{_e(table.axis)}"><caption>{_e(table.axis)} '
            f"(base: {_e(table.base_value)})</caption><thead><tr><th>{_e(table.axis)}</th><th>attack</th><th>student</th>"
            f'<th class="num">accuracy %</th><th class="num">Δbase</th><th class="num">queries (all seeds)</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>"
        )
    if report.threat is not None:
        parts.append(f'<p class="meta">Billing: {_e(report.threat.billing)}. '
                     f"The auditor's own test-split queries ({report.threat.evaluation_queries:,}) are not billed to any thief.</p>")
        parts += [f'<p class="meta">{_e(n)}</p>' for n in report.threat.notes]
    parts.append("</section>")
    return "\n".join(parts)


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
    kinds = _order((["scratch"] if report.scratch else []) + [a.attack for a in report.attacks] + [r.kind for r in report.runs])
    title = title or f"kdaudit report: {t.architecture} on {d.name} ({VERDICT_WORDS.get(s.verdict, s.verdict)})"
    students = list(dict.fromkeys([x.student for x in report.scratch] + [a.student for a in report.attacks]))
    tables = "\n".join(_student_table(report, st, kinds) for st in students)
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
    ident = f" · audit <code>{_e(audit_id)}</code>" if audit_id else ""
    verdict_class = _e(s.verdict)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="kdaudit {_e(env.kdaudit)}">
<title>{_e(title)}</title>
<style>{_CSS}{VERDICT_CSS}</style>
</head>
<body>
<main>
<header>
<p class="meta">kdaudit report{ident} · schema <code>{_e(report.schema_)}</code></p>
<h1>Does <code>{_e(t.architecture)}</code> leak to distillation?</h1>
</header>
<section aria-labelledby="h-verdict">
<h2 id="h-verdict" class="visually-hidden">Verdict</h2>
<p class="verdict {verdict_class}" id="verdict" data-verdict="{verdict_class}"><span class="badges"><span class="badge {verdict_class}">{"LEAKAGE " if s.verdict == "inconclusive" else ""}{_e(VERDICT_WORDS.get(s.verdict, s.verdict))}</span>{protection_badge(report)}</span>{_e(verdict_sentence(report))}</p>
<p class="meta">Best attack: {_e(kind_label(s.best_attack))} on <code>{_e(s.best_student)}</code> ·
Δacc (skeptical − normal KD): {_e(_pts(s.delta_acc))}</p>
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
{_settings_section(report)}
<section aria-labelledby="h-rule">
<h2 id="h-rule">How the verdicts are decided</h2>
{rules_paragraphs(report)}
</section>
<section aria-labelledby="h-prov">
<h2 id="h-prov">Provenance</h2>
<dl>
<dt>kdaudit</dt><dd>{_e(env.kdaudit)}</dd>
<dt>torch</dt><dd>{_e(env.torch)}</dd>
<dt>device</dt><dd>{_e(env.device)}</dd>
<dt>data split</dt><dd><code class="hash">{_e(report.config.get("split_sha256", "n/a"))}</code></dd>
<dt>wall time</dt><dd>{_e(report.config.get("wall_seconds", "n/a"))} s</dd>
</dl>
<details><summary>Full audit configuration</summary><pre>{_e(config)}</pre></details>
</section>
</main>
</body>
</html>
"""
