"""The loader child's resource limits: ONE table and ONE clamping rule.

Both sides use this module: the parent applies the limits between fork and exec
(`preexec_fn`, see `sandbox.run_loader`), and the child (`kdaudit.models.loader_proc`)
applies them again first thing, so they hold however the child was started. The parent passes
them on the command line as `--limits M,C,F` (`LoaderLimits.as_arg` / `from_arg`), so the two
can never disagree.

Clamping never raises a limit: a hard limit the process already has that is lower wins, and
so does a lower soft limit. Limits the kernel refuses to set are skipped (the wall-clock
timeout in `sandbox` still holds).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from kdaudit.core.settings import Settings
from kdaudit.models.checkpoints.archive_limits import state_dict_byte_budget

#: RLIMIT_CPU hard limit above the soft one: SIGXCPU first (a clear message), SIGKILL after this
CPU_GRACE_SECONDS = 5


@dataclass(frozen=True)
class LoaderLimits:
    memory_bytes: int
    cpu_seconds: int
    #: the child writes at most one float64 copy of the allowed parameters
    fsize_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> LoaderLimits:
        return cls(
            memory_bytes=settings.loader_memory_bytes,
            cpu_seconds=settings.loader_cpu_seconds,
            fsize_bytes=state_dict_byte_budget(settings.max_parameters),
        )

    def as_arg(self) -> str:
        return f"{self.memory_bytes},{self.cpu_seconds},{self.fsize_bytes}"

    @classmethod
    def from_arg(cls, text: str) -> LoaderLimits:
        memory, cpu, fsize = (int(v) for v in text.split(","))
        return cls(memory, cpu, fsize)

    @property
    def wall_seconds(self) -> int:
        """How long the parent waits for the child: CPU time plus room for I/O and start-up."""
        return max(30, 2 * self.cpu_seconds + 10)

    def table(self) -> tuple[tuple[int, int, int], ...]:
        """(resource, soft, hard) for every limit the child runs under."""
        return (
            (resource.RLIMIT_AS, self.memory_bytes, self.memory_bytes),
            (resource.RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + CPU_GRACE_SECONDS),
            (resource.RLIMIT_FSIZE, self.fsize_bytes, self.fsize_bytes),
            (resource.RLIMIT_CORE, 0, 0),
        )


def clamp(current: tuple[int, int], soft: int, hard: int) -> tuple[int, int]:
    """(soft, hard) to set: the requested values, never above what the process has now."""
    cur_soft, cur_hard = current
    new_hard = hard if cur_hard == resource.RLIM_INFINITY else min(hard, cur_hard)
    new_soft = min(soft, new_hard)
    if cur_soft != resource.RLIM_INFINITY:
        new_soft = min(new_soft, cur_soft)
    return new_soft, new_hard


def apply_limits(limits: LoaderLimits) -> None:
    """Lower this process's limits to `limits` (never raises them)."""
    for res, soft, hard in limits.table():
        current = resource.getrlimit(res)
        wanted = clamp(current, soft, hard)
        if wanted != current:
            try:
                resource.setrlimit(res, wanted)
            except (ValueError, OSError):
                pass
