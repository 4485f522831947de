"""`kdaudit inspect FILE`: format, matching architecture, parameters, shapes and sha256 of a teacher file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="say what a teacher file is: format, architecture it matches, shapes, sha256")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from kdaudit.models.inspect import inspect_or_error

    info = inspect_or_error(args.file)
    print(json.dumps(info.as_dict(), indent=2) if args.json else "\n".join(info.lines()))
    return 0
