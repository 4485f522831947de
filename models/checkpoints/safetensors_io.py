"""Reading and writing safetensors, the one format kdaudit both accepts and writes.

The header (8-byte length + JSON) is checked against the file size and the parameter limit
*before* any tensor is read, so a header that claims 10^12 values fails in microseconds. The
loader child hands PyTorch files back in this format too, so every tensor reaches the API
process through `read_safetensors`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdaudit.core.errors import CheckpointError
from kdaudit.core.settings import Settings
from kdaudit.models.checkpoints.digest import sha256_file
from kdaudit.models.checkpoints.errors import CheckpointLimitError, one_line
from kdaudit.models.checkpoints.onnx_teacher import OnnxTeacher

#: safetensors dtype -> (bytes per value, torch dtype or None where torch cannot hold it)
SAFETENSORS_DTYPES: dict[str, tuple[int, torch.dtype | None]] = {
    "F64": (8, torch.float64),
    "F32": (4, torch.float32),
    "F16": (2, torch.float16),
    "BF16": (2, torch.bfloat16),
    "I64": (8, torch.int64),
    "I32": (4, torch.int32),
    "I16": (2, torch.int16),
    "I8": (1, torch.int8),
    "U8": (1, torch.uint8),
    "BOOL": (1, torch.bool),
    "U16": (2, None),
    "U32": (4, None),
    "U64": (8, None),
    "F8_E4M3": (1, None),
    "F8_E5M2": (1, None),
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def _read_header(path: Path, size: int) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and its length in bytes."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError("safetensors file is truncated (no header)")
        n = struct.unpack("<Q", raw)[0]
        if n > _MAX_HEADER_BYTES:
            raise CheckpointError(f"safetensors header claims {n:,} bytes: corrupt or malicious file")
        if n > size - 8:
            raise CheckpointError(
                f"safetensors file is truncated (header of {n:,} bytes, file of {size:,} bytes)"
            )
        hdr = f.read(n)
    try:
        meta = json.loads(hdr.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError("safetensors header is not valid JSON (corrupt or truncated file)") from None
    if not isinstance(meta, dict):
        raise CheckpointError("safetensors header is not a JSON object")
    return meta, n


def _entry_values(name: str, spec: Any) -> int:
    """How many values one header entry declares, after checking its dtype, shape and offsets agree."""
    if not isinstance(spec, dict):
        raise CheckpointError(f"safetensors entry {name!r} is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"tensor {name!r} has unsupported dtype {one_line(dtype, 20)!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise CheckpointError(f"tensor {name!r} has an invalid shape in the safetensors header")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"tensor {name!r} has invalid data offsets in the safetensors header")
    numel = math.prod(shape)
    nbytes = numel * SAFETENSORS_DTYPES[dtype][0]
    if nbytes != offsets[1] - offsets[0]:
        raise CheckpointError(
            f"tensor {name!r}: shape {tuple(shape)} ({dtype}) needs {nbytes:,} bytes but the header "
            f"gives it {offsets[1] - offsets[0]:,}: corrupt or malicious file"
        )
    return numel


def _check_spans(spans: list[tuple[int, int, str]], data_len: int) -> None:
    """The tensors' byte ranges must tile the data section exactly: no overlap, gap or tail."""
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise CheckpointError(f"safetensors data offsets overlap or leave gaps (at tensor {name!r})")
        end = stop
    if end > data_len:
        raise CheckpointError(
            f"safetensors file is truncated: tensors need {end:,} bytes after the header, {data_len:,} present"
        )
    if end != data_len:
        raise CheckpointError(f"safetensors file has {data_len - end:,} trailing bytes after the tensor data")


def check_safetensors_header(path: Path, settings: Settings) -> dict[str, dict[str, Any]]:
    """Validate a safetensors header against the file size and limits, reading no tensor data."""
    size = path.stat().st_size
    meta, header_len = _read_header(path, size)
    spans: list[tuple[int, int, str]] = []
    total = 0
    tensors: dict[str, dict[str, Any]] = {}
    for name, spec in meta.items():
        if name == "__metadata__":
            if not isinstance(spec, dict) or not all(isinstance(v, str) for v in spec.values()):
                raise CheckpointError("safetensors __metadata__ must map strings to strings")
            continue
        numel = _entry_values(name, spec)
        total += numel
        if total > settings.max_parameters:
            raise CheckpointLimitError(
                f"safetensors header declares more than {settings.max_parameters:,} values "
                f"(tensor {name!r} has shape {tuple(spec['shape'])}); over the parameter limit",
                "max_parameters",
                settings.max_parameters,
                total,
            )
        spans.append((spec["data_offsets"][0], spec["data_offsets"][1], name))
        tensors[name] = spec
    _check_spans(spans, size - 8 - header_len)
    for name, spec in tensors.items():
        if SAFETENSORS_DTYPES[spec["dtype"]][1] is None:
            raise CheckpointError(f"tensor {name!r} has dtype {spec['dtype']}, which kdaudit cannot load")
    return tensors


def read_safetensors(path: Path, settings: Settings) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose header passed `check_safetensors_header`."""
    check_safetensors_header(path, settings)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"safetensors file cannot be read ({one_line(e, 150)})") from None


def writable_tensors(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies that safetensors can write: it refuses tensors sharing storage, so
    a second view of storage already seen (tied weights) is cloned."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in sd.items():
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if ptr and ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[k] = t
    return out


def save_teacher(model: nn.Module, path: str | os.PathLike[str], arch: str | None = None) -> str:
    """Write `model`'s state_dict as safetensors (atomically); return the file's sha256."""
    from safetensors.torch import save_file

    if isinstance(model, OnnxTeacher):
        raise CheckpointError("an ONNX teacher has no state_dict to save; store the .onnx file itself")
    path = Path(path)
    tensors = writable_tensors(model.state_dict())
    metadata = {"format": "pt"}
    if arch:
        metadata["kdaudit_arch"] = arch
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sha256_file(path)
