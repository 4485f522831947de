"""The public entry points: `load_teacher` (for audits) and `validate_teacher_file` (for
uploads), both built on one path that sizes, detects and loads a file in whichever format.

PyTorch files are unpickled only in the resource-limited loader child; `validate_teacher_file`
runs *all* parsing (every format) there, so the API process never parses untrusted bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kdaudit.core.errors import CheckpointError, KdauditError
from kdaudit.core.settings import Settings, get_settings
from kdaudit.models.checkpoints.archive_limits import check_size
from kdaudit.models.checkpoints.detect import Format, normalise_format, resolve_format
from kdaudit.models.checkpoints.digest import sha256_file
from kdaudit.models.checkpoints.errors import one_line
from kdaudit.models.checkpoints.onnx_teacher import OnnxTeacher
from kdaudit.models.checkpoints.safetensors_io import read_safetensors
from kdaudit.models.checkpoints.sandbox import load_pytorch_via_child, run_loader
from kdaudit.models.checkpoints.state_dict_match import teacher_from_state_dict
from kdaudit.models.checkpoints.torch_load import torch_load_state_dict


@dataclass
class TeacherFileInfo:
    format: str
    sha256: str
    parameters: int
    size_bytes: int


def check_dims(num_classes: int, in_channels: int) -> None:
    if not isinstance(num_classes, int) or not 1 <= num_classes <= 100_000:
        raise CheckpointError(f"num_classes must be an integer between 1 and 100000, not {num_classes!r}")
    if not isinstance(in_channels, int) or not 1 <= in_channels <= 64:
        raise CheckpointError(f"in_channels must be an integer between 1 and 64, not {in_channels!r}")


def _load_local(
    path: Path,
    arch: str | None,
    num_classes: int,
    in_channels: int,
    fmt: str | None,
    settings: Settings,
    in_child: bool,
    onnx_threads: int | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, Format]:
    """The teacher in `path` and its format; torch pickles go to the child unless `in_child`."""
    check_size(path, settings)
    detected = resolve_format(path, fmt, settings)
    if detected == "onnx":  # a black box: the graph says its shapes, no architecture name needed
        teacher = OnnxTeacher(
            path, num_classes, in_channels, settings=settings, threads=onnx_threads, image_size=image_size
        )
        return teacher, detected
    if not arch:
        raise CheckpointError(
            f"a {detected} file holds weights only: name its architecture (--arch); "
            "`kdaudit inspect FILE` says which architecture its keys and shapes match"
        )
    if detected == "safetensors":
        tensors = read_safetensors(path, settings)
    elif in_child:
        tensors = torch_load_state_dict(path, settings.max_parameters)
    else:
        tensors = load_pytorch_via_child(path, settings)
    return teacher_from_state_dict(tensors, arch, num_classes, in_channels, settings), detected


def load_teacher(
    path: str | os.PathLike[str],
    arch: str | None,
    num_classes: int,
    in_channels: int,
    fmt: Format | None = None,
    settings: Settings | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """A teacher in eval mode: a StagedNet with the file's weights, or an `OnnxTeacher`
    (which needs no `arch`; `image_size` is checked against its graph).

    PyTorch files are unpickled only in the resource-limited loader child; any failure is a
    `CheckpointError` with a one-line message.
    """
    settings = settings or get_settings()
    check_dims(num_classes, in_channels)
    try:
        model, _fmt = _load_local(
            Path(path), arch, num_classes, in_channels, fmt, settings, in_child=False, image_size=image_size
        )
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError("not enough memory to load the teacher") from None
    except Exception as e:  # never let a raw exception type escape to the CLI/worker
        raise CheckpointError(f"cannot load the file ({type(e).__name__}: {one_line(e, 160)})") from None
    return model


def validate_in_process(
    path: Path, arch: str | None, num_classes: int, in_channels: int, fmt: str | None, settings: Settings
) -> TeacherFileInfo:
    """The body of `validate_teacher_file`; ONLY call this inside the loader child."""
    size = check_size(path, settings)
    model, detected = _load_local(
        path, arch, num_classes, in_channels, fmt, settings, in_child=True, onnx_threads=1
    )
    if isinstance(model, OnnxTeacher):
        params = model.num_parameters
    else:
        params = sum(p.numel() for p in model.parameters())
    return TeacherFileInfo(format=detected, sha256=sha256_file(path), parameters=params, size_bytes=size)


def validate_teacher_file(
    path: str | os.PathLike[str],
    arch: str | None,
    num_classes: int,
    in_channels: int,
    fmt: Format | None = None,
    settings: Settings | None = None,
) -> TeacherFileInfo:
    """Check a teacher file completely, parsing it only in the resource-limited child process."""
    settings = settings or get_settings()
    path = Path(path)
    check_dims(num_classes, in_channels)
    check_size(path, settings)  # stat only: no bytes are read here
    fmt = normalise_format(fmt)
    from kdaudit.models.registry import parse_arch

    try:
        arch = parse_arch(arch) if arch else None
    except KdauditError as e:
        raise CheckpointError(str(e)) from None
    child_settings = {
        "max_upload_bytes": settings.max_upload_bytes,
        "max_parameters": settings.max_parameters,
    }
    with tempfile.TemporaryDirectory(prefix="kdaudit-loader-") as tmp:
        args = [
            "validate",
            str(path.resolve()),
            *(["--arch", arch] if arch else []),
            "--num-classes",
            str(num_classes),
            "--in-channels",
            str(in_channels),
            "--settings",
            json.dumps(child_settings),
        ]
        if fmt:
            args += ["--fmt", fmt]
        result = run_loader(args, settings, Path(tmp))
    try:
        return TeacherFileInfo(**result["info"])
    except (KeyError, TypeError):
        raise CheckpointError("the loader process returned an invalid answer") from None
