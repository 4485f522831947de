"""`kdaudit protect`: train a nasty (undistillable) teacher and check with probe students that it is."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add `protect`."""
    p = sub.add_parser("protect", help="train a nasty (undistillable) teacher and verify it is nasty")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--dataset-path")
    p.add_argument("--arch", help="teacher architecture (default: the dataset's recipe, cnn-16-32-32-64 on digits)")
    p.add_argument("-o", "--out", type=Path, default=Path("nasty.safetensors"), help="the nasty teacher's file")
    p.add_argument("--normal-out", type=Path, help="also save the normally trained twin here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-epochs", type=int, help="epochs of the normal teacher (default: dataset recipe)")
    p.add_argument("--nasty-epochs", type=int, help="epochs of the nasty teacher (default: dataset recipe, 150 on digits)")
    p.add_argument("--omega", type=float, help="adversarial weight omega (default: dataset recipe, 0.08 on digits)")
    p.add_argument("--temperature", type=float, help="temperature of the adversarial KL term, tau (default 4)")
    p.add_argument("--no-verify", action="store_true", help="skip the probe-student check")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_protect)


def cmd_protect(args: argparse.Namespace) -> int:
    from kdaudit.distill.protect import ProtectConfig, protect_teacher
    from kdaudit.terminal_output import protect_progress

    given = {
        "dataset": args.dataset,
        "dataset_path": args.dataset_path,
        "arch": args.arch,
        "seed": args.seed,
        "out": args.out,
        "normal_out": args.normal_out,
        "device": args.device,
        "omega": args.omega,
        "tau": args.temperature,
        "verify": not args.no_verify,
        "teacher_schedule": {"epochs": args.teacher_epochs} if args.teacher_epochs else None,
        "nasty_schedule": {"epochs": args.nasty_epochs} if args.nasty_epochs else None,
    }
    cfg = ProtectConfig(**{k: v for k, v in given.items() if v is not None})
    with protect_progress(enabled=not args.quiet) as cb:
        res = protect_teacher(cfg, progress=cb)
    print(f"normal teacher: {res.normal_accuracy:.2f}% test accuracy" + (f" -> {res.normal_path}" if res.normal_path else ""))
    print(f"nasty teacher:  {res.nasty_accuracy:.2f}% test accuracy (epoch {res.nasty_epoch}) -> {res.nasty_path}")
    print(f"sha256 {res.nasty_sha256}")
    if res.verification is not None:
        v = res.verification
        print(f"probe student ({cfg.probe_student}): scratch {v.scratch:.2f}%, KD from normal {v.kd_from_normal:.2f}%, "
              f"KD from nasty {v.kd_from_nasty:.2f}%")
        print(("verified: " if v.is_nasty else "WARNING: ") + v.explanation)
        return 0 if v.is_nasty else 3
    return 0
