"""One-line failures for the service commands (server, operator and API client commands).

Why a decorator of its own: these commands talk to a database, a queue or a server over HTTP,
so besides the engine's `KdauditError` they meet `ApiError`, socket errors and whatever a
broken installation raises. A user must still see one `kdaudit: ...` line on stderr, never a
traceback (set KDAUDIT_DEBUG=1 for one), and exit code 1.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """The command line cannot work as given (e.g. no API key); the message says what to do."""


def fail(message: str, code: int = 1) -> int:
    """Print `kdaudit: message` on stderr and return the exit code."""
    print(f"kdaudit: {message}", file=sys.stderr)
    return code


def one_line_errors(fn: Handler) -> Handler:
    """Run a command handler; every anticipated failure becomes one `kdaudit: ...` line and exit 1."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from kdaudit.core.errors import KdauditError
        from kdaudit.service.client import ApiError

        try:
            return fn(args)
        except (UsageError, ApiError) as e:
            return fail(str(e))
        except KdauditError as e:
            return fail(f"{e.context}: {e}")
        except KeyboardInterrupt:
            return 130
        except OSError as e:
            return fail(f"{e.strerror or e}" + (f": {e.filename}" if getattr(e, "filename", None) else ""))
        except Exception as e:  # last resort: one line, no traceback
            if os.environ.get("KDAUDIT_DEBUG"):
                raise
            return fail(f"unexpected error ({type(e).__name__}: {e}); set KDAUDIT_DEBUG=1 for a traceback")

    return wrapper
