"""`kdaudit selftest`: a fixed small digits audit whose numbers must land in their expected ranges.

Why: before trusting a verdict on a new machine or install, an owner can check that this
kdaudit reproduces the measured behaviour. Exit code 0 when every number lies in its range,
1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `selftest`."""
    p = subparsers.add_parser("selftest", help="run a fixed small digits audit and check its numbers against expected ranges")
    p.add_argument("--expected", type=Path, help="JSON of {check: [low, high]} (default: the bundled ranges)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="the bundled ranges were measured on CPU")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_selftest)

