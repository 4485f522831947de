"""Augmentation as batched tensor ops on the training device (no host loader, no torchvision).

Random crop with zero padding and an optional horizontal flip, done for a whole batch with
one gather, driven by an explicit `torch.Generator` so a run is reproducible from its seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, pad: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
        wp = w + 2 * pad
        rows = (oy[:, None] + torch.arange(h, device=dev)[None]).view(n, 1, h, 1).expand(n, c, h, wp)
        cols = (ox[:, None] + torch.arange(w, device=dev)[None]).view(n, 1, 1, w).expand(n, c, h, w)
        x = xp.gather(2, rows).gather(3, cols)
    if hflip:
        flip = torch.rand(n, generator=generator, device=generator.device).to(dev) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    return x
