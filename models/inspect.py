"""`kdaudit inspect FILE`: what a teacher file is, before anyone audits it.

A weights file (safetensors, torch state_dict) holds tensors only, so an audit needs the
architecture's name; this finds it: the class count comes from the head, the input channels
from the first convolution, and every architecture of our zoo (plus the `cnn-W1-W2-W3-W4`
widths the stage shapes imply) is built and compared key by key. It reports the exact match,
or the nearest one and what differs. An ONNX file is described from its graph (it needs no
architecture). Files are parsed under the same untrusted-input rules as `load_teacher`: a
torch file is unpickled only in the resource-limited loader child, pickles and TorchScript are
refused with the usual message.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdaudit.core.errors import CheckpointError, KdauditError
from kdaudit.core.settings import Settings, get_settings
from kdaudit.models.checkpoints import (
    OnnxTeacher,
    check_size,
    detect_format,
    load_pytorch_via_child,
    normalise_state_dict,
    read_safetensors,
    sha256_file,
)
from kdaudit.models.checkpoints.state_dict_match import ignored_key, key_differences


@dataclass
class ArchMatch:
    architecture: str
    exact: bool
    matched_keys: int
    differences: list[str] = field(default_factory=list)


@dataclass
class Inspection:
    path: str
    format: str
    sha256: str
    size_bytes: int
    parameters: int
    input_shape: list[Any]
    output_shape: list[Any]
    architecture: ArchMatch | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        shape = lambda s: "(" + ", ".join("?" if d is None else str(d) for d in s) + ")"  # noqa: E731
        out = [
            f"file:         {self.path}",
            f"format:       {self.format}",
            f"sha256:       {self.sha256}",
            f"size:         {self.size_bytes:,} bytes",
            f"parameters:   {self.parameters:,}",
            f"input:        {shape(self.input_shape)}  (N, C, H, W)",
            f"output:       {shape(self.output_shape)}  (N, classes)",
        ]
        a = self.architecture
        if a is not None:
            if a.exact:
                out.append(f"architecture: {a.architecture} (every key and shape matches; audit with --arch {a.architecture})")
            else:
                out.append(f"architecture: no exact match in kdaudit's zoo; nearest {a.architecture} "
                           f"({a.matched_keys} keys match)")
                out += [f"  differs:    {d}" for d in a.differences]
        out += [f"note:         {n}" for n in self.notes]
        return out


_CNN_STAGE = re.compile(r"^stages\.(\d)\.0\.weight$")


def _head_and_input(sd: dict[str, torch.Tensor]) -> tuple[int | None, int | None]:
    convs = [v for v in sd.values() if v.ndim == 4 and v.is_floating_point()]
    in_channels = int(convs[0].shape[1]) if convs else None
    head = sd.get("linear.weight")
    if head is None:
        mats = [v for v in sd.values() if v.ndim == 2 and v.is_floating_point()]
        head = mats[-1] if mats else None
    return (int(head.shape[0]) if head is not None else None), in_channels


def _candidates(sd: dict[str, torch.Tensor]) -> list[str]:
    from kdaudit.models.registry import ARCHITECTURES, _load_cifar_family

    _load_cifar_family()
    names = list(ARCHITECTURES)
    widths = {int(m.group(1)): int(v.shape[0]) for k, v in sd.items() if (m := _CNN_STAGE.match(k)) and v.ndim == 4}
    if sorted(widths) == [0, 1, 2, 3]:
        names.insert(0, "cnn-" + "-".join(str(widths[i]) for i in range(4)))
    return names


def match_architecture(sd: dict[str, torch.Tensor], num_classes: int, in_channels: int) -> ArchMatch | None:
    """The zoo architecture whose keys and shapes match `sd` exactly, else the nearest one."""
    from kdaudit.models.registry import build_model

    best: ArchMatch | None = None
    for name in _candidates(sd):
        try:
            expected = build_model(name, num_classes, in_channels).state_dict()
        except KdauditError:
            continue
        diff = key_differences(expected, sd)
        matched = sum(1 for k in expected if k in sd and not ignored_key(k)) - len(diff.mismatched)
        diffs = []
        if diff.missing:
            diffs.append(f"{len(diff.missing)} key(s) missing from the file, e.g. {', '.join(diff.missing[:3])}")
        if diff.unexpected:
            diffs.append(f"{len(diff.unexpected)} key(s) the architecture has not, e.g. {', '.join(diff.unexpected[:3])}")
        if diff.mismatched:
            diffs.append(f"{len(diff.mismatched)} shape mismatch(es), e.g. " + ", ".join(
                f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}" for k in diff.mismatched[:3]))
        cand = ArchMatch(name, exact=not diffs, matched_keys=matched, differences=diffs)
        if cand.exact:
            return cand
        if best is None or cand.matched_keys > best.matched_keys:
            best = cand
    return best


def inspect_file(path: str | os.PathLike[str], settings: Settings | None = None) -> Inspection:
    settings = settings or get_settings()
    path = Path(path)
    size = check_size(path, settings)
    fmt = detect_format(path, settings)  # refuses pickles, TorchScript, archives, text with one line
    sha = sha256_file(path)
    if fmt == "onnx":
        teacher = OnnxTeacher(path, settings=settings, threads=1)
        io = teacher.io
        return Inspection(str(path), "onnx", sha, size, io.parameters, list(io.input_shape), [None, teacher.num_classes],
                          notes=["a black box: audit it without --arch (its shapes come from the graph)",
                                 "declare its preprocessing with --preprocess / --mean --std (default: the dataset's statistics)"])
    tensors = read_safetensors(path, settings) if fmt == "safetensors" else load_pytorch_via_child(path, settings)
    sd = normalise_state_dict(tensors, settings.max_parameters)
    num_classes, in_channels = _head_and_input(sd)
    params = sum(v.numel() for k, v in sd.items() if v.is_floating_point() and not k.endswith(("running_mean", "running_var")))
    notes = ["weights only: audit with --arch NAME"]
    match = match_architecture(sd, num_classes, in_channels) if num_classes and in_channels else None
    if match is None:
        notes.append("no classifier head or first convolution found: not a model kdaudit can build")
    return Inspection(str(path), fmt, sha, size, params, [None, in_channels, None, None], [None, num_classes],
                      architecture=match, notes=notes)


def inspect_or_error(path: str | os.PathLike[str]) -> Inspection:
    try:
        return inspect_file(path)
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError("not enough memory to inspect the file") from None
    except KdauditError:
        raise
    except Exception as e:  # noqa: BLE001 - a file we cannot read is a one-line error, not a traceback
        raise CheckpointError(f"cannot inspect the file ({type(e).__name__}: {str(e)[:160]})") from None
