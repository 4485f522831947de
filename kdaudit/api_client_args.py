"""How the API client commands reach the server: --server, --api-key and --json, defined once.

Every command that talks to a running kdaudit API (upload, submit, status, report, ...) takes
these options through `client_options()` as an argparse parent, and opens its connection with
`api_client(args)`, so that the server address, the key's environment variables and the
"no API key" message are the same everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from kdaudit.command_errors import UsageError

DEFAULT_SERVER = "http://127.0.0.1:8000"


def client_options() -> argparse.ArgumentParser:
    """An argparse parent with --server, --api-key and --json."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--server", default=os.environ.get("KDAUDIT_SERVER", DEFAULT_SERVER), help="API base URL (env KDAUDIT_SERVER)")
    p.add_argument("--api-key", default=os.environ.get("KDAUDIT_API_KEY"), help="API key (env KDAUDIT_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the full JSON document")
    return p


def api_client(args: argparse.Namespace):
    """A `kdaudit.service.client.Client` for --server with --api-key (UsageError without a key)."""
    from kdaudit.service.client import Client

    if not args.api_key:
        raise UsageError("an API key is needed: --api-key or KDAUDIT_API_KEY (create one with `kdaudit keys create`)")
    return Client(args.server, args.api_key)


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2))
