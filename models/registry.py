"""Architecture names -> constructors. The single place that knows which names exist.

Names: `cnn-W1-W2-W3-W4` (any four positive widths), plus the CIFAR family registered in
`ARCHITECTURES` (resnet18/34/50, mobilenetv2). Unknown names raise `InputError` listing
what is available, so a typo never turns into a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from kdaudit.core.errors import InputError
from kdaudit.models.base import StagedNet
from kdaudit.models.cnn import SmallCNN

Builder = Callable[[int, int], StagedNet]  # (num_classes, in_channels) -> model

ARCHITECTURES: dict[str, Builder] = {}

_CNN = re.compile(r"^cnn-(\d+)-(\d+)-(\d+)-(\d+)$")


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        ARCHITECTURES[name] = fn
        return fn

    return deco


def parse_arch(name: str) -> str:
    """Normalise and check an architecture name; raise InputError if unknown."""
    norm = name.strip().lower()
    _load_cifar_family()
    if _CNN.match(norm):
        widths = [int(w) for w in _CNN.match(norm).groups()]  # type: ignore[union-attr]
        if any(w <= 0 or w > 4096 for w in widths):
            raise InputError(f"architecture {name!r}: widths must be between 1 and 4096")
        return norm
    if norm in ARCHITECTURES:
        return norm
    known = ", ".join(sorted(ARCHITECTURES)) or "none"
    raise InputError(f"unknown architecture {name!r}; use cnn-W1-W2-W3-W4 or one of: {known}")


def build_model(name: str, num_classes: int, in_channels: int) -> StagedNet:
    norm = parse_arch(name)
    m = _CNN.match(norm)
    if m:
        widths = tuple(int(w) for w in m.groups())
        return SmallCNN(widths, num_classes=num_classes, in_channels=in_channels)  # type: ignore[arg-type]
    return ARCHITECTURES[norm](num_classes, in_channels)


def _load_cifar_family() -> None:
    """Import the modules that register the CIFAR architectures (lazily, to keep import cheap)."""
    try:
        from kdaudit.models import mobilenetv2, resnet  # noqa: F401
    except ImportError:  # pragma: no cover - only while those modules are being written
        pass
