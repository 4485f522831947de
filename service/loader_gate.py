"""How many checkpoint-loader processes an API process runs at once, in all and per tenant.

Validating an upload starts a loader child (models/loader_proc.py) that may use up to
`loader_memory_bytes` and `loader_cpu_seconds`; 12 parallel uploads from one key had started
12 children (3.5 GB, 26 s each on 2 cores). The gate admits at most `max_concurrent_loaders`
children per API process and `max_concurrent_loaders_per_tenant` per tenant; an upload beyond
either is answered 429 with Retry-After, naming the limit, rather than queued: a queued
upload would hold its connection and temp file meanwhile. The slot is taken when the upload
is on disk, just around the child, so a slow client never holds one while it sends.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from kdaudit.service.limits import limit_problem

#: seconds a refused upload is told to wait (a validation takes seconds to tens of seconds)
RETRY_AFTER = 10


class LoaderGate:
    def __init__(self, total: int, per_tenant: int) -> None:
        self.total, self.per_tenant = int(total), int(per_tenant)
        self._lock = threading.Lock()
        self._running = 0
        self._by_tenant: Counter[str] = Counter()

    @property
    def running(self) -> int:
        return self._running

    @contextmanager
    def slot(self, tenant_id: str) -> Iterator[None]:
        """Hold one loader slot for `tenant_id`, or raise a 429 problem naming the full limit."""
        with self._lock:
            if self._by_tenant[tenant_id] >= self.per_tenant:
                raise self._refusal("max_concurrent_loaders_per_tenant", self.per_tenant, self._by_tenant[tenant_id],
                                    "uploads of yours are being validated")  # fmt: skip
            if self._running >= self.total:
                raise self._refusal("max_concurrent_loaders", self.total, self._running,
                                    "uploads are being validated on this server")  # fmt: skip
            self._running += 1
            self._by_tenant[tenant_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._by_tenant[tenant_id] -= 1
                if self._by_tenant[tenant_id] <= 0:
                    del self._by_tenant[tenant_id]

    @staticmethod
    def _refusal(limit: str, value: int, running: int, what: str):
        return limit_problem(
            429, limit, value, f"{running} {what} already, the limit is {value} at a time ({limit}); "
            f"retry in {RETRY_AFTER} s", requested=running + 1, headers={"Retry-After": str(RETRY_AFTER)},
            slug="loader-busy",
        )  # fmt: skip
