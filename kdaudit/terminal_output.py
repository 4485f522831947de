"""Terminal output for the CLI: progress bars and the audit table (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kdaudit.distill.report import Report

console = Console(stderr=False)


class ProgressPrinter:
    """Turns engine ProgressEvents into a progress bar over all epochs of all runs."""

    def __init__(self, total_runs: int, epochs: int, enabled: bool = True):
        self.enabled = enabled
        self.total = total_runs * epochs
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)
        self.task = None
        self.done_runs = 0
        self.total_runs = total_runs

    def __enter__(self) -> ProgressPrinter:
        self.progress.__enter__()
        self.task = self.progress.add_task("training", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def on_event(self, e) -> None:
        if e.kind == "epoch_end":
            self.progress.advance(self.task)
            self.progress.update(self.task, description=f"{e.run_key} epoch {e.epoch}/{e.epochs} val {e.val_accuracy:.1f}%")
        elif e.kind == "run_finished":
            self.done_runs += 1
            if self.enabled and e.record is not None:
                self.progress.console.print(f"  finished {e.run_key}: test {e.record.test_accuracy:.2f}% ({self.done_runs}/{self.total_runs})")


@contextmanager
def protect_progress(enabled: bool = True) -> Iterator[Callable]:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not enabled) as prog:
        tasks: dict[str, int] = {}

        def cb(stage: str, ep) -> None:
            key = f"{stage}:{ep.member.key}"
            if key not in tasks:
                tasks[key] = prog.add_task(stage, total=ep.epochs)
            prog.update(tasks[key], completed=ep.epoch, description=f"{stage} (val {ep.val_accuracy:.1f}%)")

        yield cb


def fmt_stats(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def report_table(report: Report, title: str | None = None) -> Table:
    t = Table(title=title or f"teacher {report.teacher.architecture or report.teacher.format} ({report.teacher.accuracy:.2f}%) on {report.dataset.name}")
    for col in ("student", "attack", "accuracy % (mean ± std)", "runs", "Δbase"):
        t.add_column(col)
    smooth = {x.student: x for x in report.label_smoothing}
    for s in report.scratch:
        t.add_row(s.student, "scratch", fmt_stats(s.accuracy.mean, s.accuracy.std), " ".join(f"{v:.1f}" for v in s.accuracy.runs), "—")
        if s.student in smooth:
            ls = smooth[s.student].accuracy
            t.add_row("", "label smoothing", fmt_stats(ls.mean, ls.std), " ".join(f"{v:.1f}" for v in ls.runs),
                      f"{ls.mean - s.accuracy.mean:+.2f}")
        for a in (a for a in report.attacks if a.student == s.student):
            t.add_row("", a.attack, fmt_stats(a.accuracy.mean, a.accuracy.std), " ".join(f"{v:.1f}" for v in a.accuracy.runs), f"{a.delta_base:+.2f}")
    return t


def sweep_table(table) -> Table:
    t = Table(title=f"{table.axis} (base: {table.base_value})")
    for col in (table.axis, "attack", "student", "accuracy % (mean ± std)", "Δbase", "queries (all seeds)"):
        t.add_column(col)
    for r in table.rows:
        t.add_row(r.value, r.attack, r.student, fmt_stats(r.accuracy.mean, r.accuracy.std), f"{r.delta_base:+.2f}", f"{r.teacher_queries:,}")
    return t


def print_report(report: Report) -> None:
    console.print(report_table(report))
    for table in report.sweeps:
        console.print(sweep_table(table))
    s = report.summary
    dacc = f"{s.delta_acc:+.2f}" if s.delta_acc is not None else "n/a"
    protection = f", protection [bold]{s.protection.upper()}[/bold]" if s.protection else ""
    console.print(f"Δacc (skeptical − normal KD) = {dacc} pts; best attack: {s.best_attack} → {s.best_student}; "
                  f"verdict: leakage [bold]{s.verdict.upper()}[/bold]{protection}")
    if s.headline:  # the owner's sentence: the same string as the JSON's summary.headline and the HTML page
        console.print(s.headline, markup=False)
    if s.theft_cost is not None:
        console.print(f"cost of theft: {s.theft_cost.summary()}", markup=False)
    th = report.threat
    if th is not None and (th.output != "logits" or th.query_budget or th.remote):
        console.print(f"threat model: {th.output_description}; budget {th.query_budget or 'none'}; "
                      f"{th.budget_stopped_runs} run(s) stopped by the budget", markup=False)
