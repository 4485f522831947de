"""`kdaudit compare A B`: what changed between two reports, flagging differences beyond seed noise.

Why: after retraining or re-protecting a teacher, an owner wants to know whether its leakage
really moved. Exit code 0 always (it reports, it does not judge), 2 for unreadable input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import ValidationError

from kdaudit.core.errors import InputError


def _load_report(path: Path):
    from kdaudit.distill.report import Report

    try:
        return Report.model_validate_json(path.read_text())
    except OSError as e:
        raise InputError(f"{path}: {e.strerror or e}") from None
    except ValidationError as e:
        raise InputError(f"{path}: not a kdaudit.report/v1 file ({e.error_count()} problems)") from None


def cmd_compare(args: argparse.Namespace) -> int:
    from kdaudit.distill.compare import compare_reports

    result = compare_reports(_load_report(args.a), _load_report(args.b))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `compare`."""
    p = subparsers.add_parser("compare", help="show what changed between two reports, flagging differences beyond seed noise")
    p.add_argument("a", type=Path, help="report.json before")
    p.add_argument("b", type=Path, help="report.json after")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)
