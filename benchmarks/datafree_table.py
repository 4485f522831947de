"""The README's data-free table: normal vs skeptical ZSKT, DFAD and DFME on both digits teachers, over seeds.

    kdaudit protect --dataset digits --seed 0 --out T/nasty.safetensors --normal-out T/normal.safetensors
    python benchmarks/datafree_table.py run --teachers T --teacher nasty --seeds 0,1 --out df.jsonl
    python benchmarks/datafree_table.py run --teachers T --teacher normal --seeds 0,1 --out df.jsonl
    python benchmarks/datafree_table.py render df.jsonl --svg docs/datafree_budget_curve.svg

`run` appends one JSON line per run (benchmarks/datafree_curve.py's figures) and skips runs already
in the file, so an interrupted grid resumes; two `run`s (one per teacher) can share the two cores.
`render` prints the markdown table (mean and 95 % t-interval over seeds; "skeptical" is the better of
the final exit and the exit ensemble, the report's Delta_acc definition; Delta with Welch's interval)
and draws the mean budget curve of each attack against each teacher.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from datafree_curve import run_spec

from kdaudit.distill.data import load_splits
from kdaudit.distill.intervals import compare, mean_interval

#: (label, attack, iterations, batch, teacher gradient, student): ZSKT at the digits defaults; DFAD and DFME
#: at the scale where the skeptical gain was measured (README, data-free section); grey-box DFAD with two
#: students, because how much the nasty teacher hurts a normal student depends on the student's size
GRID = [
    ("ZSKT (grey-box)", "datafree_zskt", "-", "-", "b", "cnn-8-16-16-32"),
    ("DFAD, teacher gradient (grey-box)", "datafree_dfad", "1000", "256", "g", "cnn-8-16-16-32"),
    ("DFME (black-box)", "datafree_dfme", "1000", "256", "b", "cnn-8-16-16-32"),
    ("DFAD, teacher gradient (grey-box)", "datafree_dfad", "1000", "256", "g", "cnn-4-8-8-16"),
]


def specs(teacher: str, seeds: list[int]) -> list[str]:
    return [f"{teacher}:{attack}{form}:{student}:{it}:{bs}:{g}:{seed}"
            for seed in seeds for _, attack, it, bs, g, student in GRID for form in ("", "_skeptical")]


def run(args) -> None:
    torch.set_num_threads(args.threads)
    done = {json.loads(line)["spec"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    splits = load_splits("digits")
    for spec in specs(args.teacher, [int(s) for s in args.seeds.split(",")]):
        if spec in done or (args.student and spec.split(":")[2] != args.student):
            continue
        row = run_spec(spec, args.teachers, args.arch, splits)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(spec, row["acc"], row["acc_e"], row["queries"], row["seconds"], flush=True)


def _score(row: dict) -> float:
    return max(row["acc"], row["acc_e"]) if row["acc_e"] is not None else row["acc"]


def _cell(xs: list[float]) -> str:
    """Mean, its 95 % t-interval (unclipped: with 2 seeds t = 12.7) and the per-seed values."""
    ci = mean_interval(xs)
    return (f"{statistics.fmean(xs):.1f}" + (f" [{ci.low:.1f}, {ci.high:.1f}]" if ci else "")
            + f" ({' / '.join(f'{x:.1f}' for x in xs)})")


def _delta(a: list[float], b: list[float], floor: float) -> str:
    """Skeptical minus normal with the reports' Welch interval (distill/intervals.py `compare`)."""
    c = compare("skeptical", a, "normal", b, "", floor)
    if c.interval is None:
        return f"{c.diff:+.1f}"
    return f"{c.diff:+.1f} [{c.interval.low:+.1f}, {c.interval.high:+.1f}]"


