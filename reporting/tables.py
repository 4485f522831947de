"""The page's tables: one per student architecture (mean ± std, per-seed values, Δbase, queries,
time; the skeptical student's exits; fidelity to the teacher; diverged runs) and the settings
audited (worst case, one table per sweep or panel)."""

from __future__ import annotations

from typing import Any

from kdaudit.distill.report import AttackResult, Report
from kdaudit.reporting.html_format import escape, pct, pts
from kdaudit.reporting.kinds import kind_colour, kind_label, order_kinds
from kdaudit.reporting.verdict_html import VERDICT_WORDS


def _seed_labels(report: Report, student: str, kind: str, n: int) -> list[int]:
    base_kind = "skeptical" if kind == "skeptical_e" else kind
    seeds = sorted(r.seed for r in report.runs if r.student == student and r.kind == base_kind)
    if len(seeds) == n:
        return seeds
    base = int(report.config.get("base_seed", 0) or 0)
    return list(range(base, base + n))


def student_table(report: Report, student: str, kinds_all: list[str]) -> str:
    s = report.summary
    scratch = next((x for x in report.scratch if x.student == student), None)
    smooth = next((x for x in report.label_smoothing if x.student == student), None)
    attacks = [a for a in report.attacks if a.student == student]
    by_kind = {a.attack: a for a in attacks}
    kinds = order_kinds(([] if scratch is None else ["scratch"]) + ([] if smooth is None else ["scratch_ls"]) + [a.attack for a in attacks])
    n_seeds = max([len(scratch.accuracy.runs) if scratch else 0] + [len(a.accuracy.runs) for a in attacks])
    seeds = _seed_labels(report, student, "scratch" if scratch else kinds[0], n_seeds)
    dacc = next((x.delta_acc for x in s.students if x.student == student), None)
    if dacc is None and student == s.best_student:
        dacc = s.delta_acc
    head = "".join(f'<th scope="col" class="num">seed {sd}</th>' for sd in seeds)
    out = [
        f'<section class="student" aria-labelledby="t-{escape(student)}">',
        f'<h3 id="t-{escape(student)}">Student <code>{escape(student)}</code></h3>',
        '<div class="table-wrap"><table>',
        f"<caption>Test accuracy of the <code>{escape(student)}</code> student per attack, in percent; "
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
            f'<tr{cls} data-kind="{escape(kind)}"><th scope="row"><span class="swatch" style="background:{colour}" '
            f'aria-hidden="true"></span>{escape(kind_label(kind))}{mark}</th>'
            f'<td class="num">{st.mean:.2f} ± {st.std:.2f}</td>'
            f'<td class="num">{"—" if st.ci95 is None else f"{st.ci95.low:.2f} – {st.ci95.high:.2f}"}</td>{values}'
            f'<td class="num">{"—" if delta is None else pts(delta)}</td>'
            f'<td class="num">{queries:,}</td>'
            f'<td class="num">{"—" if kind == "skeptical_e" or secs is None else f"{secs:.1f} s"}</td></tr>'
        )
    out.append("</tbody></table></div>")
    out.append(
        f'<p class="dacc">Δacc (best skeptical variant − normal KD) for this student: <strong>{pts(dacc)}</strong>'
        + ("" if dacc is not None else " (needs both normal KD and the skeptical student)")
        + "</p>"
    )
    exits = [r for r in report.runs if r.student == student and r.exit_accuracies]
    if exits:
        names = list(dict.fromkeys(k for r in exits for k in r.exit_accuracies))
        out.append('<details><summary>Accuracy of each exit of the skeptical student</summary><div class="table-wrap"><table>')
        out.append(f"<caption>Test accuracy (%) at each exit of the multi-exit <code>{escape(student)}</code> student</caption>")
        out.append('<thead><tr><th scope="col">run</th>' + "".join(f'<th scope="col" class="num">{escape(n)}</th>' for n in names) + "</tr></thead><tbody>")
        for r in exits:
            cells = "".join(f'<td class="num">{r.exit_accuracies[n]:.2f}</td>' if n in r.exit_accuracies else "<td>—</td>" for n in names)
            out.append(f'<tr><th scope="row">{escape(kind_label(r.kind))}, seed {r.seed}</th>{cells}</tr>')
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
        f"<caption>How closely the <code>{escape(student)}</code> student copies the teacher on the test split (mean over seeds). "
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
            f'<tr data-kind="{escape(kind)}"><th scope="row">{escape(kind_label(kind))}</th><td class="num">{f.agreement:.1f}</td>'
            f'<td class="num">{mis}</td><td class="num">{f.teacher_mistakes}</td>'
            f'<td class="num">{pts(f.max_class_gap)}</td><td class="num">{kl}</td></tr>'
        )
    out.append("</tbody></table></div></details>")
    excluded = [a for a in attacks if a.excluded_runs]
    diverged = [r for r in report.runs if r.student == student and r.status != "ok"]
    if diverged or excluded:
        items = "".join(f"<li>{escape(kind_label(r.kind))}, seed {r.seed}: {escape(r.diverged_reason or 'diverged')}</li>" for r in diverged)
        note = escape("; then ".join(RETRY_NOTE))
        out.append(f'<p class="warn">Diverged runs, excluded from every number above (retries: {note}):</p><ul>{items}</ul>')
    return out


RETRY_NOTE = ("learning rate halved", "learning rate halved and a new seed")


def settings_section(report: Report) -> str:
    """Worst case and one table per sweep/panel, when the audit covered more than one setting."""
    if not report.sweeps and report.summary.worst_case is None:
        return ""
    parts = ['<section aria-labelledby="h-settings">', '<h2 id="h-settings">Settings audited</h2>']
    wc = report.summary.worst_case
    if wc is not None:
        parts.append(
            f'<p id="worst-case"><strong>Worst case for the owner:</strong> {escape(kind_label(wc.attack))} on <code>{escape(wc.student)}</code> '
            f"under {escape(wc.description)} reaches {pct(wc.accuracy.mean)} ± {wc.accuracy.std:.2f} "
            f"({wc.delta_base:+.2f} pts against scratch, {wc.teacher_queries:,} teacher queries; that setting's verdict: "
            f"{escape(VERDICT_WORDS.get(wc.verdict, wc.verdict))}).</p>"
        )
    for table in report.sweeps:
        rows = "".join(
            f"<tr><td>{escape(r.value)}</td><td>{escape(kind_label(r.attack))}</td><td><code>{escape(r.student)}</code></td>"
            f'<td class="num">{r.accuracy.mean:.2f} ± {r.accuracy.std:.2f}</td><td class="num">{r.delta_base:+.2f}</td>'
            f'<td class="num">{r.teacher_queries:,}</td></tr>'
            for r in table.rows
        )
        parts.append(
            f'<div class="table-wrap"><table data-axis="{escape(table.axis)}"><caption>{escape(table.axis)} '
            f"(base: {escape(table.base_value)})</caption><thead><tr><th>{escape(table.axis)}</th><th>attack</th><th>student</th>"
            f'<th class="num">accuracy %</th><th class="num">Δbase</th><th class="num">queries (all seeds)</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>"
        )
    if report.threat is not None:
        parts.append(f'<p class="meta">Billing: {escape(report.threat.billing)}. '
                     f"The auditor's own test-split queries ({report.threat.evaluation_queries:,}) are not billed to any thief.</p>")
        parts += [f'<p class="meta">{escape(n)}</p>' for n in report.threat.notes]
    parts.append("</section>")
    return "\n".join(parts)
