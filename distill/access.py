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

import torch
import torch.nn.functional as F

from kdaudit.core.errors import InputError
from kdaudit.distill.defences import transforms
from kdaudit.distill.policy_spec import PolicyKind, PolicySpec, parse_policy

__all__ = ["OutputPolicy", "PolicyKind", "check_against_response", "one_hot_log_view", "parse_policy"]


class OutputPolicy(PolicySpec):
    """A parsed policy (distill/policy_spec.py: the grammar, names and checks) that can also be applied."""

    @classmethod
    def of(cls, spec: PolicySpec) -> OutputPolicy:
        """The appliable form of a torch-free spec (the defence registry hands those out)."""
        return spec if isinstance(spec, OutputPolicy) else cls(**spec.model_dump())

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
