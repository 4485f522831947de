"""The teacher behind its declared input contract (distill/preprocess.py): one per-channel affine map.

Kept apart from the contract itself so that the CLI and the API can validate contracts
without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdaudit.distill.preprocess import TeacherInput


def affine(contract: TeacherInput, channels: int, dataset_mean: Sequence[float],
           dataset_std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), shaped (1, C, 1, 1), with teacher_input = thief_input * a + b."""
    scale, mean, std = contract.numbers(channels, dataset_mean, dataset_std)
    dm = torch.tensor([float(v) for v in dataset_mean], dtype=torch.float64)
    ds = torch.tensor([float(v) for v in dataset_std], dtype=torch.float64)
    m, s = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    a = ds * scale / s
    b = (dm * scale - m) / s
    return a.float().view(1, -1, 1, 1), b.float().view(1, -1, 1, 1)


class TeacherInputAdapter(nn.Module):
    """The teacher behind its declared input contract: `forward(x) = teacher(x * a + b)`.

    It keeps what the engine asks teachers for (`is_remote`, `spec`, `has_features`,
    `forward_with_features`), so billing, remote caching and data-free checks see the same
    teacher; the affine map is differentiable, so grey-box attacks still work.
    """

    def __init__(self, teacher: nn.Module, a: torch.Tensor, b: torch.Tensor, contract: TeacherInput):
        super().__init__()
        self.teacher = teacher
        self.register_buffer("a", a)
        self.register_buffer("b", b)
        self.contract = contract
        self.is_remote = bool(getattr(teacher, "is_remote", False))
        if hasattr(teacher, "spec"):
            self.spec = teacher.spec
        if hasattr(teacher, "has_features"):
            self.has_features = teacher.has_features
        else:  # a zoo model built in-process (no loader flag): it has stage activations
            self.has_features = not self.is_remote and callable(getattr(teacher, "forward_with_features", None))

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.a.to(x.device) + self.b.to(x.device)

    def forward(self, x: torch.Tensor) -> Any:
        return self.teacher(self._map(x))

    def forward_with_features(self, x: torch.Tensor) -> Any:
        return self.teacher.forward_with_features(self._map(x))


def apply_contract(teacher: nn.Module, contract: TeacherInput, channels: int, dataset_mean: Sequence[float],
                   dataset_std: Sequence[float]) -> nn.Module:
    """The teacher as the oracle must call it; the teacher itself when the map is the identity."""
    a, b = affine(contract, channels, dataset_mean, dataset_std)
    if torch.allclose(a, torch.ones_like(a), atol=1e-7) and torch.allclose(b, torch.zeros_like(b), atol=1e-7):
        return teacher
    return TeacherInputAdapter(teacher, a, b, contract)
