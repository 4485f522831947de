"""Flags that were renamed when the CLI got one vocabulary, and the error that says what to type now.

Why keep the old names at all: a script written for the old flags should fail with the new
name in the message, not with argparse's bare "unrecognized arguments" (or, worse, with an
abbreviation silently matching some other flag). The old names are hidden from --help and
never do anything but stop the command.
"""

from __future__ import annotations

import argparse

_REMOTE_TEACHER = {
    "--url": "--teacher-url", "--response": "--teacher-response", "--header": "--teacher-header (NAME=VALUE)",
    "--header-env": "--teacher-header-env", "--timeout": "--teacher-timeout", "--max-retries": "--teacher-max-retries",
    "--backoff": "--teacher-backoff", "--concurrency": "--teacher-concurrency", "--max-batch": "--teacher-max-batch",
}

#: command -> {old flag: what to use instead}
RENAMED: dict[str, dict[str, str]] = {
    "audit": {"--budget": "--query-budget", "--output": "--teacher-output (the policy) or --out (the report file)",
              "--teacher-retries": "--teacher-max-retries"},
    "protect": {"--tau": "--temperature"},
    "register-remote": _REMOTE_TEACHER,
    "serve-teacher": {"--response": "--teacher-response"},
    "report": {"--output": "--out"},
    "render": {"--output": "--out"},
}


class _Renamed(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, instead: str, **kw) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", help=argparse.SUPPRESS, **kw)
        self.instead = instead

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} was renamed: use {self.instead}")


def add_renamed_flags(subparsers: argparse._SubParsersAction) -> None:
    """Give each command in RENAMED its old flag names, each of which stops with the new name."""
    for command, renamed in RENAMED.items():
        parser = subparsers.choices[command]
        for old, instead in renamed.items():
            parser.add_argument(old, action=_Renamed, instead=instead)
