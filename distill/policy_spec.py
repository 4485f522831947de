"""Output-policy specs, torch-free: what an API may expose of the teacher, as a parsed value.

Split from distill/access.py (which adds `OutputPolicy.apply`, the torch part) so that the API
process, the defence registry and config validators parse and name policies without loading
torch. One grammar in one place: access.py's `OutputPolicy` is this class plus `apply`.
See distill/access.py for the table of specs.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdaudit.core.errors import InputError

PolicyKind = Literal["logits", "probs", "topk", "rounded", "label", "stingy", "rsig", "noise"]
_NUM = r"(\d+(?:\.\d+)?)"
_SPEC = re.compile(r"^(?:(logits)|(label)|probs(?:@(\d+(?:\.\d+)?))?|top(\d+)(-renorm)?|round(\d+)"
                   rf"|stingy(\d+)|(rsig)(?:@{_NUM}(?:/{_NUM})?)?|noise@{_NUM}(?:/seed(\d+))?)$")


class PolicySpec(BaseModel):
    """One way an API may expose the teacher's output; `parse` reads the spec strings (distill/access.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: PolicyKind = "logits"
    temperature: float = Field(default=1.0, gt=0, le=100, description="The API's softmax temperature (probs, topK, roundN).")
    k: int | None = Field(default=None, ge=1, le=100_000)
    renormalise: bool = False
    decimals: int | None = Field(default=None, ge=0, le=12)
    beta: float = Field(default=1.0, gt=0, le=10, description="rsig: magnitude of the reverse-sigmoid perturbation.")
    gamma: float = Field(default=0.1, gt=0, le=10, description="rsig: its convergence parameter.")
    sigma: float = Field(default=0.0, ge=0, le=10, description="noise: std of the noise added to each probability.")
    seed: int = Field(default=0, ge=0, lt=2**63, description="noise: the endpoint's noise seed.")

    @classmethod
    def parse(cls, spec: str) -> PolicySpec:
        m = _SPEC.match(spec.strip().lower())
        if m is None:
            raise InputError(
                f"unknown output policy {spec!r}: use logits, probs, probs@T, topK, topK-renorm, roundN, label, "
                "stingyK, rsig, rsig@B/G, noise@S or noise@S/seedN"
            )
        try:
            return cls._from_groups(*m.groups())
        except ValidationError as e:
            raise InputError(f"output policy {spec!r}: {e.errors()[0]['msg']}") from None

    @classmethod
    def _from_groups(cls, logits, label, temp, k, renorm, decimals, stingy=None, rsig=None, rsig_b=None,  # noqa: ANN001
                     rsig_g=None, sigma=None, seed=None) -> PolicySpec:
        if stingy is not None:
            return cls(kind="stingy", k=int(stingy))
        if sigma is not None:
            return cls(kind="noise", sigma=float(sigma), seed=int(seed or 0))
        if rsig:
            return cls(kind="rsig", beta=float(rsig_b or 1.0), gamma=float(rsig_g or 0.1))
        if logits:
            return cls(kind="logits")
        if label:
            return cls(kind="label")
        if k is not None:
            return cls(kind="topk", k=int(k), renormalise=bool(renorm))
        if decimals is not None:
            return cls(kind="rounded", decimals=int(decimals))
        return cls(kind="probs", temperature=float(temp) if temp else 1.0)

    @property
    def spec(self) -> str:
        if self.kind == "probs":
            return "probs" if self.temperature == 1.0 else f"probs@{self.temperature:g}"
        if self.kind == "topk":
            return f"top{self.k}" + ("-renorm" if self.renormalise else "")
        if self.kind == "rounded":
            return f"round{self.decimals}"
        if self.kind == "stingy":
            return f"stingy{self.k}"
        if self.kind == "rsig":
            return f"rsig@{self.beta:g}/{self.gamma:g}"
        if self.kind == "noise":
            return f"noise@{self.sigma:g}" + (f"/seed{self.seed}" if self.seed else "")
        return self.kind

    @property
    def hard(self) -> bool:
        """Label-only: no scores at all, so KD trains on the teacher's labels."""
        return self.kind == "label"

    @property
    def full_scores(self) -> bool:
        """A finite score for every class (what DFAD's L1 loss and ZSKT's KL need)."""
        return self.kind in ("logits", "probs")

    def describe(self) -> str:
        t = "" if self.temperature == 1.0 else f" at API temperature {self.temperature:g}"
        return {
            "logits": "full logits",
            "probs": f"probabilities{t}",
            "topk": f"top-{self.k} probabilities{t}" + (", renormalised" if self.renormalise else ", the rest reported as 0"),
            "rounded": f"probabilities{t} rounded to {self.decimals} decimals",
            "label": "the predicted label only (KD becomes training on the teacher's labels)",
            "stingy": f"the {self.k} largest logits only (sparse 'stingy' logits, the rest hidden)",
            "rsig": f"reverse-sigmoid perturbed probabilities{t} (beta {self.beta:g}, gamma {self.gamma:g})",
            "noise": f"probabilities{t} with Gaussian noise (sigma {self.sigma:g}, seed {self.seed}), clipped and renormalised",
        }[self.kind]

    def check_classes(self, num_classes: int) -> None:
        if self.kind in ("topk", "stingy") and self.k is not None and self.k > num_classes:
            raise InputError(f"output policy {self.spec} asks for {self.k} classes but the task has {num_classes}")



def parse_policy(spec: str) -> str:
    """Validate a policy spec and return its canonical form (used by config validators)."""
    return PolicySpec.parse(spec).spec
