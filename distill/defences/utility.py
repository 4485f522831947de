"""What a defence costs the owner's honest users, measured on the test split.

The user of a defended endpoint gets what the output policy returns, so utility is read from
that answer, not from the teacher underneath: top-1 accuracy of the served argmax; top-5
where the answer ranks at least five classes of a task with at least five; the expected
calibration error of the served confidence; and the share of answers whose top class differs
from the undefended teacher's (the owner's model serving full logits). How an answer turns
into a confidence depends on what the endpoint returns (registry `SERVING_FAMILIES`):
probabilities are read as sent (top-K's zeros stay zeros, rounding stays rounded), logits
through a softmax, and a bare label carries no confidence, so no ECE.
"""

from __future__ import annotations

import torch

from kdaudit.distill.access import OutputPolicy
from kdaudit.distill.defences.matrix import ECE_BINS, Utility  # the schema's, torch-free
from kdaudit.distill.defences.registry import SERVING_FAMILIES
from kdaudit.distill.policy_spec import PolicySpec


def served_scores(policy: PolicySpec, view: torch.Tensor) -> torch.Tensor | None:
    """The scores the user reads, from the policy's log-space view (None: a label carries none)."""
    returns = SERVING_FAMILIES[policy.kind].returns
    if returns == "label":
        return None
    return view.float().softmax(1) if returns == "logits" else view.float().exp()


def ranked_classes(policy: PolicySpec, num_classes: int) -> int:
    """How many classes the answer puts in order: K for top-K and stingy-K, 1 for a label, else all."""
    if policy.kind == "label":
        return 1
    if policy.kind in ("topk", "stingy"):
        return min(policy.k or 1, num_classes)
    return num_classes


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE in points: bins (i/bins, (i+1)/bins], the first also taking confidence 0."""
    confidence, correct = confidence.double().cpu(), correct.double().cpu()
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if bool(mask.any()):
            total += float(mask.double().mean()) * abs(float(correct[mask].mean()) - float(confidence[mask].mean()))
    return round(100.0 * total, 3)


def measure_utility(policy: PolicySpec, defended_logits: torch.Tensor, undefended_logits: torch.Tensor,
                    labels: torch.Tensor, undefended_top1: float) -> Utility:
    """Utility of `policy` served on top of `defended_logits` (the owner's or a nasty teacher's test logits)."""
    view = OutputPolicy.of(policy).apply(defended_logits.float())
    predicted = view.argmax(1)
    labels = labels.to(predicted.device)
    correct = (predicted == labels).float()
    top1 = 100.0 * float(correct.mean())
    scores = served_scores(policy, view)
    c = view.shape[1]
    top5 = None
    if scores is not None and c >= 5 and ranked_classes(policy, c) >= 5:
        top5 = 100.0 * float((scores.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean())
    ece = None if scores is None else expected_calibration_error(scores.max(1).values, correct)
    changed = 100.0 * float((predicted != undefended_logits.argmax(1).to(predicted.device)).float().mean())
    return Utility(top1=round(top1, 3), top1_drop=round(undefended_top1 - top1, 3) + 0.0,  # + 0.0: never -0.0
                   top5=None if top5 is None else round(top5, 3), ece=ece, argmax_changed=round(changed, 3))
