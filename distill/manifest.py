"""The audit's provenance: what produced the numbers (versions, commit, device, seeds, selection rules)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

import kdaudit
from kdaudit.distill.config import DATA_FREE_ATTACKS, AuditConfig
from kdaudit.distill.data import Splits
from kdaudit.distill.datafree import SELECTION_RULE as DATAFREE_SELECTION_RULE
from kdaudit.distill.datafree import WATCHDOG_RULE as DATAFREE_WATCHDOG_RULE
from kdaudit.distill.planning.runs import RunSpec
from kdaudit.distill.report import Manifest, RunRecord
from kdaudit.distill.retry import RETRY_PLAN
from kdaudit.distill.variants import expand_variants


def device_name(device: torch.device) -> str:
    return torch.cuda.getdevice_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the tree kdaudit's engine was loaded from; None whenever that fails."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except Exception:  # noqa: BLE001 - provenance is best effort: never fail an audit over it
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) in (40, 64) else None


def selection_rules(config: AuditConfig) -> dict[str, str]:
    rules = {
        "reported_split": "test: every accuracy and fidelity number; never used to choose anything",
        "checkpoint_split": f"validation ({config.val_fraction:g} of the training data, split seed {config.base_seed})",
        "students": f"best validation accuracy over all epochs 1..{config.schedule.epochs} (rule best_val)",
        "divergence": "non-finite loss, or validation accuracy never above chance + 2 pts over >= 2 epochs; "
        "retried: " + "; then ".join(c for _, _, c in RETRY_PLAN) + "; still diverged = excluded from every mean",
    }
    if any(a in DATA_FREE_ATTACKS for v in expand_variants(config) for a in v.attacks):
        rules["data_free"] = DATAFREE_SELECTION_RULE
        rules["data_free_divergence"] = DATAFREE_WATCHDOG_RULE
    return rules


def build_manifest(config: AuditConfig, runs: list[RunSpec], records: dict[str, RunRecord], splits: Splits,
                   teacher_sha256: str, device: torch.device, wall_seconds: float) -> Manifest:
    return Manifest(
        teacher_sha256=teacher_sha256,
        split_sha256=splits.split_sha256,
        config=config.model_dump(mode="json"),
        kdaudit_version=kdaudit.__version__,
        git_commit=git_commit(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=device_name(device),
        seeds=list(range(config.base_seed, config.base_seed + config.seeds)),
        selection=selection_rules(config),
        timing={"wall_seconds": round(wall_seconds, 1), "run_seconds": {r.key: records[r.key].seconds for r in runs}},
    )
