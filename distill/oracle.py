"""The one query meter: every image any attack sends to the teacher goes through a `TeacherOracle`.

The data-available cohort (distill/train.py) and the data-free trainers (distill/datafree/)
bill the same way, so the report's teacher-query numbers mean the same thing everywhere:

- billing `every`: every image sent is billed, repeats included;
- billing `distinct`: each distinct image (same bytes) is billed once. A local teacher still
  runs the whole batch (its answer for a repeat is the same: eval mode, fixed weights); a
  remote one is sent only the images it has not answered before, and cached answers fill the
  rest, as a real thief would;
- a budget: a batch that would exceed it raises `QueryBudgetExhausted` before anything is
  sent or billed, so `queries` never exceeds the budget.

Black-box attacks only read scores (`__call__`, `logits`). Grey-box ones (ZSKT; DFAD with the
teacher's gradient) also backpropagate through the teacher (`logits_with_grad`) or read its
stage activations (`logits_features`); the meter refuses both unless it was opened grey-box,
so a black-box attack cannot use more of the teacher than its threat model allows.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import torch

Billing = Literal["distinct", "every"]
#: billing rules, as the report states them
BILLING_RULES: dict[str, str] = {
    "distinct": "each distinct image is billed once: the thief caches answers, and a repeated image "
    "(same bytes, e.g. the same crop of the same training image) is never paid for twice",
    "every": "every image sent is billed, repeats included (no caching)",
}


class QueryBudgetExhausted(Exception):
    """The next batch would take the thief past its query budget; nothing was sent or billed."""


def _scores(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A multi-exit teacher answers with its final exit (the first output), as float32."""
    return (out[0] if isinstance(out, list) else out).float()


class TeacherOracle:
    """Sends batches to the teacher, bills them per the billing rule, enforces the budget.

    With `distinct` billing each image is fingerprinted (blake2b of its bytes), so a repeat
    is free. `grey_box=True` opens the gradient and activation paths (see the module doc).
    """

    def __init__(self, teacher: torch.nn.Module, *, budget: int | None = None, billing: Billing = "every",
                 grey_box: bool = False):
        self.teacher = teacher
        self.budget = budget
        self.billing = billing
        self.grey_box = grey_box
        self.remote = bool(getattr(teacher, "is_remote", False))
        self.queries = 0
        self._seen: dict[int, int] = {}  # 64-bit fingerprint -> row in the answer cache (remote) or -1
        self._cache: list[torch.Tensor] = []

    # ------------------------------------------------------------------ billing

    def _fingerprints(self, x: torch.Tensor) -> list[int]:
        """blake2b-64 of each image's bytes: small ints, so a long CIFAR audit's millions stay cheap."""
        rows = x.detach().float().contiguous().cpu().numpy().reshape(len(x), -1)
        return [int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") for r in rows]

    def _unseen(self, prints: list[int]) -> list[int]:
        """The fingerprints never answered before, each once, in order of first appearance."""
        return list(dict.fromkeys(p for p in prints if p not in self._seen))

    def _check(self, new: int) -> None:
        if self.budget is not None and self.queries + new > self.budget:
            raise QueryBudgetExhausted(f"{new} more images would exceed the budget of {self.budget} ({self.queries} spent)")

    def _quote(self, x: torch.Tensor) -> list[int] | None:
        """Check that the batch fits the budget; return the new fingerprints to record (None: billing `every`)."""
        if self.billing == "every":
            self._check(len(x))
            return None
        fresh = self._unseen(self._fingerprints(x))
        self._check(len(fresh))
        return fresh

    def _bill(self, x: torch.Tensor, fresh: list[int] | None) -> None:
        """Record a batch the teacher answered (called after the answer, so a failed call is not billed)."""
        if fresh is None:
            self.queries += len(x)
            return
        for p in fresh:
            self._seen[p] = -1
        self.queries += len(fresh)

    # ------------------------------------------------------------------ the teacher's answers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's scores for a batch (black-box)."""
        if self.billing == "distinct" and self.remote:
            return self._ask_remote_once(x)
        return self._answer(x)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's scores as constants (no autograd graph): what a black-box attack reads."""
        return self(x)

    def logits_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """Grey-box: the scores with the autograd graph through the teacher (a generator's step)."""
        self._require_grey_box("gradients")
        return self._answer(x)

    def logits_features(self, x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Grey-box: (scores, stage activations), with the autograd graph when `grad`."""
        self._require_grey_box("activations")
        fresh = self._quote(x)
        with torch.set_grad_enabled(grad):
            logits, feats = self.teacher.forward_with_features(x)
        self._bill(x, fresh)
        return logits.float(), feats

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        """Quote, run the teacher on the whole batch, bill: the path of every local answer."""
        fresh = self._quote(x)
        out = _scores(self.teacher(x))
        self._bill(x, fresh)
        return out

    def _require_grey_box(self, what: str) -> None:
        if not self.grey_box:
            raise RuntimeError(f"{what} requested from a black-box teacher")

    def _ask_remote_once(self, x: torch.Tensor) -> torch.Tensor:
        """Distinct billing against an endpoint: send only unseen images, answer repeats from the cache."""
        prints = self._fingerprints(x)
        fresh = self._unseen(prints)
        self._check(len(fresh))
        first = {p: i for i, p in reversed(list(enumerate(prints)))}
        if fresh:
            answers = self.teacher(x[[first[p] for p in fresh]]).float().cpu()
            for p, row in zip(fresh, answers, strict=True):
                self._seen[p] = len(self._cache)
                self._cache.append(row)
            self.queries += len(fresh)
        return torch.stack([self._cache[self._seen[p]] for p in prints]).to(x.device)

    # ------------------------------------------------------------------ crash-resume

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
