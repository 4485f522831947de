"""The one interface every architecture implements: four stages with visible features.

Attacks need more than logits: the skeptical student hangs exits after inner stages and
ZSKT matches attention maps stage by stage. So every network is written as
`stem -> stages[0..3] -> head`, and `forward_features` returns the output of each stage.
The head is global average pooling followed by a linear layer; its parameters are
called `linear` so checkpoints in the kuangliu/pytorch-cifar convention load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class StagedNet(nn.Module):
    """Base class: subclasses set `stem`, `stages` (exactly 4 modules) and `linear`."""

    #: channels produced by each of the four stages
    stage_channels: tuple[int, int, int, int]
    #: stage (1-based) after which the skeptical student's auxiliary classifier sits by default
    default_ac_stage: int = 2
    num_classes: int

    def stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def stage_forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.stages[index](x)

    def head_forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)
        return self.linear(pooled)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the four stages, shallow to deep."""
        out = self.stem_forward(x)
        feats = []
        for i in range(4):
            out = self.stage_forward(i, out)
            feats.append(out)
        return feats

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.forward_features(x)
        return self.head_forward(feats[-1]), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_forward(self.forward_features(x)[-1])
