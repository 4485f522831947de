"""The math of the serving-time defences that distill/access.py's output policies call.

A leaf module (torch and numpy only) so that `OutputPolicy.apply` can import it without a
cycle. Each function maps a batch of teacher answers to what the endpoint returns:

* `sparse_top_logits` - the "stingy teacher" (Ma et al., ICLR 2022 workshop, "Sparse Logits
  Suffice to Fail Knowledge Distillation"): only the k largest logits are sent, the rest -inf.
* `reverse_sigmoid` - Lee et al. 2019 (arXiv 1806.00054) as implemented by IBM ART's
  `ReverseSigmoid` postprocessor: p' = normalise(clip(p - beta*(sigmoid(gamma*logit(p)) - 1/2), 0, 1)),
  logit(p) computed on p clipped to [1e-9, 1 - 1e-9]. It lifts the smallest probabilities
  (reversing their order) while a confident top class keeps its rank.
* `seeded_noise` - ART's `GaussianNoise` idea: p + N(0, sigma^2), negatives set to 0,
  renormalised. The noise is a pure function of (seed, the answer's bytes, class), so an
  endpoint answers the same scores the same way: a thief cannot average it away by asking
  again, and every run is reproducible.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

#: ART's clip for the inverse sigmoid
RSIG_CLIP = 1e-9
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def sparse_top_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's k largest logits (values untouched), the rest -inf."""
    top = logits.float().topk(min(k, logits.shape[1]), dim=1)
    out = torch.full_like(logits, float("-inf"), dtype=torch.float32)
    return out.scatter_(1, top.indices, top.values)


def reverse_sigmoid(p: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """ART's ReverseSigmoid on probability rows (see the module docstring).

    In float64: in float32 1 - 1e-9 rounds to 1, so ART's clip would not protect the inverse
    sigmoid of a confident answer (it becomes +inf and the top class loses beta/2).
    """
    p64 = p.double()
    clipped = p64.clamp(RSIG_CLIP, 1.0 - RSIG_CLIP)
    perturbation = beta * (torch.sigmoid(gamma * torch.log(clipped / (1.0 - clipped))) - 0.5)
    perturbed = (p64 - perturbation).clamp(0.0, 1.0)
    return _normalise(perturbed, p64).to(p.dtype)


def seeded_noise(p: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """p + sigma * N(0, 1), clipped at 0 and renormalised; noise keyed by (seed, row bytes, class)."""
    rows = p.detach().float().cpu().contiguous().numpy()
    keys = np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8, key=seed.to_bytes(8, "little")).digest(),
                                    "little") for r in rows], dtype=np.uint64)
    cls = np.arange(p.shape[1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = keys[:, None] ^ (cls[None, :] * _GOLDEN)
        u1 = (_splitmix64(base) >> np.uint64(11)).astype(np.float64) + 1.0  # in [1, 2^53]: never log(0)
        u2 = (_splitmix64(base ^ _GOLDEN) >> np.uint64(11)).astype(np.float64)
    scale = 2.0**-53
    gauss = np.sqrt(-2.0 * np.log(u1 * scale)) * np.cos(2.0 * np.pi * u2 * scale)  # Box-Muller
    noisy = (p.float() + sigma * torch.from_numpy(gauss).float().to(p.device)).clamp(min=0.0)
    return _normalise(noisy, p)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-mixed 64-bit hash of each element (wrapping uint64 arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _normalise(q: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Rows summing to 1; a row perturbed to all zeros still names the original top class."""
    total = q.sum(1, keepdim=True)
    empty = total.squeeze(1) <= 0
    if bool(empty.any()):
        q = q.clone()
        q[empty] = torch.nn.functional.one_hot(original[empty].argmax(1), q.shape[1]).to(q.dtype)
        total = q.sum(1, keepdim=True)
    return q / total
