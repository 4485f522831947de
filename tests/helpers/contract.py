"""A teacher trained elsewhere: digits pixels in [0, 1] with no mean/std step, exported to ONNX.

It stands for the owner's real model of issue 16: its own pipeline never standardised the
inputs, so kdaudit's default (the dataset's statistics) feeds it shifted images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from kdaudit.distill.data import Splits, load_splits
from kdaudit.models.registry import build_model

ARCH = "cnn-8-16-16-32"


def raw_pixels(x: torch.Tensor, splits: Splits) -> torch.Tensor:
    """Undo kdaudit's standardisation: the [0, 1] pixels the owner's pipeline fed its model."""
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    return x * std + mean


def train_raw_teacher(epochs: int = 30, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """(model, its test accuracy in its own pipeline, percent): digits on [0, 1] pixels, no standardisation."""
    torch.manual_seed(seed)
    splits = load_splits("digits")
    x = raw_pixels(torch.cat([splits.x_train, splits.x_val]), splits)
    y = torch.cat([splits.y_train, splits.y_val])
    model = build_model(ARCH, 10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(raw_pixels(splits.x_test, splits)).argmax(1) == splits.y_test).float().mean().item() * 100
    return model, acc


def export_onnx(model: torch.nn.Module, path: Path, channels: int = 1, size: int = 8) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, channels, size, size),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return path


def write_digits_folder(root: Path, n_train: int = 300, n_test: int = 100):
    """scikit-learn's digits as an image-folder dataset: `root/{train,test}/digit<k>/<i>.png` (8x8
    grey, lossless), the first `n_train` images to train, the next `n_test` to test, plus one
    unreadable file in train. Returns (the uint8 pixels, the labels) of all digits."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = np.round(d.images * (255 / 16)).astype(np.uint8)
    for split, rows in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        for i in rows:
            folder = root / split / f"digit{d.target[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i], mode="L").save(folder / f"{i:04d}.png")
    (root / "train" / "digit3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return pixels, d.target
