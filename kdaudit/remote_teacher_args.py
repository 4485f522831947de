"""The remote-teacher flags, defined once: `audit --teacher-url`, `register-remote` and `serve-teacher`.

Why one place: a teacher behind an HTTP endpoint is described the same way whether the CLI
audits it locally (`audit`), registers it with the service (`register-remote`) or serves one
(`serve-teacher --teacher-response`): the same flag names, one header syntax (NAME=VALUE, like
--teacher-header-env's NAME=ENV_VAR) and the field names of `RemoteTeacherSpec` / the API's
`POST /v1/teachers/remote` body, so that a command line can move between the commands.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from kdaudit.core.errors import InputError

#: same values as `kdaudit.models.remote_teacher.RemoteResponse` (kept here so that building the parser never imports torch)
RESPONSES = ("logits", "probabilities", "labels")


def add_teacher_response_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, required: bool) -> None:
    """--teacher-response: what the endpoint answers (default logits unless `required`)."""
    parser.add_argument("--teacher-response", choices=RESPONSES, required=required, default=None if required else "logits",
                        help="what the endpoint answers: logits, probabilities (softmax) or labels (argmax)"
                        + ("" if required else "; default logits"))


def add_remote_teacher_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The endpoint (--teacher-url, --teacher-response: required if `required`), its headers and
    how patiently to ask it. Unset knobs take RemoteTeacherSpec's defaults."""
    g = parser.add_argument_group("the remote teacher (an HTTP prediction endpoint; protocol: docs/threat-models.md)")
    g.add_argument("--teacher-url", required=required, help="endpoint URL, e.g. https://models.example.com/v1/predict")
    add_teacher_response_option(g, required=required)
    g.add_argument("--teacher-header", action="append", default=[], metavar="NAME=VALUE",
                   help="header sent with every request, e.g. an API key (repeatable; never written to a report)")
    g.add_argument("--teacher-header-env", action="append", default=[], metavar="NAME=ENV_VAR",
                   help="header whose value is read from an environment variable (keeps keys out of shell history)")
    g.add_argument("--teacher-timeout", type=float, help="seconds per request (default 10)")
    g.add_argument("--teacher-max-retries", type=int, help="retries on connection errors, timeouts, 5xx, 429 (default 4)")
    g.add_argument("--teacher-backoff", type=float, help="first retry delay in seconds, doubled each retry (default 0.5)")
    g.add_argument("--teacher-concurrency", type=int, help="requests in flight at once (default 4)")
    g.add_argument("--teacher-max-batch", type=int, help="images per request (default 256)")


def _name_and_value(text: str, flag: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or (flag.endswith("-env") and not value.strip()):
        # no value in the message: it may be a secret
        raise InputError(f"{flag} takes NAME={what}, got {name.strip()[:60]!r}" + ("=..." if sep else ""))
    return name.strip(), value.strip()


def teacher_headers(args: argparse.Namespace) -> dict[str, str]:
    """--teacher-header NAME=VALUE and --teacher-header-env NAME=ENV_VAR (the value read from the
    environment, so that an API key stays out of shell history and `ps`). Whitespace around a
    value is dropped: HTTP does not count it as part of the value."""
    headers = dict(_name_and_value(h, "--teacher-header", "VALUE") for h in args.teacher_header)
    for h in args.teacher_header_env:
        name, var = _name_and_value(h, "--teacher-header-env", "ENV_VAR")
        value = os.environ.get(var)
        if value is None:
            raise InputError(f"--teacher-header-env {name}: environment variable {var} is not set")
        headers[name] = value
    return headers


def remote_teacher_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as `RemoteTeacherSpec` / API fields; flags not given are left out (their defaults apply)."""
    given = {"url": args.teacher_url, "response": args.teacher_response, "headers": teacher_headers(args),
             "timeout_s": args.teacher_timeout, "max_retries": args.teacher_max_retries, "backoff_s": args.teacher_backoff,
             "concurrency": args.teacher_concurrency, "max_batch": args.teacher_max_batch}
    return {k: v for k, v in given.items() if v is not None}
