"""`kdaudit selftest`: a fixed small audit on digits compared with stored expected ranges.

The recipe is bundled and fully seeded: a tiny teacher trained in-process, then one audit
(scratch, normal KD, skeptical) of a tiny student. On a new machine or a new torch version an
operator runs it and learns whether the engine still gives the numbers it gave when the
ranges were set (distill/selftest_expected.json: measured values with honest margins for
thread-count and library-version noise). Ranges are injectable so tests can tighten them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdaudit.distill.config import AuditConfig, TrainSchedule
from kdaudit.distill.data import load_splits
from kdaudit.distill.report import Report
from kdaudit.distill.runner import run_audit
from kdaudit.distill.train import Cohort, Member

EXPECTED_PATH = Path(__file__).with_name("selftest_expected.json")
RECIPE: dict[str, Any] = {
    "dataset": "digits",
    "teacher_arch": "cnn-8-8-8-16",
    "teacher_schedule": {"epochs": 10, "batch_size": 32, "lr": 0.05, "augment": False},
    "teacher_seed": 0,
    "audit": {
        "students": ["cnn-4-8-8-16"],
        "attacks": ["normal_kd", "skeptical"],
        "seeds": 1,
        "schedule": {"epochs": 5},
    },
}


@dataclass
class Check:
    name: str
    value: float | None
    low: float
    high: float

    @property
    def ok(self) -> bool:
        return self.value is not None and self.low <= self.value <= self.high


@dataclass
class SelftestResult:
    checks: list[Check]
    seconds: float
    device: str
    report: Report | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def table(self) -> str:
        rows = [f"{'check':<34} {'measured':>9}  {'expected':>15}  result"]
        for c in self.checks:
            v = "—" if c.value is None else f"{c.value:.2f}"
            rows.append(f"{c.name:<34} {v:>9}  {f'[{c.low:g}, {c.high:g}]':>15}  {'ok' if c.ok else 'FAIL'}")
        rows.append(f"selftest {'PASSED' if self.passed else 'FAILED'} in {self.seconds:.1f} s on {self.device}")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "seconds": round(self.seconds, 1),
            "device": self.device,
            "checks": [{"name": c.name, "value": c.value, "low": c.low, "high": c.high, "ok": c.ok} for c in self.checks],
            "recipe": RECIPE,
        }


def load_expected(path: Path = EXPECTED_PATH) -> dict[str, list[float]]:
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def measure(report: Report) -> dict[str, float | None]:
    """The numbers the self-test checks, read from the recipe's report."""
    by = {a.attack: a for a in report.attacks}

    def mean(kind: str) -> float | None:
        return by[kind].accuracy.mean if kind in by else None

    kd = by.get("normal_kd")
    return {
        "teacher_accuracy": report.teacher.accuracy,
        "scratch_accuracy": report.scratch[0].accuracy.mean if report.scratch else None,
        "normal_kd_accuracy": mean("normal_kd"),
        "skeptical_accuracy": mean("skeptical"),
        "skeptical_e_accuracy": mean("skeptical_e"),
        "normal_kd_agreement": kd.fidelity.agreement if kd and kd.fidelity else None,
        "diverged_runs": float(sum(r.status != "ok" for r in report.runs)),
    }


def run_recipe(device: str = "cpu") -> Report:
    splits = load_splits(RECIPE["dataset"])
    teacher_member = Member("selftest-teacher", "scratch", RECIPE["teacher_arch"], RECIPE["teacher_seed"])
    sched = TrainSchedule(**RECIPE["teacher_schedule"])
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher = Cohort([teacher_member], splits, sched, device=dev, stream_seed=RECIPE["teacher_seed"]).train()[0].model
    cfg = AuditConfig(teacher_arch=RECIPE["teacher_arch"], dataset=RECIPE["dataset"], device=device, **RECIPE["audit"])
    return run_audit(cfg, teacher.eval(), "selftest-teacher (trained in-process)")


def run_selftest(expected: dict[str, list[float]] | None = None, *, device: str = "cpu", report: Report | None = None) -> SelftestResult:
    """Run the recipe (or check a given `report`) against `expected` (default: the stored ranges)."""
    started = time.perf_counter()
    expected = load_expected() if expected is None else expected
    report = run_recipe(device) if report is None else report
    measured = measure(report)
    checks = [Check(name, measured.get(name), float(lo), float(hi)) for name, (lo, hi) in expected.items()]
    return SelftestResult(checks, time.perf_counter() - started, report.environment.device, report)
