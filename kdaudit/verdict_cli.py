"""`kdaudit selftest` and `kdaudit compare`: checks that make a verdict trustworthy.

`kdaudit.cli` calls `register(subparsers)`. Handlers return the exit code: selftest 0 when
every measured number lies in its expected range, 1 otherwise; compare 0 always (it reports,
it does not judge), 2 for unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from kdaudit.core.errors import InputError


def cmd_selftest(args: argparse.Namespace) -> int:
    import torch

    from kdaudit.distill.selftest import EXPECTED_PATH, load_expected, run_selftest

    if args.threads:
        torch.set_num_threads(args.threads)
    expected = load_expected(args.expected or EXPECTED_PATH)
    print("kdaudit selftest: training a tiny digits teacher and auditing it (about 5 s on an idle 2-core CPU, longer when it is busy)...",
          file=sys.stderr)
    result = run_selftest(expected, device=args.device)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0 if result.passed else 1


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
    p = subparsers.add_parser("selftest", help="run a fixed small digits audit and check its numbers against expected ranges")
    p.add_argument("--expected", type=Path, help="JSON of {check: [low, high]} (default: the bundled ranges)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="the bundled ranges were measured on CPU")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_selftest)

    p = subparsers.add_parser("compare", help="show what changed between two reports, flagging differences beyond seed noise")
    p.add_argument("a", type=Path, help="report.json before")
    p.add_argument("b", type=Path, help="report.json after")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)
