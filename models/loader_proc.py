"""The resource-limited child that parses untrusted teacher files (run as a module, never imported).

    python -m kdaudit.models.loader_proc convert SRC DST --max-parameters N --result R --limits M,C,F
    python -m kdaudit.models.loader_proc validate SRC --arch A --num-classes K --in-channels C
        [--fmt F] --settings JSON --result R --limits M,C,F

The child has no network (`_deny_network`: an empty network namespace where the kernel
allows it, and a socket module that refuses to connect either way).

`convert` runs `torch.load(weights_only=True)` on a PyTorch state_dict file and writes its
tensors to DST (safetensors). `validate` runs the whole of `validate_teacher_file` here.
Either way the answer is one JSON object in R: `{"ok": true, ...}` or
`{"ok": false, "error": "<one line>"}`. The parent starts this process with RLIMIT_AS /
RLIMIT_CPU / RLIMIT_FSIZE already set (preexec_fn); they are applied again first thing here
so the limits hold however the process was started. Both use the one table of
`kdaudit.models.checkpoints.rlimits`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict


def _write(result_path: str, payload: dict) -> None:
    tmp = result_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f)
    os.replace(tmp, result_path)


def _deny_network() -> str:
    """Cut this process off the network before it parses anything.

    1. Where the kernel allows unprivileged user namespaces, move into a new, empty network
       namespace (only a down loopback: no route anywhere). Must run while single-threaded,
       i.e. before torch is imported.
    2. In any case, Python's socket API refuses to connect, bind, send or resolve names.
    Returns "netns" or "sockets-only" (what held), for tests and logs.
    """
    how = "sockets-only"
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            clone_newuser, clone_newnet = 0x10000000, 0x40000000
            if libc.unshare(clone_newuser | clone_newnet) == 0:
                how = "netns"
        except Exception:
            pass
    import socket

    def _refuse(*_a, **_k):
        raise OSError(101, "network access is disabled in the kdaudit loader process")

    for name in ("connect", "connect_ex", "bind", "sendto", "sendmsg", "listen"):
        setattr(socket.socket, name, _refuse)
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_server"):
        setattr(socket, name, _refuse)
    return how


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdaudit.models.loader_proc")
    parser.add_argument("mode", choices=["convert", "validate"])
    parser.add_argument("src")
    parser.add_argument("dst", nargs="?")
    parser.add_argument("--result", required=True)
    parser.add_argument("--limits", required=True, help="memory_bytes,cpu_seconds,fsize_bytes")
    parser.add_argument("--max-parameters", type=int, default=100_000_000)
    parser.add_argument("--arch")
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--in-channels", type=int)
    parser.add_argument("--fmt")
    parser.add_argument("--settings", default="{}")
    args = parser.parse_args(argv)

    from kdaudit.models.checkpoints.rlimits import LoaderLimits, apply_limits

    limits = LoaderLimits.from_arg(args.limits)
    apply_limits(limits)  # the same table and clamping the parent applied before exec
    memory = limits.memory_bytes

    _deny_network()

    # The rest only after the limits are in place (the parent set them before exec as well).
    from pathlib import Path

    from kdaudit.core.errors import KdauditError
    from kdaudit.core.settings import Settings
    from kdaudit.models import checkpoints

    try:
        if args.mode == "convert":
            from safetensors.torch import save_file

            tensors = checkpoints.torch_load_state_dict(Path(args.src), args.max_parameters)
            save_file(tensors, args.dst)
            _write(args.result, {"ok": True, "tensors": len(tensors)})
        else:
            settings = Settings(**json.loads(args.settings))
            info = checkpoints.validate_in_process(
                Path(args.src), args.arch, args.num_classes, args.in_channels, args.fmt, settings
            )
            _write(args.result, {"ok": True, "info": asdict(info)})
    except checkpoints.CheckpointLimitError as e:
        _write(args.result, {"ok": False, "error": str(e), "limit": e.as_dict()})
    except KdauditError as e:
        _write(args.result, {"ok": False, "error": str(e)})
    except MemoryError:
        _write(
            args.result,
            {
                "ok": False,
                "error": f"loading the file needed more than the {memory:,}-byte memory limit",
                "limit": {"limit": "loader_memory_bytes", "limit_value": memory, "requested": None},
            },
        )
    except RecursionError:
        _write(args.result, {"ok": False, "error": "file is nested too deeply to load"})
    except Exception as e:  # one line for the user, never a traceback
        _write(
            args.result,
            {
                "ok": False,
                "error": f"cannot load the file ({type(e).__name__}: {' '.join(str(e).split())[:200]})",
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
