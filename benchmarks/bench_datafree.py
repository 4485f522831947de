"""The paper's data-free setting in one command: nasty (and normal) teacher -> data-free students.

Kundu et al. 2021, Table 4 family: CIFAR-10, a ResNet nasty teacher (Ma et al. 2021), ResNet-18
students trained without data by DFAD (grey-box, the generator backpropagates through the
teacher, as the official DFAD code does) and DFME (black-box, forward-difference gradients),
normal vs skeptical. The script trains the two teachers with `protect`, audits each with
`run_audit`, and prints (and with `--results` appends to benchmarks/RESULTS.md) one row per
teacher x attack: mean accuracy over seeds, teacher queries and minutes per run, device and date.

    python benchmarks/bench_datafree.py --preset cifar10 --results benchmarks/RESULTS.md   # one H100/H200
    python benchmarks/bench_datafree.py --preset tiny --threads 1                          # CPU smoke, ~40 s

Time on one H100/H200 (`cifar10` preset): not measured yet (no device was lent when this was
written). Estimate: two ResNet-34 teachers x 120 epochs at ~10k img/s ~ 20 min, then
2 teachers x 4 attacks x 1 seed data-free runs of 4,000 iterations x batch 256 (DFAD: 6 x 256
teacher + student passes an iteration; DFME: 7 x 256) ~ 8 min each ~ 65 min; about 1.5 h in all.
The papers ran 25k (DFAD) / ~11k (DFME, 20M queries) iterations: raise `--iterations` for that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from kdaudit.distill.config import AuditConfig
from kdaudit.distill.protect import ProtectConfig, protect_teacher
from kdaudit.distill.runner import run_audit
from kdaudit.distill.train import resolve_device
from kdaudit.models.checkpoints import load_teacher

ATTACKS = ["datafree_dfad", "datafree_dfad_skeptical", "datafree_dfme", "datafree_dfme_skeptical"]
PRESETS = {
    # the paper's setting (ResNet-34 nasty teacher -> ResNet-18; ResNet-50 with --teacher resnet50)
    "cifar10": dict(dataset="cifar10", teacher="resnet34", student="resnet18", teacher_epochs=120, seeds=1,
                    iterations=4_000, batch_size=256, scratch_epochs=30, channels=3),
    # CPU smoke test of the same pipeline: digits, tiny nets, a few iterations (not a measurement)
    "tiny": dict(dataset="digits", teacher="cnn-8-16-16-32", student="cnn-4-8-8-16", teacher_epochs=3, seeds=1,
                 iterations=4, batch_size=16, scratch_epochs=1, channels=1),
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--teacher", help="teacher architecture (default: the preset's)")
    ap.add_argument("--iterations", type=int, help="data-free iterations per run (default: the preset's)")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=Path("bench_datafree_out"), help="teachers and reports go here")
    ap.add_argument("--results", type=Path, help="append a markdown table to this file (benchmarks/RESULTS.md)")
    ap.add_argument("--json", type=Path, help="write the figures as JSON")
    ap.add_argument("--threads", type=int, help="torch CPU threads (tiny batches on a shared CPU run faster on 1)")
    args = ap.parse_args(argv)
    p = dict(PRESETS[args.preset])
    p.update({k: v for k, v in {"teacher": args.teacher, "iterations": args.iterations, "seeds": args.seeds}.items() if v})
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    sched = {"epochs": p["teacher_epochs"]}
    prot = protect_teacher(ProtectConfig(dataset=p["dataset"], arch=p["teacher"], seed=0, out=args.out / "nasty.safetensors",
                                         normal_out=args.out / "normal.safetensors", verify=False, device=args.device,
                                         teacher_schedule=sched, nasty_schedule=sched))
    teacher_minutes = (time.perf_counter() - started) / 60
    print(f"teachers trained: {teacher_minutes:.1f} min", flush=True)
    rows = []
    for name, path in (("nasty", prot.nasty_path), ("normal", prot.normal_path)):
        teacher = load_teacher(path, p["teacher"], 10, p["channels"]).to(device).eval()
        cfg = AuditConfig(teacher_arch=p["teacher"], dataset=p["dataset"], students=[p["student"]], attacks=ATTACKS,
                          seeds=p["seeds"], device=args.device, schedule={"epochs": p["scratch_epochs"]}, force=True,
                          datafree={"iterations": p["iterations"], "batch_size": p["batch_size"], "dfad_teacher_gradient": True})
        report = run_audit(cfg, teacher, name)
        print(f"{name} teacher audited: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        (args.out / f"report-{name}.json").write_text(report.to_json())
        for attack in ATTACKS:
            runs = [r for r in report.runs if r.kind == attack]
            rows.append({
                "teacher": f"{name} {p['teacher']} ({report.teacher.accuracy:.1f}%)", "attack": attack,
                "access": runs[0].access, "accuracy": round(statistics.fmean(r.test_accuracy for r in runs), 2),
                "runs": len(runs), "queries": runs[0].teacher_queries,
                "minutes": round(statistics.fmean(r.seconds for r in runs) / 60, 2),
            })
    res = {"preset": args.preset, "device": str(torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"),
           "date": dt.date.today().isoformat(), "teacher_minutes": round(teacher_minutes, 1),
           "total_minutes": round((time.perf_counter() - started) / 60, 1), "settings": p, "rows": rows}
    table = ["| teacher | attack | access | accuracy | runs | queries/run | min/run |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['teacher']} | {r['attack']} | {r['access']} | {r['accuracy']:.1f} | {r['runs']} | {r['queries']:,} | {r['minutes']:.1f} |"
              for r in rows]
    text = "\n".join(table)
    print(text)
    print(f"teachers {res['teacher_minutes']} min, total {res['total_minutes']} min on {res['device']}")
    if args.results:
        with args.results.open("a") as f:
            f.write(f"\n## Data-free, {p['dataset']} ({args.preset} preset), {res['device']}, {res['date']}\n\n"
                    f"`python benchmarks/bench_datafree.py --preset {args.preset}`: {p['teacher']} teachers "
                    f"({p['teacher_epochs']} epochs) -> {p['student']}, {p['iterations']:,} iterations x batch "
                    f"{p['batch_size']}; total {res['total_minutes']} min.\n\n{text}\n")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
