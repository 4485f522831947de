"""CIFAR ResNet-18/34/50 with the kuangliu/pytorch-cifar parameter names.

The layout (3x3 stem with stride 1, no max-pool, `layer1..layer4`, blocks with
`conv1/bn1/conv2/bn2[/conv3/bn3]` and a `shortcut` Sequential, final `linear`) matches
kuangliu/pytorch-cifar, which is also what the Nasty-Teacher and skeptical-student code
bases train, so their checkpoints load with `load_state_dict(strict=True)` unchanged.

Stages for `StagedNet`: the stem is relu(bn1(conv1(x))) and stage *i* is `layer{i+1}`. The
layers are *not* registered a second time in a ModuleList (that would add `stages.N...` keys
to the state_dict); `stage_forward` is overridden instead and `stages` is a read-only view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdaudit.models.base import StagedNet
from kdaudit.models.registry import register


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(StagedNet):
    default_ac_stage = 2

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        e = block.expansion
        self.stage_channels = (64 * e, 128 * e, 256 * e, 512 * e)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    @property
    def stem(self) -> nn.Module:  # type: ignore[override]
        """Read-only view (not registered): conv1 -> bn1 -> relu."""
        return nn.Sequential(self.conv1, self.bn1, nn.ReLU())

    @property
    def stages(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:  # type: ignore[override]
        """Read-only view of the four stages (the registered modules are `layer1..layer4`)."""
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def stage_forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.stages[index](x)


@register("resnet18")
def resnet18(num_classes: int, in_channels: int) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register("resnet34")
def resnet34(num_classes: int, in_channels: int) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


@register("resnet50")
def resnet50(num_classes: int, in_channels: int) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
