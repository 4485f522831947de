"""The `kdaudit` command line: the one `main()`, which builds the parser from the command modules.

Each command lives in a module named for it (audit_command, protect_command, client_commands,
server_commands, ...) and adds itself with `register(subparsers)`; this module only assembles
them and turns failures into exit codes.

Every failure a user can cause ends as one line `kdaudit: <context>: <message>` and exit
code 2 (bad input) or 1 (anything else we anticipated); tracebacks are for our bugs only.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from kdaudit import __version__
from kdaudit.core.errors import InputError, KdauditError


def build_parser() -> argparse.ArgumentParser:
    from kdaudit import (
        audit_command,
        client_commands,
        compare_command,
        defend_command,
        demo,
        inspect_command,
        operator_commands,
        protect_command,
        render_command,
        selftest_command,
        server_commands,
        teacher_server,
    )
    from kdaudit.renamed_flags import add_renamed_flags

    parser = argparse.ArgumentParser(prog="kdaudit", description="Audit how much a classifier leaks to distillation attacks.")
    parser.add_argument("--version", action="version", version=f"kdaudit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (audit_command, protect_command, defend_command, inspect_command, render_command, compare_command,
                   selftest_command, demo, teacher_server, server_commands, operator_commands, client_commands):
        module.register(sub)
    add_renamed_flags(sub)
    return parser


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
