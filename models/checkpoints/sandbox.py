"""Running the loader child: `python -m kdaudit.models.loader_proc` under the limits of
`rlimits`, with a minimal environment and a wall-clock timeout, and turning however it ended
(an answer, a limit hit, a crash) into a result or a one-line `CheckpointError`.

Untrusted bytes that need more than a header check (torch pickles, ONNX graphs, and all of
`validate_teacher_file`) are parsed only there, so a hostile file can exhaust or crash the
child, never the API process.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdaudit.core.errors import CheckpointError
from kdaudit.core.settings import Settings
from kdaudit.models.checkpoints.errors import CheckpointLimitError, one_line
from kdaudit.models.checkpoints.rlimits import LoaderLimits, apply_limits
from kdaudit.models.checkpoints.safetensors_io import read_safetensors

_ENV_KEEP = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "SYSTEMROOT",
)
#: what a child that ran out of address space prints, depending on where the allocation failed
_OUT_OF_MEMORY_SIGNS = (
    "MemoryError",
    "std::bad_alloc",
    "Cannot allocate memory",
    "failed to map segment",
    "out of memory",
)


def child_env() -> dict[str, str]:
    """A minimal environment: no proxies, no credentials, one thread per math library."""
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONWARNINGS="ignore",
        PYTHONUNBUFFERED="1",
    )
    return env


def _answer_error(result: dict[str, Any]) -> CheckpointError:
    """The child's own refusal (`{"ok": false, ...}`), with its limit when it names one."""
    message = one_line(result.get("error", "loader failed"))
    limit = result.get("limit")
    if isinstance(limit, dict) and isinstance(limit.get("limit"), str):
        return CheckpointLimitError(message, limit["limit"], limit.get("limit_value") or 0, limit.get("requested"))
    return CheckpointError(message)


def _crash_error(proc: subprocess.CompletedProcess[bytes], limits: LoaderLimits) -> CheckpointError:
    """Why a child that gave no answer failed: a limit it hit, a signal, or its last stderr line."""
    rc = proc.returncode
    cpu, memory = limits.cpu_seconds, limits.memory_bytes
    if rc in (-signal.SIGXCPU, -signal.SIGKILL):
        return CheckpointLimitError(
            f"loading the file used more than the {cpu} s CPU limit or was killed", "loader_cpu_seconds", cpu
        )
    if rc == -signal.SIGXFSZ:
        return CheckpointError("loading the file produced more data than allowed")
    stderr = (proc.stderr or b"").decode("utf-8", "replace")
    if any(s in stderr for s in _OUT_OF_MEMORY_SIGNS):
        return CheckpointLimitError(
            f"loading the file needed more than the {memory:,}-byte memory limit", "loader_memory_bytes", memory
        )
    if rc is not None and rc < 0:
        return CheckpointError(f"the loader process crashed (signal {-rc}) on this file")
    last = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "no details")
    return CheckpointError(f"the loader process failed on this file ({one_line(last, 160)})")


def run_loader(args: list[str], settings: Settings, workdir: Path) -> dict[str, Any]:
    """Run `python -m kdaudit.models.loader_proc ARGS` under limits; return its result JSON."""
    limits = LoaderLimits.from_settings(settings)
    result_path = workdir / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "kdaudit.models.loader_proc",
        *args,
        "--result",
        str(result_path),
        "--limits",
        limits.as_arg(),
    ]
    wall = limits.wall_seconds
    try:
        proc = subprocess.run(
            cmd,
            cwd=workdir,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=wall,
            preexec_fn=functools.partial(apply_limits, limits),
            close_fds=True,
        )
    except subprocess.TimeoutExpired:
        raise CheckpointLimitError(
            f"loading the file took longer than {wall} s and was stopped", "loader_cpu_seconds", limits.cpu_seconds
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot start the loader process: {e.strerror or e}") from None
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = None
    if isinstance(result, dict) and result.get("ok") is False:
        raise _answer_error(result)
    if isinstance(result, dict) and result.get("ok") is True and proc.returncode == 0:
        return result
    raise _crash_error(proc, limits)


def load_pytorch_via_child(path: Path, settings: Settings) -> dict[str, torch.Tensor]:
    """The tensors of a torch.save file, unpickled in the child and handed back as safetensors."""
    with tempfile.TemporaryDirectory(prefix="kdaudit-loader-") as tmp:
        out = Path(tmp) / "tensors.safetensors"
        run_loader(
            ["convert", str(path.resolve()), str(out), "--max-parameters", str(settings.max_parameters)],
            settings,
            Path(tmp),
        )
        return read_safetensors(out, settings)
