"""The API client commands: upload, register-remote, submit, status, report, cancel, delete, events.

Each talks to a running kdaudit API over HTTP (api_client_args: --server, --api-key, --json),
prints the object's id (or the document with --json) on stdout and a human sentence on stderr,
and fails with one `kdaudit: ...` line (command_errors). `submit` takes exactly the flags of
`kdaudit audit` that the service can honour (audit_options), and `register-remote` the same
remote-teacher flags as `audit --teacher-url` (remote_teacher_args).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kdaudit.api_client_args import api_client, client_options, print_json
from kdaudit.audit_options import add_audit_options, audit_request_fields
from kdaudit.command_errors import one_line_errors
from kdaudit.preprocess_args import add_preprocess_args, contract_from_args
from kdaudit.remote_teacher_args import add_remote_teacher_options, remote_teacher_fields


def _contract(args: argparse.Namespace) -> dict | None:
    """The --preprocess / --mean / --std / --pixel-scale flags as request fields (None: the dataset's default)."""
    contract = contract_from_args(args)
    return None if contract.is_default else contract.model_dump(mode="json", exclude_none=True)


@one_line_errors
def cmd_upload(args: argparse.Namespace) -> int:
    with api_client(args) as c:
        doc = c.upload_teacher(args.file, args.arch, args.dataset, fmt=args.format, num_classes=args.num_classes,
                               preprocess=_contract(args), expected_accuracy=args.expected_accuracy)
    if args.json:
        print_json(doc)
    else:
        print(doc["id"])
        print(
            f"kdaudit: teacher {doc['id']} uploaded: {doc['architecture'] or 'black box'} ({doc['format']}, "
            f"{doc['parameters']:,} parameters) sha256 {doc['sha256'][:16]}...",
            file=sys.stderr,
        )
    return 0


@one_line_errors
def cmd_register_remote(args: argparse.Namespace) -> int:
    remote = remote_teacher_fields(args)
    with api_client(args) as c:
        doc = c.register_remote(remote.pop("url"), remote.pop("response"), args.dataset, architecture=args.arch,
                                preprocess=_contract(args), expected_accuracy=args.expected_accuracy, **remote)
    if args.json:
        print_json(doc)
    else:
        print(doc["id"])
        names = (doc.get("remote") or {}).get("header_names") or []
        print(
            f"kdaudit: remote teacher {doc['id']} registered: {doc['filename']} ({(doc.get('remote') or {}).get('response')}, "
            f"{doc['dataset']})" + (f", headers stored as secrets: {', '.join(names)}" if names else ""),
            file=sys.stderr,
        )
    return 0


@one_line_errors
def cmd_submit(args: argparse.Namespace) -> int:
    with api_client(args) as c:
        fields = audit_request_fields(args) | ({"dataset_name": args.dataset_name} if args.dataset_name else {})
        doc = c.submit(args.teacher_id, idempotency_key=args.idempotency_key, **fields)
    if args.json:
        print_json(doc)
    else:
        print(doc["id"])
        print(f"kdaudit: audit {doc['id']} {doc['status']} ({doc['progress']['runs_total']} runs)", file=sys.stderr)
    return 0


@one_line_errors
def cmd_status(args: argparse.Namespace) -> int:
    from kdaudit.service.client import describe_progress

    with api_client(args) as c:
        if not args.watch:
            doc = c.status(args.audit_id)
            print_json(doc) if args.json else print(describe_progress(doc))
            return 0
        last = None

        def show(d: dict[str, Any]) -> None:
            nonlocal last
            line = describe_progress(d)
            if line != last:
                print(line, flush=True)
                last = line

        doc = c.wait(args.audit_id, poll=args.interval, on_update=show)
    if args.json:
        print_json(doc)
    return 0 if doc["status"] == "succeeded" else 1


@one_line_errors
def cmd_report(args: argparse.Namespace) -> int:
    with api_client(args) as c:
        doc = c.report(args.audit_id)
    text = json.dumps(doc, indent=2)
    if getattr(args, "html", None):
        from kdaudit.render_command import write_html

        verdict = write_html(doc, args.html, audit_id=args.audit_id)
        if str(args.html) != "-":
            print(f"kdaudit: report page written to {args.html} (verdict: {verdict})", file=sys.stderr)
        if not args.out:
            return 0
    if args.out and str(args.out) != "-":
        Path(args.out).write_text(text + "\n")
        s = doc.get("summary", {})
        print(f"kdaudit: report written to {args.out} (verdict: {s.get('verdict')})", file=sys.stderr)
    else:
        print(text)
    return 0


@one_line_errors
def cmd_cancel(args: argparse.Namespace) -> int:
    from kdaudit.service.client import describe_progress

    with api_client(args) as c:
        doc = c.cancel(args.audit_id)
    print(describe_progress(doc))
    return 0


@one_line_errors
def cmd_delete(args: argparse.Namespace) -> int:
    with api_client(args) as c:
        c.delete(args.kind, args.id, cancel=args.cancel)
    print(f"kdaudit: {args.kind} {args.id} deleted", file=sys.stderr)
    return 0


@one_line_errors
def cmd_events(args: argparse.Namespace) -> int:
    with api_client(args) as c:
        doc = c.events(limit=args.limit, action=args.action)
    if args.json:
        print_json(doc)
        return 0
    for e in doc["items"]:
        print(f"{e['at']}  {e['action']:16} {e['object_type']:8} {e['object_id']}  key={e['key_id'] or e['actor']}  "
              f"from={e['address'] or '-'}")  # fmt: skip
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add upload, register-remote, submit, status, report, cancel, delete and events."""
    client = client_options()

    p = subparsers.add_parser("upload", parents=[client], help="upload a teacher checkpoint to the server")
    p.add_argument("file", type=Path)
    p.add_argument("--arch", help="architecture of a weights file, e.g. resnet18 or cnn-32-64-64-128 (not for ONNX)")
    p.add_argument("--dataset", required=True, help="dataset: digits, mnist, fashion-mnist, cifar10, cifar100, cifar100-coarse")
    p.add_argument("--format", help="checkpoint format (detected if omitted)")
    p.add_argument("--num-classes", type=int)
    add_preprocess_args(p)
    p.set_defaults(func=cmd_upload)

    p = subparsers.add_parser(
        "register-remote",
        parents=[client],
        help="register a teacher served over HTTP (its host must be in the server's remote_teacher_hosts)",
        description="Register a teacher behind an HTTP prediction endpoint (the protocol of `kdaudit serve-teacher`). "
        "Audit it with `kdaudit submit <teacher id>`. Header values and the URL's query string are stored as "
        "secrets on the server and never shown again.",
    )
    p.add_argument("--dataset", required=True, help="dataset/preprocessing it expects: digits, mnist, fashion-mnist, cifar10")
    p.add_argument("--arch", help="informational architecture name (default: remote)")
    add_remote_teacher_options(p, required=True)
    add_preprocess_args(p)
    p.set_defaults(func=cmd_register_remote)

    p = subparsers.add_parser("submit", parents=[client], help="queue an audit of an uploaded or registered teacher",
                              description="The same audit flags as `kdaudit audit`, run by the service.")
    p.add_argument("teacher_id")
    p.add_argument("--idempotency-key", help="retries with the same key return the same audit")
    add_audit_options(p)
    p.add_argument("--dataset-name", help="for --dataset folder: one of the server's image-folder datasets, by name "
                   "(a sub-folder of its KDAUDIT_FOLDER_DATASETS_DIR; never a path)")
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("status", parents=[client], help="show an audit's status")
    p.add_argument("audit_id")
    p.add_argument("--watch", action="store_true", help="poll until it finishes (exit 0 only if it succeeded)")
    p.add_argument("--interval", type=float, default=2.0)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("report", parents=[client], help="download an audit's report JSON")
    p.add_argument("audit_id")
    p.add_argument("-o", "--out", help="file to write (default: stdout)")
    p.add_argument("--html", metavar="OUT_HTML", help="also (or only, without --out) write the report as a self-contained HTML page")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("cancel", parents=[client], help="cancel an audit")
    p.add_argument("audit_id")
    p.set_defaults(func=cmd_cancel)

    p = subparsers.add_parser("delete", parents=[client], help="delete a teacher or an audit and its stored data")
    p.add_argument("kind", choices=["teacher", "audit"])
    p.add_argument("id")
    p.add_argument("--cancel", action="store_true", help="also stop its queued or running audits (else refused)")
    p.set_defaults(func=cmd_delete)

    p = subparsers.add_parser("events", parents=[client], help="show your access trail (uploads, downloads, deletes, keys)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--action")
    p.set_defaults(func=cmd_events)
