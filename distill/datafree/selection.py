"""Checkpoint selection without real data (DESIGN.md trap: DFAD students on digits reach
97-99% and then collapse to 10-16% late in the schedule).

At each checkpoint the current generator renders a *fixed* set of held-out latents, the
teacher labels them (argmax) and they join a selection pool that is never trained on; the
student is snapshotted. At the end every snapshot is scored on the whole pool by
class-balanced agreement with the teacher, and the best one is kept. A collapsed student
(one or two classes) scores low on a pool gathered over the whole run, whatever the
generator produces at the end. The same pool gives the budget curve's choices
(`prefix_choices`: the rule applied to the checkpoints a thief stopping early had; scored on
the test split by distill/budget_curve.py) and the watchdog's class counts (watchdog.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

SELECTION_RULE = (
    "class-balanced agreement of the final exit with the teacher's argmax on held-out generated "
    "images (fixed latents rendered at every checkpoint, pooled over the run); no real data"
)


@torch.no_grad()
def final_exit_predictions(model: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The argmax of the student's final exit, in eval mode (its training mode is restored)."""
    was = model.training
    model.eval()
    preds = []
    for i in range(0, len(x), chunk):
        out = model(x[i : i + chunk])
        preds.append((out[0] if isinstance(out, list) else out).argmax(1))
    model.train(was)
    return torch.cat(preds)


def balanced_score(pred: torch.Tensor, teacher_labels: torch.Tensor) -> float:
    """Mean over teacher classes present of P(prediction == teacher label | teacher label), percent."""
    per_class = [(pred[teacher_labels == c] == c).float().mean() for c in teacher_labels.unique()]
    return 100.0 * torch.stack(per_class).mean().item()


def balanced_agreement(model: nn.Module, x: torch.Tensor, teacher_labels: torch.Tensor, chunk: int = 1024) -> float:
    """The selection score: class-balanced agreement of the student's final exit with the teacher, percent."""
    return balanced_score(final_exit_predictions(model, x, chunk), teacher_labels)


def prefix_choices(probe: nn.Module, snapshots: Sequence[dict[str, torch.Tensor]],
                   pool_x: Sequence[torch.Tensor], pool_t: Sequence[torch.Tensor]) -> list[int]:
    """For each checkpoint k (0-based), the snapshot index in 0..k the selection rule keeps on pool 0..k.

    Ties go to the later snapshot, as in the full run's selection. `probe` is a scratch copy
    of the student (its weights are overwritten).
    """
    px = torch.cat(list(pool_x))
    ends = torch.tensor([len(p) for p in pool_x]).cumsum(0).tolist()
    preds = []
    for snap in snapshots:
        probe.load_state_dict(snap)
        preds.append(final_exit_predictions(probe, px))
    labels = torch.cat(list(pool_t))
    choices = []
    for k in range(len(snapshots)):
        n = ends[k]
        scores = [balanced_score(preds[i][:n], labels[:n]) for i in range(k + 1)]
        choices.append(max(range(k + 1), key=lambda i: (scores[i], i)))
    return choices


@dataclass
class SelectionPool:
    """What each checkpoint adds: held-out images, the teacher's labels, a student snapshot."""

    num_classes: int
    images: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    snapshots: list[dict[str, torch.Tensor]] = field(default_factory=list)
    #: per checkpoint: the snapshot's agreement on the pool gathered so far (the progress figure)
    running: list[float] = field(default_factory=list)
    #: per checkpoint: the teacher's argmax histogram of that checkpoint's held-out images (the watchdog's)
    class_counts: list[list[int]] = field(default_factory=list)
    #: per checkpoint: the teacher queries spent so far (the budget curve's x axis)
    queries: list[int] = field(default_factory=list)

    def add(self, student: nn.Module, images: torch.Tensor, teacher_labels: torch.Tensor, queries: int) -> float:
        """Record one checkpoint; return the student's running agreement (rounded, 0 if not finite)."""
        self.images.append(images)
        self.labels.append(teacher_labels)
        self.queries.append(queries)
        self.class_counts.append(torch.bincount(teacher_labels, minlength=self.num_classes).tolist())
        self.snapshots.append({k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()})
        score = balanced_agreement(student, torch.cat(self.images), torch.cat(self.labels))
        self.running.append(round(score if math.isfinite(score) else 0.0, 3))
        return self.running[-1]

    def select(self, student: nn.Module) -> tuple[list[float], int, list[int]]:
        """Score every snapshot on the whole pool (the same images for all) and load the best into
        `student` (eval mode). Returns (scores, best index, the budget curve's per-prefix choices)."""
        px, pt = torch.cat(self.images), torch.cat(self.labels)
        scores = []
        probe = copy.deepcopy(student)
        for snap in self.snapshots:
            probe.load_state_dict(snap)
            scores.append(balanced_agreement(probe, px, pt))
        best = max(range(len(scores)), key=lambda i: (scores[i], i))
        choice = prefix_choices(probe, self.snapshots, self.images, self.labels)
        student.load_state_dict(self.snapshots[best])
        student.eval()
        return scores, best, choice

    def teacher_classes(self) -> int:
        """How many classes the teacher named on the whole pool."""
        return int(torch.cat(self.labels).unique().numel())
