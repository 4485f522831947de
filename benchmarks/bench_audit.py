"""Naive per-student loop vs the cohort engine, same audit, same process, same device.

(a) naive: one student after another, a host DataLoader with host-side augmentation, the
    teacher run again for every student, a `.item()` host sync every step (the style of
    the peers' training scripts);
(b) cohort: kdaudit's engine — data resident on the device, augmentation as batched
    tensor ops, one teacher forward per batch shared by every student of a seed, no
    per-step host syncs, bf16 autocast + channels_last on CUDA.
Both run the same runs (attacks x students x seeds, plus scratch) for the same epochs and
evaluate on the validation split once per epoch. Prints images/s, wall time, peak memory
and the speed-up; `--json` writes the figures. Teacher weights do not change the cost, so
the teacher is randomly initialised (no training time in the figures).

    python benchmarks/bench_audit.py --preset cpu      # any machine, a few minutes
    python benchmarks/bench_audit.py --preset cpu-panel  # the standard panel's students (~7 min on 2 cores)
    python benchmarks/bench_audit.py --preset cuda     # CIFAR-10, ResNet-18 teacher, GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from kdaudit.distill.access import OutputPolicy
from kdaudit.distill.augment import random_crop_flip
from kdaudit.distill.config import KDSettings, SkepticalSettings, TrainSchedule
from kdaudit.distill.data import load_splits
from kdaudit.distill.losses import hinton_kd_loss, skeptical_loss
from kdaudit.distill.train import Cohort, Member, accuracy, build_member_model, lr_at, predict, resolve_device
from kdaudit.models import build_model
from kdaudit.models.multi_exit import MultiExitNet

PRESETS = {
    "cpu": dict(dataset="digits", teacher="cnn-32-64-64-128", students=["cnn-4-8-8-16", "cnn-8-16-16-32"],
                attacks=["normal_kd", "skeptical"], seeds=2, epochs=3, batch_size=32, fraction=1.0),
    # a teacher much bigger than its students, as in real audits: the shared forward pays off
    "cpu-mnist": dict(dataset="mnist", teacher="cnn-64-128-128-256", students=["cnn-8-16-16-32", "cnn-16-32-32-64"],
                      attacks=["normal_kd", "skeptical"], seeds=2, epochs=1, batch_size=64, fraction=0.05),
    # the same audit with the standard panel's data-available variants (KD at tau 1 and 20, label-only
    # KD, skeptical at AC stage 1): 6 of 7 runs per student and seed need the teacher
    "cpu-panel": dict(dataset="mnist", teacher="cnn-64-128-128-256", students=["cnn-8-16-16-32", "cnn-16-32-32-64"],
                      attacks=["normal_kd", "skeptical"], seeds=2, epochs=1, batch_size=64, fraction=0.05, panel=True),
    "cuda": dict(dataset="cifar10", teacher="resnet18", students=["mobilenetv2", "resnet18"],
                 attacks=["normal_kd", "skeptical"], seeds=3, epochs=2, batch_size=512, fraction=1.0),
}


#: the standard panel's data-available variants (distill/variants.py): (kind, name, kd, skeptical, output)
PANEL_VARIANTS = (
    ("normal_kd", "temperature=1", KDSettings(temperature=1.0), None, None),
    ("normal_kd", "temperature=20", KDSettings(temperature=20.0), None, None),
    ("normal_kd", "output=label", None, None, OutputPolicy.parse("label")),
    ("skeptical", "ac_stage=1", None, SkepticalSettings(ac_stage=1), None),
)


def members_for(args) -> list[Member]:
    out = []
    for seed in range(args.seeds):
        for student in args.students:
            out.append(Member(f"scratch/{student}/seed{seed}", "scratch", student, seed))
            out += [Member(f"{a}/{student}/seed{seed}", a, student, seed) for a in args.attacks]
            if getattr(args, "panel", False):
                out += [Member(f"{name}:{kind}/{student}/seed{seed}", kind, student, seed, kd=kd, skeptical=sk, view=view)
                        for kind, name, kd, sk, view in PANEL_VARIANTS]
    return out


def naive(args, splits, teacher, device) -> float:
    """One run at a time, host loader, teacher per student, per-step host sync."""
    sch = TrainSchedule(epochs=args.epochs, batch_size=args.batch_size, lr=0.05)
    kd, sk = KDSettings(), SkepticalSettings()
    cpu_splits = splits.to("cpu")
    gen = torch.Generator().manual_seed(0)
    for m in members_for(args):
        model = build_member_model(m, cpu_splits).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=sch.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        loader = DataLoader(TensorDataset(cpu_splits.x_train, cpu_splits.y_train), batch_size=sch.batch_size,
                            shuffle=True, drop_last=True, generator=gen, pin_memory=device.type == "cuda")
        total, step = len(loader) * sch.epochs, 0
        for _ in range(sch.epochs):
            model.train()
            for x, y in loader:
                x = random_crop_flip(x, splits.spec.crop_pad, splits.spec.hflip, gen)  # on the host
                x, y = x.to(device), y.to(device)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, sch.lr)
                if m.kind == "scratch":
                    loss = F.cross_entropy(model(x), y)
                else:
                    with torch.no_grad():
                        t = teacher(x)
                    t = m.view.apply(t) if m.view is not None else t
                    mkd, msk = m.kd or kd, m.skeptical or sk
                    tau = 1.0 if m.view is not None and m.view.hard else mkd.temperature
                    if m.kind == "normal_kd":
                        loss = hinton_kd_loss(model(x), t, y, mkd.alpha, tau)
                    else:
                        ac = msk.ac_stage or model.default_ac_stage
                        loss = skeptical_loss(model(x), t, y, ac_index=MultiExitNet.exit_index(ac),
                                              sd_index=MultiExitNet.exit_index(3), alpha=mkd.alpha, tau=tau, beta=msk.sd_beta)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()  # the per-step host sync of a logging loop
                step += 1
            accuracy(predict(model, splits.x_val.to(device)), splits.y_val.to(device))
    return float(len(members_for(args)) * args.epochs * (len(splits.x_train) // args.batch_size) * args.batch_size)


def cohort(args, splits, teacher, device) -> float:
    sch = TrainSchedule(epochs=args.epochs, batch_size=args.batch_size, lr=0.05)
    members = members_for(args)
    for seed in range(args.seeds):
        Cohort([m for m in members if m.seed == seed], splits, sch, reference=teacher, device=device,
               stream_seed=seed).train()
    return float(len(members) * args.epochs * (len(splits.x_train) // args.batch_size) * args.batch_size)


def measure(fn, *a) -> dict:
    device = a[-1]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    images = fn(*a)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
    return {"wall_s": round(wall, 2), "images_per_s": round(images / wall, 1), "peak_mem_mib": round(peak / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--device", default="auto")
    cli = ap.parse_args()
    args = argparse.Namespace(**PRESETS[cli.preset])
    args.epochs = cli.epochs or args.epochs
    args.seeds = cli.seeds or args.seeds
    if cli.threads:
        torch.set_num_threads(cli.threads)
    device = resolve_device(cli.device)
    splits = load_splits(args.dataset, fraction=args.fraction).to(device)
    torch.manual_seed(0)
    teacher = build_model(args.teacher, splits.spec.num_classes, splits.spec.in_channels).to(device).eval()
    runs = len(members_for(args))
    print(f"{args.dataset}: teacher {args.teacher}, students {args.students}, attacks {args.attacks}, "
          f"{args.seeds} seeds -> {runs} runs x {args.epochs} epochs x {len(splits.x_train)} images on {device}")
    cohort(argparse.Namespace(**{**vars(args), "epochs": 1, "seeds": 1}), splits, teacher, device)  # warm-up
    res = {"naive": measure(naive, args, splits, teacher, device), "cohort": measure(cohort, args, splits, teacher, device)}
    res["speedup"] = round(res["naive"]["wall_s"] / res["cohort"]["wall_s"], 2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    res["device"], res["config"] = name, vars(args)
    for k in ("naive", "cohort"):
        r = res[k]
        print(f"{k:>7}: {r['wall_s']:8.2f} s  {r['images_per_s']:10.1f} img/s  peak {r['peak_mem_mib']:.0f} MiB")
    print(f"speed-up (naive / cohort wall time): {res['speedup']}x on {name}")
    if cli.json:
        with open(cli.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
