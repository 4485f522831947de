"""The `kdaudit` command line. Engine commands (audit, protect) run in this process;
service commands (serve, worker, upload, submit, status, report, keys) live in service_cli.

Every failure a user can cause ends as one line `kdaudit: <context>: <message>` and exit
code 2 (bad input) or 1 (anything else we anticipated); tracebacks are for our bugs only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from kdaudit import __version__
from kdaudit.core.errors import InputError, KdauditError
from kdaudit.preprocess_args import add_preprocess_args, contract_from_args


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _add_engine_commands(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("audit", help="attack a teacher checkpoint with normal and skeptical KD and write a report")
    a.add_argument("teacher", type=Path, nargs="?", help="teacher file: .safetensors, .onnx or a PyTorch state_dict (or --teacher-url)")
    a.add_argument("--arch", help="teacher architecture for a weights file, e.g. cnn-32-64-64-128, resnet18 "
                   "(not needed for ONNX or --teacher-url; `kdaudit inspect FILE` finds it)")
    a.add_argument("--teacher-url", help="audit a teacher behind an HTTP prediction endpoint (protocol: docs/threat-models.md)")
    a.add_argument("--teacher-response", choices=["logits", "probabilities", "labels"], default="logits",
                   help="what the endpoint returns (default logits)")
    a.add_argument("--teacher-header", action="append", default=[], metavar="NAME=VALUE",
                   help="HTTP header for the endpoint, e.g. an API key (repeatable; never written to the report)")
    a.add_argument("--teacher-timeout", type=float, help="seconds per request (default 10)")
    a.add_argument("--teacher-retries", type=int, help="retries per request on 5xx/429/timeouts (default 4)")
    a.add_argument("--teacher-concurrency", type=int, help="requests in flight (default 4)")
    a.add_argument("--output", help="what the thief sees: logits (default), probs, probs@T, topK, topK-renorm, roundN, label")
    a.add_argument("--query-budget", type=int, help="cap on billed teacher queries (images) per run, every attack")
    a.add_argument("--billing", choices=["distinct", "every"], help="distinct (default): a repeated image is billed once; every: all sent")
    a.add_argument("--sweep-outputs", type=_csv, help="also audit these output policies, e.g. top5,top1,label")
    a.add_argument("--sweep-fractions", type=_csv, help="also audit these shares of the training data, e.g. 0.5,0.1,0.01")
    a.add_argument("--sweep-ac-stages", type=_csv, help="also audit the skeptical student with the teacher loss at these stages (1-3)")
    a.add_argument("--sweep-temperatures", type=_csv, help="also audit KD at these temperatures, e.g. 1,20")
    a.add_argument("--sweep-grid", action="store_true", help="sweep every combination of the listed values (default: one knob at a time)")
    a.add_argument("--panel", choices=["standard"], help="add the standard attack panel (KD at tau 1/4/20, two AC depths, DFAD, label-only)")
    a.add_argument("--dataset", default="digits",
                   help="digits | mnist | fashion-mnist | cifar10 | cifar100 | cifar100-coarse | npz | folder (default digits)")
    a.add_argument("--dataset-path", help="for --dataset npz: a .npz with arrays x, y (optional x_test, y_test); "
                   "for --dataset folder: a folder with train/<class>/ and test/<class>/ images")
    a.add_argument("--image-size", type=int, help="for --dataset folder: resize images to this square size (default: inferred)")
    a.add_argument("--data-root", type=Path, help="folder with mnist.npz / cifar10_jpeg.npz")
    a.add_argument("--format", choices=["safetensors", "onnx", "pytorch"], help="teacher format (default: detected)")
    a.add_argument("--students", type=_csv, default=["cnn-4-8-8-16"], help="student architectures, comma-separated")
    a.add_argument("--attacks", type=_csv, default=["normal_kd", "skeptical"], help="comma-separated: normal_kd, skeptical, datafree_zskt, datafree_zskt_skeptical, datafree_dfad, datafree_dfad_skeptical, datafree_dfme, datafree_dfme_skeptical (black-box, forward-difference gradients)")
    a.add_argument("--seeds", type=int, default=3, help="seeds per student (default 3; verdicts need intervals, so >= 2)")
    a.add_argument("--label-smoothing", type=float, default=0.1,
                   help="smoothing of the label-smoothing baseline student (default 0.1; 0 turns the baseline off)")
    a.add_argument("--fraction", type=float, default=1.0, help="share of the training set the thief has")
    a.add_argument("--epochs", type=int, help="student epochs (default 40)")
    a.add_argument("--batch-size", type=int)
    a.add_argument("--lr", type=float)
    a.add_argument("--temperature", type=float, help="KD temperature tau (default 4)")
    a.add_argument("--alpha", type=float, help="KD soft-loss weight (default 0.9)")
    a.add_argument("--ac-stage", type=int, help="stage (1-3) whose exit takes the teacher loss in the skeptical student")
    a.add_argument("--budget", type=int, help="data-free attacks: cap on teacher queries (images) per run")
    a.add_argument("--df-iterations", type=int, help="data-free attacks: generator/student rounds (default: dataset's)")
    a.add_argument("--df-batch-size", type=int, help="data-free attacks: generated images per step (default: dataset's)")
    a.add_argument("--dfad-teacher-gradient", action="store_true",
                   help="DFAD: let the generator backpropagate through the teacher (official DFAD; grey-box, not ONNX)")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a.add_argument("--out", type=Path, default=Path("report.json"))
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    add_preprocess_args(a)
    a.add_argument("--force", action="store_true", help="audit even if the teacher sanity check fails (the report says so)")
    a.set_defaults(func=cmd_audit)

    p = sub.add_parser("protect", help="train a nasty (undistillable) teacher and verify it is nasty")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--dataset-path")
    p.add_argument("--arch", help="teacher architecture (default: the dataset's recipe, cnn-16-32-32-64 on digits)")
    p.add_argument("--out", type=Path, default=Path("nasty.safetensors"))
    p.add_argument("--normal-out", type=Path, help="also save the normally trained twin here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-epochs", type=int, help="epochs of the normal teacher (default: dataset recipe)")
    p.add_argument("--nasty-epochs", type=int, help="epochs of the nasty teacher (default: dataset recipe, 150 on digits)")
    p.add_argument("--omega", type=float, help="adversarial weight omega (default: dataset recipe, 0.08 on digits)")
    p.add_argument("--tau", type=float, help="adversarial temperature (default 4)")
    p.add_argument("--no-verify", action="store_true", help="skip the probe-student check")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_protect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdaudit", description="Audit how much a classifier leaks to distillation attacks.")
    parser.add_argument("--version", action="version", version=f"kdaudit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_engine_commands(sub)
    from kdaudit import demo, render_cli, service_cli, verdict_cli

    demo.register_demo(sub)
    service_cli.register(sub)
    render_cli.register(sub)
    verdict_cli.register(sub)
    from kdaudit.teacher_server import register as register_serve_teacher

    register_serve_teacher(sub)
    from kdaudit.inspect_cli import register as register_inspect

    register_inspect(sub)
    return parser


def _audit_config(args: argparse.Namespace):
    from kdaudit.distill.config import AuditConfig

    schedule = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}.items() if v is not None}
    kd = {k: v for k, v in {"temperature": args.temperature, "alpha": args.alpha}.items() if v is not None}
    skeptical = {"ac_stage": args.ac_stage} if args.ac_stage is not None else {}
    datafree = {k: v for k, v in {"budget": args.budget, "iterations": args.df_iterations, "batch_size": args.df_batch_size,
                                  "dfad_teacher_gradient": args.dfad_teacher_gradient or None}.items() if v is not None}
    output = args.output
    if output is None and args.teacher_url:  # what the endpoint reveals, as the API does
        output = {"probabilities": "probs", "labels": "label"}.get(args.teacher_response)
    threat = {k: v for k, v in {"output": output, "query_budget": args.query_budget, "billing": args.billing}.items() if v is not None}
    sweep = {k: v for k, v in {"outputs": args.sweep_outputs, "fractions": args.sweep_fractions,
                               "ac_stages": args.sweep_ac_stages, "temperatures": args.sweep_temperatures}.items() if v}
    if args.sweep_grid:
        sweep["mode"] = "grid"
    return AuditConfig(
        teacher_arch=args.arch or ("remote" if args.teacher_url else None),
        teacher_input=contract_from_args(args),
        expected_accuracy=args.expected_accuracy,
        force=args.force,
        dataset=args.dataset,
        dataset_path=args.dataset_path,
        image_size=args.image_size,
        students=args.students,
        attacks=args.attacks,
        seeds=args.seeds,
        fraction=args.fraction,
        label_smoothing=args.label_smoothing or None,
        device=args.device,
        schedule=schedule,
        kd=kd,
        skeptical=skeptical,
        datafree=datafree,
        threat=threat,
        sweep=sweep,
        panel=args.panel,
    )


def _remote_teacher(args: argparse.Namespace, num_classes: int):
    from kdaudit.distill.remote import RemoteTeacher, RemoteTeacherSpec

    headers = {}
    for h in args.teacher_header:
        name, sep, value = h.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--teacher-header expects NAME=VALUE, got {h.split('=')[0]!r}...")
        headers[name.strip()] = value
    given = {"url": args.teacher_url, "response": args.teacher_response, "headers": headers, "timeout_s": args.teacher_timeout,
             "max_retries": args.teacher_retries, "concurrency": args.teacher_concurrency}
    return RemoteTeacher(RemoteTeacherSpec(**{k: v for k, v in given.items() if v is not None}), num_classes)


def cmd_audit(args: argparse.Namespace) -> int:
    from kdaudit.cli_render import ProgressPrinter, print_report
    from kdaudit.distill.data import dataset_spec
    from kdaudit.distill.runner import plan_runs, run_audit
    from kdaudit.models.checkpoints import load_teacher, sha256_file

    if (args.teacher is None) == (args.teacher_url is None):
        raise InputError("give a teacher file or --teacher-url (exactly one)")
    config = _audit_config(args)
    spec = dataset_spec(config.dataset, config.dataset_path, config.image_size)
    _warn_size(config)
    if args.teacher_url:
        teacher = _remote_teacher(args, spec.num_classes)
        sha = hashlib.sha256(json.dumps(teacher.spec.public_dict(), sort_keys=True).encode()).hexdigest()
    else:
        teacher = load_teacher(args.teacher, config.teacher_arch, spec.num_classes, spec.in_channels, fmt=args.format,
                               image_size=spec.image_size)
        sha = sha256_file(args.teacher)
    with ProgressPrinter(len(plan_runs(config)), config.schedule.epochs, enabled=not args.quiet) as bar:
        report = run_audit(config, teacher, sha, progress=bar.on_event, data_root=args.data_root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.to_json())
    print_report(report)
    print(f"report written to {args.out}")
    return 0


def _warn_size(config) -> None:
    """The service's size limits (KDAUDIT_MAX_*), as warnings: the CLI still runs the audit."""
    from kdaudit.core.settings import get_settings
    from kdaudit.distill.budget import size_warnings

    try:
        found = size_warnings(config.model_dump(mode="json"), get_settings())
    except Exception:  # an estimate must never stop a local audit
        return
    for w in found:
        print(f"kdaudit: warning: {w}; the service would refuse this audit", file=sys.stderr)


def cmd_protect(args: argparse.Namespace) -> int:
    from kdaudit.cli_render import protect_progress
    from kdaudit.distill.protect import ProtectConfig, protect_teacher

    given = {
        "dataset": args.dataset,
        "dataset_path": args.dataset_path,
        "arch": args.arch,
        "seed": args.seed,
        "out": args.out,
        "normal_out": args.normal_out,
        "device": args.device,
        "omega": args.omega,
        "tau": args.tau,
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


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValidationError as e:
        print(f"kdaudit: invalid input: {_validation_message(e)}", file=sys.stderr)
        return 2
    except InputError as e:
        print(f"kdaudit: {e.context}: {e}", file=sys.stderr)
        return 2
    except KdauditError as e:
        print(f"kdaudit: {e.context}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kdaudit: interrupted", file=sys.stderr)
        return 130
    except (OSError, json.JSONDecodeError) as e:
        print(f"kdaudit: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
