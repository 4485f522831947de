"""Fidelity of a student to its teacher on the test split (issue 10).

Accuracy alone cannot tell copying from learning: a student that matches the teacher's
accuracy may still have learnt the task on its own. Agreement on the teacher's *mistakes*
can: a student that predicts the same wrong class as the teacher where the teacher errs
copied it. A scratch student's fidelity (also reported) is the baseline to read it against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdaudit.distill.report import Fidelity


def fidelity_metrics(teacher_logits: torch.Tensor, student_logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> Fidelity:
    """Agreement, agreement on the teacher's mistakes, per-class gap and KL(T||S) at tau 1.

    The teacher's scores may be a log-space view with -inf for classes it gives probability
    0 (a remote teacher answering probabilities or labels, distill/access.py): those rows
    count, with zero-probability classes contributing 0 to the KL. Rows with NaN or +inf,
    with no finite teacher score at all, or with a non-finite student are left out of every
    metric, so one poisoned output cannot turn the whole record into NaN.
    """
    t, s, y = teacher_logits.detach().float().cpu(), student_logits.detach().float().cpu(), y.detach().cpu()
    ok = ~torch.isnan(t).any(1) & ~torch.isposinf(t).any(1) & torch.isfinite(t).any(1) & torch.isfinite(s).all(1)
    t, s, y = t[ok], s[ok], y[ok]
    n = len(y)
    if n == 0:
        return Fidelity(agreement=0.0, mistake_agreement=None, teacher_mistakes=0, class_gap=[0.0] * num_classes,
                        max_class_gap=0.0, kl=None, images=0)
    tp, sp = t.argmax(1), s.argmax(1)
    agreement = 100.0 * (tp == sp).float().mean().item()
    wrong = tp != y
    mistakes = int(wrong.sum().item())
    mistake_agreement = 100.0 * (sp[wrong] == tp[wrong]).float().mean().item() if mistakes else None
    gaps = []
    for c in range(num_classes):
        in_c = y == c
        if not in_c.any():
            gaps.append(0.0)
            continue
        gaps.append(round(100.0 * ((tp[in_c] == c).float().mean() - (sp[in_c] == c).float().mean()).item(), 3))
    p = F.softmax(t, 1)  # exact zeros where the teacher's view is -inf
    kl = (torch.special.xlogy(p, p) - p * F.log_softmax(s, 1)).sum(1).mean().item()
    return Fidelity(
        agreement=round(agreement, 3),
        mistake_agreement=None if mistake_agreement is None else round(mistake_agreement, 3),
        teacher_mistakes=mistakes,
        class_gap=gaps,
        max_class_gap=round(max(gaps), 3),
        kl=round(kl, 5) if torch.isfinite(torch.tensor(kl)) else None,
        images=n,
    )
