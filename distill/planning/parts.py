"""How an audit's seeds are split into parts that run on different workers.

A seed is the engine's unit of work (one cohort of students sharing one teacher forward per
batch), so a split never cuts a seed in two. This is a planning rule, not storage: the API
uses it to decide whether to split, the store writes one `audit_parts` row per seed set.
Torch-free and database-free on purpose, so both sides import it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def split_seeds(seeds: Iterable[int], parts: int) -> list[list[int]]:
    """Round-robin `seeds` over `min(parts, len(seeds))` disjoint, non-empty parts."""
    seeds = list(seeds)
    n = max(1, min(parts, len(seeds)))
    return [seeds[i::n] for i in range(n)]


def plan_parts(config: dict[str, Any], audit_parts: int) -> list[list[int]] | None:
    """The seed sets an audit (a resolved AuditConfig dump) is split into, or None to run it as
    one task: `audit_parts` is 1, or the audit has a single seed (a seed is the engine's unit
    of work: one cohort sharing one teacher forward per batch)."""
    seeds = int(config.get("seeds", 1))
    if audit_parts <= 1 or seeds <= 1:
        return None
    base = int(config.get("base_seed", 0))
    return split_seeds(range(base, base + seeds), audit_parts)
