"""CIFAR MobileNetV2 with the kuangliu/pytorch-cifar parameter names, cut into four stages.

Parameter names follow kuangliu/pytorch-cifar exactly: `conv1`/`bn1` (3x3 stem, stride 1),
`layers.0 .. layers.16` (inverted residual blocks `conv1/bn1/conv2/bn2/conv3/bn3` with an
optional `shortcut.0/shortcut.1`), `conv2` (320 -> 1280, 1x1), `bn2` and `linear`. The CIFAR
variant keeps stride 1 in the stem and in the second group (24 channels), so a 32x32 image
ends at 4x4 before pooling.

The 17 blocks form seven groups (expansion, out channels, blocks, stride):
(1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1).

Mapping to our four stages and to the skeptical student (ksouvik52/Skeptical2021,
`mobilenetv2_self.py`), whose "stageK" is group K above:

=============  ======================  ==========  ===================================
our stage      blocks                  channels    Skeptical2021
=============  ======================  ==========  ===================================
stem           conv1, bn1, relu        32          `pre`
stage 1        layers.0-2 (groups 1-2) 24          stage1-2, exit 1 after stage2
stage 2        layers.3-9 (groups 3-4) 64          stage3-4, exit 2 after stage4 (AC)
stage 3        layers.10-15 (gr. 5-6)  160         stage5-6, exit 3 after stage6
stage 4        layers.16, conv2, bn2,  1280        stage7 + conv1 (320 -> 1280), final
               relu                                head
=============  ======================  ==========  ===================================

The paper puts the skeptical student's auxiliary classifier "after stage 4" of MobileNetV2
in their numbering, i.e. after the 64-channel group; that is the end of our stage 2, hence
`default_ac_stage = 2` (the same depth index as for the ResNets, where the AC follows
`layer2`). Exits after our stages 1-3 coincide with their three exits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdaudit.models.base import StagedNet
from kdaudit.models.registry import register

# (expansion, out_planes, num_blocks, stride); stride of the 24-channel group is 1 for CIFAR.
CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

#: half-open block ranges of `layers` for our stages 1-4
STAGE_BLOCKS: tuple[tuple[int, int], ...] = ((0, 3), (3, 10), (10, 16), (16, 17))


class Block(nn.Module):
    """Inverted residual: expand (1x1) + depthwise (3x3) + project (1x1)."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class _Stage4(nn.Module):
    """Unregistered view: last block, then relu(bn2(conv2(x)))."""

    def __init__(self, block: nn.Module, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.block, self.conv, self.bn = block, conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(self.block(x))))


class MobileNetV2(StagedNet):
    default_ac_stage = 2
    stage_channels = (24, 64, 160, 1280)

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks: list[nn.Module] = []
        in_planes = 32
        for expansion, out_planes, n, stride in CFG:
            for s in [stride] + [1] * (n - 1):
                blocks.append(Block(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    @property
    def stem(self) -> nn.Module:  # type: ignore[override]
        return nn.Sequential(self.conv1, self.bn1, nn.ReLU())

    @property
    def stages(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:  # type: ignore[override]
        """Read-only views of the four stages; the registered modules keep kuangliu's names."""
        first = tuple(self.layers[a:b] for a, b in STAGE_BLOCKS[:3])
        return (*first, _Stage4(self.layers[16], self.conv2, self.bn2))  # type: ignore[return-value]

    def stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def stage_forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        a, b = STAGE_BLOCKS[index]
        for i in range(a, b):
            x = self.layers[i](x)
        if index == 3:
            x = F.relu(self.bn2(self.conv2(x)))
        return x


@register("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels)
