"""What the thief sees of the teacher, and what it pays for it.

A model sold through an API rarely exposes raw logits. An *output policy* turns the
teacher's scores into what such an API returns; a `TeacherOracle` sends batches to the
teacher, counts the images it is billed for, caps them at a query budget and, for a
remote teacher, never re-sends an image it already asked about.

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
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdaudit.core.errors import InputError

PolicyKind = Literal["logits", "probs", "topk", "rounded", "label"]
Billing = Literal["distinct", "every"]
#: billing rules, as the report states them
BILLING_RULES: dict[str, str] = {
    "distinct": "each distinct image is billed once: the thief caches answers, and a repeated image "
    "(same bytes, e.g. the same crop of the same training image) is never paid for twice",
    "every": "every image sent is billed, repeats included (no caching)",
}
_SPEC = re.compile(r"^(?:(logits)|(label)|probs(?:@(\d+(?:\.\d+)?))?|top(\d+)(-renorm)?|round(\d+))$")


class OutputPolicy(BaseModel):
    """One way an API may expose the teacher's output; `parse` reads the spec strings above."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: PolicyKind = "logits"
    temperature: float = Field(default=1.0, gt=0, le=100, description="The API's softmax temperature (probs, topK, roundN).")
    k: int | None = Field(default=None, ge=1, le=100_000)
    renormalise: bool = False
    decimals: int | None = Field(default=None, ge=0, le=12)

    @classmethod
    def parse(cls, spec: str) -> OutputPolicy:
        m = _SPEC.match(spec.strip().lower())
        if m is None:
            raise InputError(
                f"unknown output policy {spec!r}: use logits, probs, probs@T, topK, topK-renorm, roundN or label"
            )
        try:
            return cls._from_groups(*m.groups())
        except ValidationError as e:
            raise InputError(f"output policy {spec!r}: {e.errors()[0]['msg']}") from None

    @classmethod
    def _from_groups(cls, logits, label, temp, k, renorm, decimals) -> OutputPolicy:  # noqa: ANN001 - regex groups
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
        }[self.kind]

    def check_classes(self, num_classes: int) -> None:
        if self.kind == "topk" and self.k is not None and self.k > num_classes:
            raise InputError(f"output policy {self.spec} asks for {self.k} classes but the task has {num_classes}")

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """The thief's view of a batch of teacher scores (logits or an earlier log-space view)."""
        if self.kind == "logits":
            return scores
        if self.kind == "label":
            return one_hot_log_view(scores.argmax(1), scores.shape[1])
        log_p = F.log_softmax(scores.float() / self.temperature, dim=1)
        if self.kind == "probs":
            return log_p
        p = log_p.exp()
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


class QueryBudgetExhausted(Exception):
    """The next batch would take the thief past its query budget; nothing was sent or billed."""


class TeacherOracle:
    """Sends batches to the teacher, bills them per the billing rule, enforces the budget.

    With `distinct` billing each image is fingerprinted (blake2b of its bytes), so a repeat
    is free. A local teacher still runs the whole batch (its answer for a repeat is the
    same: eval mode, fixed weights); a remote one is sent only the images it has not
    answered before, and the cached answers fill the rest, as a real thief would.
    A batch that would exceed the budget raises `QueryBudgetExhausted` before anything is
    sent, so `queries` never exceeds the budget.
    """

    def __init__(self, teacher: torch.nn.Module, *, budget: int | None = None, billing: Billing = "every"):
        self.teacher = teacher
        self.budget = budget
        self.billing = billing
        self.remote = bool(getattr(teacher, "is_remote", False))
        self.queries = 0
        self._seen: dict[int, int] = {}  # 64-bit fingerprint -> row in the answer cache (remote) or -1
        self._cache: list[torch.Tensor] = []

    def _fingerprints(self, x: torch.Tensor) -> list[int]:
        """blake2b-64 of each image's bytes: small ints, so a long CIFAR audit's millions stay cheap."""
        rows = x.detach().float().contiguous().cpu().numpy().reshape(len(x), -1)
        return [int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") for r in rows]

    def _check(self, new: int) -> None:
        if self.budget is not None and self.queries + new > self.budget:
            raise QueryBudgetExhausted(f"{new} more images would exceed the budget of {self.budget} ({self.queries} spent)")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.billing == "every":
            self._check(len(x))
            out = self.teacher(x)
            out = out[0] if isinstance(out, list) else out
            self.queries += len(x)
            return out.float()
        prints = self._fingerprints(x)
        fresh = list(dict.fromkeys(p for p in prints if p not in self._seen))
        self._check(len(fresh))
        if not self.remote:
            out = self.teacher(x)
            out = (out[0] if isinstance(out, list) else out).float()
            for p in fresh:
                self._seen[p] = -1
            self.queries += len(fresh)
            return out
        first = {p: i for i, p in reversed(list(enumerate(prints)))}
        if fresh:
            answers = self.teacher(x[[first[p] for p in fresh]]).float().cpu()
            for p, row in zip(fresh, answers, strict=True):
                self._seen[p] = len(self._cache)
                self._cache.append(row)
            self.queries += len(fresh)
        return torch.stack([self._cache[self._seen[p]] for p in prints]).to(x.device)

    def state_dict(self) -> dict:
        """Everything the billing depends on, for the cohort's crash-resume checkpoint."""
        prints = np.fromiter(self._seen.keys(), dtype=np.uint64, count=len(self._seen))
        rows = np.fromiter(self._seen.values(), dtype=np.int64, count=len(self._seen))
        return {
            "queries": self.queries,
            "prints": torch.from_numpy(prints.view(np.int64)),  # torch has no uint64 tensors to save
            "rows": torch.from_numpy(rows),
            "cache": torch.stack(self._cache) if self._cache else torch.zeros((0,)),
        }

    def load_state_dict(self, state: dict) -> None:
        self.queries = int(state["queries"])
        prints = state["prints"].numpy().view(np.uint64).tolist()
        self._seen = dict(zip(prints, state["rows"].tolist(), strict=True))
        self._cache = list(state["cache"]) if state["cache"].ndim == 2 else []
