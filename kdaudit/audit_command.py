"""`kdaudit audit`: attack a teacher in this process and write a report.

The teacher is a local file or an HTTP endpoint (the remote-teacher flags, remote_teacher_args);
what to audit is the same set of flags `kdaudit submit` sends to the service (audit_options).
Only what needs this machine is audit-only: local datasets, the teacher file's format and
where the report goes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from kdaudit.audit_options import add_audit_options, audit_request_fields
from kdaudit.core.errors import InputError
from kdaudit.preprocess_args import add_preprocess_args, contract_from_args
from kdaudit.remote_teacher_args import add_remote_teacher_options, remote_teacher_fields

#: the output policy a thief gets from an endpoint that answers this (what the API does too)
_POLICY_OF_RESPONSE = {"probabilities": "probs", "labels": "label"}


def register(sub: argparse._SubParsersAction) -> None:
    """Add `audit`."""
    a = sub.add_parser("audit", help="attack a teacher checkpoint with normal and skeptical KD and write a report")
    a.add_argument("teacher", type=Path, nargs="?", help="teacher file: .safetensors, .onnx or a PyTorch state_dict (or --teacher-url)")
    a.add_argument("--arch", help="teacher architecture for a weights file, e.g. cnn-32-64-64-128, resnet18 "
                   "(not needed for ONNX or --teacher-url; `kdaudit inspect FILE` finds it)")
    a.add_argument("--format", choices=["safetensors", "onnx", "pytorch"], help="teacher format (default: detected)")
    a.add_argument("-o", "--out", type=Path, default=Path("report.json"), help="report file (default report.json)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    add_audit_options(a)
    g = a.add_argument_group("local data (audit only)")
    g.add_argument("--dataset-path", help="for --dataset npz: a .npz with arrays x, y (optional x_test, y_test); "
                   "for --dataset folder: a folder with train/<class>/ and test/<class>/ images")
    g.add_argument("--data-root", type=Path, help="folder with mnist.npz / cifar10_jpeg.npz")
    add_remote_teacher_options(a, required=False)
    add_preprocess_args(a, expected=False)
    a.set_defaults(func=cmd_audit)


def audit_config(args: argparse.Namespace):
    """The `AuditConfig` of an `audit` command line."""
    from kdaudit.distill.config import AuditConfig

    fields = audit_request_fields(args)
    threat = fields.setdefault("threat", {})
    if "output" not in threat and args.teacher_url and args.teacher_response in _POLICY_OF_RESPONSE:
        threat["output"] = _POLICY_OF_RESPONSE[args.teacher_response]
    return AuditConfig(
        **fields,
        teacher_arch=args.arch or ("remote" if args.teacher_url else None),
        teacher_input=contract_from_args(args),
        dataset_path=args.dataset_path,
    )


def cmd_audit(args: argparse.Namespace) -> int:
    from kdaudit.distill.data import dataset_spec
    from kdaudit.distill.runner import plan_runs, run_audit
    from kdaudit.models.checkpoints import load_teacher, sha256_file
    from kdaudit.models.remote_teacher import RemoteTeacher, RemoteTeacherSpec
    from kdaudit.terminal_output import ProgressPrinter, print_report

    if (args.teacher is None) == (args.teacher_url is None):
        raise InputError("give a teacher file or --teacher-url (exactly one)")
    config = audit_config(args)
    spec = dataset_spec(config.dataset, config.dataset_path, config.image_size)
    _warn_size(config)
    if args.teacher_url:
        teacher = RemoteTeacher(RemoteTeacherSpec(**remote_teacher_fields(args)), spec.num_classes)
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
