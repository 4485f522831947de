"""Multi-exit student for the skeptical attack (Kundu et al. 2021, BYOT-style heads).

Any `StagedNet` becomes a network with four exits: after stages 1, 2 and 3 an attention
gate (SepConv -> BN -> ReLU -> upsample -> sigmoid, multiplied into the features) feeds a
"scala" head of stride-2 SepConv blocks up to the final stage's width, global pooling and
a linear classifier; the fourth exit is the backbone's own classifier. `forward` returns
`[final, after-stage-3, after-stage-2, after-stage-1]`, the official code's order, so
index 1 is the self-distillation head and index `4 - ac_stage` the auxiliary classifier.
The backbone is trained as a whole; its final exit alone is a normal network of that
architecture, which is what a thief would deploy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdaudit.models.base import StagedNet


class SepConv(nn.Module):
    """Depthwise-separable conv pair (as in BYOT / the skeptical code), first conv strided."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cin, 1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=False),
            nn.Conv2d(cin, cin, 3, stride=1, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class AttentionGate(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(SepConv(channels, channels), nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(a) * x


class ExitHead(nn.Module):
    """Gate + scala + classifier for the exit after stage `stage` (1-based)."""

    def __init__(self, stage: int, stage_channels: tuple[int, ...], num_classes: int):
        super().__init__()
        chans = stage_channels[stage - 1 :]
        self.gate = AttentionGate(chans[0])
        self.scala = nn.Sequential(*(SepConv(chans[i], chans[i + 1]) for i in range(len(chans) - 1)))
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.scala(self.gate(features))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class MultiExitNet(nn.Module):
    def __init__(self, backbone: StagedNet):
        super().__init__()
        self.backbone = backbone
        self.num_classes = backbone.num_classes
        self.default_ac_stage = backbone.default_ac_stage
        # exits[0] hangs after stage 1, exits[2] after stage 3
        self.exits = nn.ModuleList(ExitHead(s, backbone.stage_channels, backbone.num_classes) for s in (1, 2, 3))

    @staticmethod
    def exit_index(stage: int) -> int:
        """Position in forward()'s output list of the exit after `stage` (1-3); 0 is the final exit."""
        if not 1 <= stage <= 3:
            raise ValueError(f"exits hang after stages 1-3, not {stage}")
        return 4 - stage

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        final, feats = self.backbone.forward_with_features(x)
        inner = [head(f) for head, f in zip(self.exits, feats[:3], strict=True)]
        return [final, inner[2], inner[1], inner[0]]

    @torch.no_grad()
    def ensemble(self, x: torch.Tensor) -> torch.Tensor:
        """Skeptical-E: the average of all exits' logits."""
        return torch.stack(self(x)).mean(0)
