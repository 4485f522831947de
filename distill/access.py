"""What the thief sees of the teacher, and what it pays for it.

A model sold through an API rarely exposes raw logits. An *output policy* turns the
teacher's scores into what such an API returns. What the thief pays is metered by
`TeacherOracle` (distill/oracle.py: billing rules, budget, the grey-box paths).

Every policy yields a *log-space view*: a tensor the KD losses can use in place of
logits, because they only ever take `softmax(view / tau)`, which is shift-invariant per
row. Probabilities become log-probabilities; classes the API hides (top-k, rounded to
zero, label-only) become `-inf`, i.e. probability exactly zero at every temperature.
The KL terms use `kl_div`'s `xlogy` form, so a zero target contributes exactly zero.

Policy strings (the CLI, the API and sweeps use them):

| spec             | the API returns                                                   |
|------------------|-------------------------------------------------------------------|
| `logits`         | raw scores (the paper's setting)                                  |
| `probs`, `probs@T` | softmax probabilities, at the API's temperature T (default 1)   |
| `topK`           | the K largest probabilities, the rest reported as 0               |
| `topK-renorm`    | the K largest probabilities, renormalised to sum to 1             |
| `roundN`         | probabilities rounded to N decimals (a row rounded to all zeros keeps its top class) |
| `label`          | the predicted class only (KD becomes training on teacher labels, at tau 1) |
| `stingyK`        | the K largest logits, the rest -inf ("stingy teacher" sparse logits) |
| `rsig`, `rsig@B/G` | reverse-sigmoid perturbed probabilities, beta B (1), gamma G (0.1) (IBM ART's ReverseSigmoid) |
| `noise@S`, `noise@S/seedN` | probabilities + N(0, S^2) noise keyed by seed N (0) and the answer, clipped at 0, renormalised |
"""

from __future__ import annotations

import re
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdaudit.core.errors import InputError
from kdaudit.distill.defences import transforms

PolicyKind = Literal["logits", "probs", "topk", "rounded", "label", "stingy", "rsig", "noise"]
_NUM = r"(\d+(?:\.\d+)?)"
_SPEC = re.compile(r"^(?:(logits)|(label)|probs(?:@(\d+(?:\.\d+)?))?|top(\d+)(-renorm)?|round(\d+)"
                   rf"|stingy(\d+)|(rsig)(?:@{_NUM}(?:/{_NUM})?)?|noise@{_NUM}(?:/seed(\d+))?)$")


class OutputPolicy(BaseModel):
    """One way an API may expose the teacher's output; `parse` reads the spec strings above."""

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
    def parse(cls, spec: str) -> OutputPolicy:
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
                     rsig_g=None, sigma=None, seed=None) -> OutputPolicy:
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

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """The thief's view of a batch of teacher scores (logits or an earlier log-space view)."""
        if self.kind == "logits":
            return scores
        if self.kind == "label":
            return one_hot_log_view(scores.argmax(1), scores.shape[1])
        if self.kind == "stingy":
            return transforms.sparse_top_logits(scores, self.k or 1)
        log_p = F.log_softmax(scores.float() / self.temperature, dim=1)
        if self.kind == "probs":
            return log_p
        p = log_p.exp()
        if self.kind == "rsig":
            return torch.log(transforms.reverse_sigmoid(p, self.beta, self.gamma))
        if self.kind == "noise":
            return torch.log(transforms.seeded_noise(p, self.sigma, self.seed))
        if self.kind == "topk":
            top = p.topk(min(self.k or 1, p.shape[1]), dim=1)
            kept = torch.zeros_like(p).scatter_(1, top.indices, top.values)
            if self.renormalise:
                kept = kept / kept.sum(1, keepdim=True)
            return torch.log(kept)
        scale = 10.0 ** (self.decimals or 0)
        rounded = torch.round(p * scale) / scale
        empty = rounded.sum(1) == 0
        if bool(empty.any()):  # an API still names its top class when every score rounds to 0
            rounded[empty] = F.one_hot(p[empty].argmax(1), p.shape[1]).to(rounded.dtype)
        return torch.log(rounded)


def one_hot_log_view(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """0 at the label, -inf elsewhere: softmax of it is the one-hot label at any temperature."""
    view = torch.full((len(labels), num_classes), float("-inf"), device=labels.device)
    return view.scatter_(1, labels.long().view(-1, 1), 0.0)


def check_against_response(policy: OutputPolicy, response: str) -> None:
    """Refuse a policy that needs more than the teacher's endpoint returns (InputError)."""
    if response == "labels" and policy.kind != "label":
        raise InputError(f"the remote teacher returns labels only; output policy {policy.spec} needs scores (use label)")
    if response == "probabilities" and policy.kind == "logits":
        raise InputError("the remote teacher returns probabilities; use output policy probs (or coarser), not logits")


def parse_policy(spec: str) -> str:
    """Validate a policy spec and return its canonical form (used by config validators)."""
    return OutputPolicy.parse(spec).spec
