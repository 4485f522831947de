"""Small configurable CNN (`cnn-32-64-64-128`): the digits/MNIST workhorse.

Four conv-BN-ReLU stages; stages 2-4 halve the resolution with max-pooling, so an 8x8
digits image ends at 1x1 and a 32x32 CIFAR image at 4x4. Small enough to train a teacher
on two CPU cores in seconds, deep enough to hang skeptical exits after stage 1-3.
"""

from __future__ import annotations

from torch import nn

from kdaudit.models.base import StagedNet


def _conv_stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(*layers)


class SmallCNN(StagedNet):
    def __init__(self, widths: tuple[int, int, int, int], num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stage_channels = tuple(widths)  # type: ignore[assignment]
        self.num_classes = num_classes
        self.stem = nn.Identity()
        chans = (in_channels, *widths)
        self.stages = nn.ModuleList(_conv_stage(chans[i], chans[i + 1], pool=i > 0) for i in range(4))
        self.linear = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
