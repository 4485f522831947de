"""Accuracy vs teacher queries of data-free runs against saved teachers (the README's digits figures).

One JSON line per run: final test accuracy (and the exit ensemble for skeptical students),
queries, wall seconds, the run's budget curve and its 10k / 100k / 1M milestones.

    kdaudit protect --dataset digits --seed 0 --out T/nasty.safetensors --normal-out T/normal.safetensors
    python benchmarks/datafree_curve.py --teachers T --threads 1 \\
        nasty:datafree_dfme:cnn-8-16-16-32:1000:256:b:0 nasty:datafree_dfme_skeptical:cnn-8-16-16-32:1000:256:b:0

A run spec is teacher:attack:student:iterations:batch:grad:seed, grad `g` = DFAD with the
teacher gradient (grey-box), `b` = black-box; `-` for iterations or batch = the dataset default.
`benchmarks/datafree_table.py` runs a grid of these specs and renders the README's table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kdaudit.distill.budget_curve import evaluate_curve
from kdaudit.distill.budget_table import milestones
from kdaudit.distill.config import DataFreeSettings
from kdaudit.distill.data import Splits, load_splits
from kdaudit.distill.datafree import train_datafree
from kdaudit.distill.train import accuracy, predict
from kdaudit.models.checkpoints import load_teacher
from kdaudit.models.multi_exit import MultiExitNet


def run_spec(spec: str, teachers: Path, arch: str, splits: Splits) -> dict:
    """Train the run `spec` names against `teachers/<teacher>.safetensors`; its figures as a dict."""
    tname, attack, student, it, bs, grad, seed = spec.split(":")
    teacher = load_teacher(teachers / f"{tname}.safetensors", arch, splits.spec.num_classes, splits.spec.in_channels).eval()
    cfg = DataFreeSettings(iterations=None if it == "-" else int(it), batch_size=None if bs == "-" else int(bs),
                           dfad_teacher_gradient=grad == "g")
    t = time.time()
    res = train_datafree(attack, student, int(seed), splits, teacher, cfg)
    m = res.model
    acc = accuracy(predict(m, splits.x_test), splits.y_test)
    acc_e = accuracy(predict(m, splits.x_test, ensemble=True), splits.y_test) if isinstance(m, MultiExitNet) else None
    curve = evaluate_curve(m, res.extra, splits.x_test, splits.y_test)
    plan = res.extra["plan"]
    return {"spec": spec, "acc": round(acc, 2), "acc_e": acc_e and round(acc_e, 2), "access": res.extra["access"],
            "iterations": plan.iterations, "batch_size": plan.batch_size,
            "queries": res.teacher_queries, "seconds": round(time.time() - t, 1), "best": res.best_epoch,
            "diverged": res.diverged, "curve": [(p.queries, p.accuracy) for p in curve],
            "milestones": [r.model_dump() for r in milestones(curve)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--teachers", type=Path, required=True, help="folder with nasty.safetensors / normal.safetensors")
    ap.add_argument("--arch", default="cnn-16-32-32-64")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_splits(args.dataset)
    for spec in args.runs:
        print(json.dumps(run_spec(spec, args.teachers, args.arch, splits)), flush=True)


if __name__ == "__main__":
    main()
