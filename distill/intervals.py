"""Confidence intervals over seeds: the statistics every verdict stands on.

Seeds are few (3 by default), so intervals use Student's t, not a normal approximation:
a mean's interval is the one-sample t-interval, a difference between two students is a
Welch t-interval (unequal variances, Welch-Satterthwaite degrees of freedom), both at 95%.
A comparison is *settled* only when its interval excludes zero and its mean is at least
MIN_EFFECT_PTS from zero; one seed has no spread, so it never settles anything. When a
comparison is not settled, `seeds_needed` estimates how many seeds per student would likely
settle it if the observed difference and spreads held.

No report imports here: the schema (distill/report.py) and the rules (distill/verdicts.py)
both build on this module.
"""

from __future__ import annotations

import math
import statistics
from typing import Literal

from pydantic import BaseModel, Field
from scipy import stats as _st

CONFIDENCE = 0.95
#: a difference smaller than this is not an effect, however many seeds measure it (points)
MIN_EFFECT_PTS = 1.0
#: seeds_needed is searched up to this; beyond it the report says "more than"
MAX_SEEDS = 50
INTERVAL_METHOD = (
    f"{CONFIDENCE:.0%} t-intervals over seeds: Student's t for a mean, Welch's t (Welch-Satterthwaite df) for a "
    "difference; a per-seed std below one test image's worth of accuracy is raised to it"
)

Outcome = Literal["higher", "lower", "unsettled"]


class Interval(BaseModel):
    """A two-sided confidence interval (percentage points)."""

    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def t_quantile(df: float) -> float:
    return float(_st.t.ppf(0.5 + CONFIDENCE / 2, df))


def mean_interval(runs: list[float]) -> Interval | None:
    """Student's t-interval of the mean of `runs`; None for fewer than two runs."""
    n = len(runs)
    if n < 2:
        return None
    m, s = statistics.fmean(runs), statistics.stdev(runs)
    h = t_quantile(n - 1) * s / math.sqrt(n)
    return Interval(low=round(m - h, 3), high=round(m + h, 3))


def welch(s1: float, n1: int, s2: float, n2: int) -> tuple[float, float]:
    """(standard error, Welch-Satterthwaite df) of a difference of two means."""
    v1, v2 = s1 * s1 / n1, s2 * s2 / n2
    se = math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    return se, df


class Comparison(BaseModel):
    """Mean of `a` minus mean of `b` for one student, with its Welch interval and what it settles."""

    a: str = Field(description="The student being judged, e.g. skeptical.")
    b: str = Field(description="What it is compared with: scratch, label_smoothing or normal_kd.")
    student: str
    diff: float = Field(description="mean(a) - mean(b), percentage points.")
    interval: Interval | None = Field(description="Welch t-interval of the difference; None with one seed on either side.")
    df: float | None = None
    outcome: Outcome = Field(description="higher / lower: the interval excludes zero and |diff| >= the minimum effect; else unsettled.")
    seeds_needed: int | None = Field(
        default=None, description="Unsettled only: seeds per student that would likely settle it if the means and spreads held "
        "(None when |diff| is under the minimum effect: no number of seeds makes it an effect).")

    @property
    def higher(self) -> bool:
        return self.outcome == "higher"

    @property
    def lower(self) -> bool:
        return self.outcome == "lower"

    @property
    def not_lower(self) -> bool:
        """The interval rules out a drop bigger than the minimum effect."""
        return self.interval is not None and self.interval.low >= -MIN_EFFECT_PTS

    def text(self) -> str:
        """e.g. '+4.69 pts [95% CI +2.10, +7.28]' or '+0.67 pts (one seed: no interval)'."""
        if self.interval is None:
            return f"{self.diff:+.2f} pts (one seed: no interval)"
        return f"{self.diff:+.2f} pts [{CONFIDENCE:.0%} CI {self.interval.low:+.2f}, {self.interval.high:+.2f}]"


def compare(a: str, a_runs: list[float], b: str, b_runs: list[float], student: str, floor: float = 0.0) -> Comparison:
    """Welch comparison of two sets of per-seed accuracies; stds are raised to `floor` (pts)."""
    n1, n2 = len(a_runs), len(b_runs)
    diff = round(statistics.fmean(a_runs) - statistics.fmean(b_runs), 3)
    if n1 < 2 or n2 < 2:
        return Comparison(a=a, b=b, student=student, diff=diff, interval=None, outcome="unsettled",
                          seeds_needed=None if abs(diff) < MIN_EFFECT_PTS else 3)
    s1, s2 = max(statistics.stdev(a_runs), floor), max(statistics.stdev(b_runs), floor)
    if s1 == 0 and s2 == 0:  # identical runs and no floor: no spread to measure, nothing settled
        return Comparison(a=a, b=b, student=student, diff=diff, interval=None, outcome="unsettled",
                          seeds_needed=None if abs(diff) < MIN_EFFECT_PTS else max(n1, n2) + 1)
    se, df = welch(s1, n1, s2, n2)
    h = t_quantile(df) * se
    iv = Interval(low=round(diff - h, 3), high=round(diff + h, 3))
    outcome: Outcome = "unsettled"
    if iv.low > 0 and diff >= MIN_EFFECT_PTS:
        outcome = "higher"
    elif iv.high < 0 and diff <= -MIN_EFFECT_PTS:
        outcome = "lower"
    needed = None if outcome != "unsettled" else seeds_to_settle(diff, s1, s2, max(n1, n2))
    return Comparison(a=a, b=b, student=student, diff=diff, interval=iv, df=round(df, 2), outcome=outcome, seeds_needed=needed)


def seeds_to_settle(diff: float, s1: float, s2: float, have: int) -> int | None:
    """Smallest n (seeds per student, > have) whose expected Welch interval excludes zero at this diff."""
    if abs(diff) < MIN_EFFECT_PTS:
        return None
    return seeds_for_halfwidth(abs(diff), s1, s2, have)


def seeds_for_halfwidth(width: float, s1: float, s2: float, have: int) -> int | None:
    """Smallest n (> have) whose expected Welch half-width is below `width` (MAX_SEEDS + 1: more than MAX_SEEDS)."""
    if width <= 0:
        return None
    for n in range(max(have + 1, 2), MAX_SEEDS + 1):
        se, df = welch(max(s1, 1e-9), n, max(s2, 1e-9), n)
        if t_quantile(df) * se < width:
            return n
    return MAX_SEEDS + 1


def spreads(a_runs: list[float], b_runs: list[float], floor: float) -> tuple[float, float]:
    """Per-seed stds of two samples, raised to `floor` (0 for a single run)."""
    def sd(r: list[float]) -> float:
        return max(statistics.stdev(r), floor) if len(r) > 1 else floor
    return sd(a_runs), sd(b_runs)