def render(args) -> None:
    rows = [json.loads(line) for line in args.results.read_text().splitlines()]
    floor = 100.0 / len(load_splits("digits").y_test)  # the reports' rule: one test image's worth of accuracy
    by: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        teacher, attack, student, *_ = r["spec"].split(":")
        by.setdefault((teacher, attack, student), []).append(r)
    print("| attack (access) | student | teacher | iterations × batch | queries/run | seeds | normal | skeptical | Δ skeptical − normal | min/run (normal / skeptical) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    curves = {}
    for teacher in ("nasty", "normal"):
        for label, attack, _it, _bs, _g, student in GRID:
            n, s = by.get((teacher, attack, student), []), by.get((teacher, attack + "_skeptical", student), [])
            if not n or not s:
                continue
            na, sa = [r["acc"] for r in n], [_score(r) for r in s]
            mins = f"{statistics.fmean(r['seconds'] for r in n) / 60:.1f} / {statistics.fmean(r['seconds'] for r in s) / 60:.1f}"
            print(f"| {label} | {student} | {teacher} | {n[0]['iterations']:,} × {n[0]['batch_size']} | {n[0]['queries']:,} | {len(n)} / {len(s)} "
                  f"| {_cell(na)} | {_cell(sa)} | {_delta(sa, na, floor)} | {mins} |")
            if student == GRID[0][5]:  # the plot: one student, every attack
                curves[(teacher, attack)] = n
                curves[(teacher, attack + "_skeptical")] = s
    print("\n| teacher | attack (student " + GRID[0][5] + ") | 10k queries | 100k | 1M |")
    print("|---|---|---|---|---|")
    for (teacher, attack), runs in curves.items():  # the budget curve's milestones, mean over seeds
        cells = []
        for i in range(3):  # a budget beyond the run's spend is not extrapolated
            reached = [r["milestones"][i]["accuracy"] for r in runs if r["milestones"][i]["reached"]]
            cells.append(f"{statistics.fmean(reached):.1f}" if len(reached) == len(runs) else "not reached")
        print(f"| {teacher} | {attack.removeprefix('datafree_')} | " + " | ".join(cells) + " |")
    if args.svg:
        _plot(curves, args.svg)


def _plot(curves: dict, path: Path) -> None:
    """Mean accuracy at each checkpoint over seeds (same plan, so the same query counts), log x."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    colours = {"datafree_zskt": "#1b9e77", "datafree_dfad": "#d95f02", "datafree_dfme": "#7570b3"}
    for i, teacher in enumerate(("nasty", "normal")):
        ax = fig.add_subplot(1, 2, i + 1)
        for (t, attack), runs in curves.items():
            if t != teacher:
                continue
            n = min(len(r["curve"]) for r in runs)
            xs = [runs[0]["curve"][k][0] for k in range(n)]
            ys = [statistics.fmean(r["curve"][k][1] for r in runs) for k in range(n)]
            base = attack.removesuffix("_skeptical")
            ax.plot(xs, ys, color=colours[base], linestyle="-" if attack.endswith("_skeptical") else "--",
                    marker="o", markersize=2, linewidth=1.2,
                    label=f"{base.removeprefix('datafree_').upper()} {'skeptical' if attack != base else 'normal'}")
        for b in (10_000, 100_000, 1_000_000):
            ax.axvline(b, color="#bbbbbb", linewidth=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_title(f"{teacher} teacher", fontsize=10)
        ax.set_xlabel("teacher queries (log scale)")
        ax.set_ylabel("student test accuracy (%)")
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    fig.axes[0].legend(fontsize=7, frameon=False, loc="lower right")
    fig.suptitle("Data-free theft of the digits teachers: what a thief keeps after N queries (mean over seeds)", fontsize=10)
    with matplotlib.rc_context({"svg.hashsalt": "datafree"}):
        fig.savefig(path, format="svg", metadata={"Date": None, "Creator": None})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--teachers", type=Path, required=True, help="folder with nasty.safetensors / normal.safetensors")
    r.add_argument("--teacher", choices=["nasty", "normal"], required=True)
    r.add_argument("--seeds", default="0,1")
    r.add_argument("--student", help="only the grid's rows with this student")
    r.add_argument("--arch", default="cnn-16-32-32-64")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", type=Path, required=True)
    g = sub.add_parser("render")
    g.add_argument("results", type=Path)
    g.add_argument("--svg", type=Path)
    args = ap.parse_args()
    (run if args.cmd == "run" else render)(args)


if __name__ == "__main__":
    main()
