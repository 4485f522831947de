"""Generator for data-free distillation: latent vector -> image in the teacher's input space.

DCGAN-style (as in ZSKT and DFAD): a linear projection to a small feature map, batch
norm, two nearest-neighbour upsamplings each followed by conv -> BN -> LeakyReLU, and a
final conv to the image channels. The last step is what makes the images legal teacher
inputs: `tanh` maps to pixels in [0, 1], which are then standardised exactly as the
teacher's preprocessing does, so every output lies in the range `[low, high]` per channel
(`low = (0 - mean) / std`, `high = (1 - mean) / std`). Images of any size work: the
feature map starts at ceil(size / 4) and the output is cropped to the exact size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Generator(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        image_size: int,
        channels: int,
        low: Sequence[float] | float = -1.0,
        high: Sequence[float] | float = 1.0,
        width: int = 64,
    ):
        super().__init__()
        if image_size < 1 or channels < 1 or latent_dim < 1:
            raise ValueError("latent_dim, image_size and channels must be positive")
        self.latent_dim = latent_dim
        self.image_size = image_size
        self.channels = channels
        self.init_size = max(1, math.ceil(image_size / 4))
        w2 = 2 * width
        self.project = nn.Linear(latent_dim, w2 * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(w2)
        self.block1 = nn.Sequential(nn.Conv2d(w2, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(nn.Conv2d(w2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2))
        self.to_image = nn.Conv2d(width, channels, 3, padding=1)
        lo = torch.as_tensor(low, dtype=torch.float32).reshape(-1)
        hi = torch.as_tensor(high, dtype=torch.float32).reshape(-1)
        lo, hi = lo.expand(channels).clone() if lo.numel() == 1 else lo, hi.expand(channels).clone() if hi.numel() == 1 else hi
        if lo.numel() != channels or hi.numel() != channels or bool((hi <= lo).any()):
            raise ValueError(f"low/high must give {channels} channel(s) with high > low")
        self.register_buffer("low", lo.view(1, channels, 1, 1))
        self.register_buffer("high", hi.view(1, channels, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activation(z))

    def pre_activation(self, z: torch.Tensor) -> torch.Tensor:
        """The output before the final tanh: DFME perturbs here, so every probe stays a legal image."""
        out = self.project(z.flatten(1)).view(z.shape[0], -1, self.init_size, self.init_size)
        out = self.bn0(out)
        out = self.block1(F.interpolate(out, scale_factor=2, mode="nearest"))
        out = self.block2(F.interpolate(out, scale_factor=2, mode="nearest"))
        return self.to_image(out)[..., : self.image_size, : self.image_size]

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """tanh to pixels in [0, 1] (the teacher's raw range), then the teacher's standardisation."""
        pixels = (torch.tanh(pre) + 1) / 2
        return self.low + (self.high - self.low) * pixels
