"""Weights against the declared architecture: unwrap the state_dict the way training scripts
save it, then check every key, shape and value before `load_state_dict` sees it.

`key_differences` is the one rule for "does this state_dict fit that architecture" (it ignores
`num_batches_tracked`, which older torch versions do not save); `kdaudit inspect` uses it to
find the architecture a weights file fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdaudit.core.errors import CheckpointError, KdauditError
from kdaudit.core.settings import Settings, get_settings
from kdaudit.models.checkpoints.errors import CheckpointLimitError, few, one_line

#: dict keys under which training scripts commonly nest the state_dict
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


def normalise_state_dict(obj: Any, max_parameters: int | None = None) -> dict[str, torch.Tensor]:
    """Unwrap {'state_dict'|'model'|'net': ...}, strip 'module.', check every value is a tensor."""
    for _depth in range(4):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"file holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            if not obj:
                raise CheckpointError("file holds an empty dict, not a state_dict")
            others = [
                f"{k!s} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)
            ]
            raise CheckpointError(
                f"file holds a dict that is not a state_dict: non-tensor entries {few(others)}; "
                f"expected a dict of tensors, possibly under one of {', '.join(WRAPPER_KEYS)}"
            )
        obj = inner
    else:
        raise CheckpointError("state_dict is nested too deeply")
    if not all(isinstance(k, str) for k in obj):
        raise CheckpointError("state_dict keys must be strings")
    sd: dict[str, torch.Tensor] = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if max_parameters is not None:
        total = sum(v.numel() for v in sd.values())
        if total > max_parameters:
            raise CheckpointLimitError(
                f"file holds {total:,} values, over the parameter limit of {max_parameters:,}",
                "max_parameters",
                max_parameters,
                total,
            )
    return sd


def ignored_key(key: str) -> bool:
    """Keys whose presence and shape never decide a match (BatchNorm's step counter)."""
    return key.endswith("num_batches_tracked")


@dataclass
class KeyDifferences:
    """How a state_dict differs from an architecture's, key by key (in the architecture's order)."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)


def key_differences(expected: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> KeyDifferences:
    return KeyDifferences(
        missing=[k for k in expected if not ignored_key(k) and k not in sd],
        unexpected=[k for k in sd if not ignored_key(k) and k not in expected],
        mismatched=[
            k
            for k in expected
            if k in sd and not ignored_key(k) and tuple(sd[k].shape) != tuple(expected[k].shape)
        ],
    )


def describe(arch: str, num_classes: int, in_channels: int) -> str:
    return f"{arch} ({num_classes} classes, {in_channels} input channel{'s' if in_channels != 1 else ''})"


def build_within_limits(arch: str, num_classes: int, in_channels: int, settings: Settings) -> nn.Module:
    """`arch` built fresh, refused when the architecture alone is over the parameter limit."""
    from kdaudit.models.registry import build_model

    try:
        model = build_model(arch, num_classes, in_channels)
    except KdauditError as e:
        raise CheckpointError(str(e)) from None
    n = sum(p.numel() for p in model.parameters())
    if n > settings.max_parameters:
        raise CheckpointLimitError(
            f"{arch} has {n:,} parameters, over the parameter limit of {settings.max_parameters:,}",
            "max_parameters",
            settings.max_parameters,
            n,
        )
    return model


def _mismatch_message(
    diff: KeyDifferences, expected: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], what: str
) -> str:
    problems = []
    if diff.missing:
        problems.append(f"missing {len(diff.missing)} key(s): {few(diff.missing)}")
    if diff.unexpected:
        problems.append(f"unexpected {len(diff.unexpected)} key(s): {few(diff.unexpected)}")
    if diff.mismatched:
        shown = [f"{k} is {tuple(sd[k].shape)}, expected {tuple(expected[k].shape)}" for k in diff.mismatched]
        problems.append(f"{len(diff.mismatched)} shape mismatch(es): {few(shown)}")
    hint = ""
    if (
        "linear.weight" in diff.mismatched
        and sd["linear.weight"].shape[1:] == expected["linear.weight"].shape[1:]
    ):
        hint = f" (the file's head has {sd['linear.weight'].shape[0]} classes)"
    return f"weights do not match {what}: " + "; ".join(problems) + hint


def match_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Check keys/shapes against `model`; return a state_dict ready for strict loading."""
    expected = model.state_dict()
    diff = key_differences(expected, sd)
    if diff:
        raise CheckpointError(_mismatch_message(diff, expected, sd, what))
    out: dict[str, torch.Tensor] = {}
    for k, ref in expected.items():
        v = sd.get(k)
        if v is None or (ignored_key(k) and tuple(v.shape) != tuple(ref.shape)):
            out[k] = ref
            continue
        if v.is_complex() or (ref.is_floating_point() and v.dtype == torch.bool):
            raise CheckpointError(f"tensor {k!r} has dtype {v.dtype}, expected {ref.dtype}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"tensor {k!r} contains NaN or infinite values")
        out[k] = v.to(ref.dtype)
    return out


def teacher_from_state_dict(
    obj: Any, arch: str, num_classes: int, in_channels: int, settings: Settings | None = None
) -> nn.Module:
    """Build `arch`, check `obj` (a possibly wrapped state_dict) against it and load it; eval mode."""
    settings = settings or get_settings()
    sd = normalise_state_dict(obj, settings.max_parameters)
    model = build_within_limits(arch, num_classes, in_channels, settings)
    ready = match_state_dict(model, sd, describe(arch, num_classes, in_channels))
    try:
        model.load_state_dict(ready, strict=True)
    except RuntimeError as e:  # pragma: no cover - match_state_dict checks everything load_state_dict does
        raise CheckpointError(f"weights do not load: {one_line(e, 200)}") from None
    model.has_features = True
    return model.eval()
