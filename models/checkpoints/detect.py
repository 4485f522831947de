"""Which format a teacher file is, by its magic bytes (never its extension or a user's word).

A declared format is only checked against the detected one. Zip archives and pickles are
scanned on the way (`pickle_scan`), so TorchScript and full pickles are refused here already;
anything else that is not safetensors, ONNX or a torch state_dict gets a message saying what
the file is instead (an image, an executable, text...).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Literal, get_args

from kdaudit.core.errors import CheckpointError
from kdaudit.core.settings import Settings
from kdaudit.models.checkpoints.pickle_scan import (
    check_legacy_torch_pickle,
    check_torch_zip,
    looks_like_old_pickle,
)

Format = Literal["safetensors", "onnx", "pytorch"]
FORMATS: tuple[str, ...] = get_args(Format)

_EXPECTED = "expected safetensors, ONNX or a PyTorch state_dict"

#: magic bytes of common files that are not accepted model formats -> what to call them
_NON_MODEL_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "a PNG image"),
    (b"\xff\xd8\xff", 0, "a JPEG image"),
    (b"GIF8", 0, "a GIF image"),
    (b"%PDF-", 0, "a PDF document"),
    (b"\x7fELF", 0, "an ELF executable or shared library"),
    (b"MZ", 0, "a Windows executable"),
    (b"\xcf\xfa\xed\xfe", 0, "a Mach-O executable"),
    (b"#!", 0, "a script"),
    (b"\x93NUMPY", 0, "a NumPy .npy array (save the model's state_dict with safetensors instead)"),
    (b"\x89HDF\r\n\x1a\n", 0, "an HDF5 file (a Keras/TensorFlow .h5 model?)"),
    (b"ustar", 257, "a tar archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7-Zip archive"),
    (b"BZh", 0, "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", 0, "an xz-compressed file"),
    (b"\x28\xb5\x2f\xfd", 0, "a zstd-compressed file"),
    (b"Rar!\x1a\x07", 0, "a RAR archive"),
    (b"SQLite format 3\x00", 0, "an SQLite database"),
    (b"GGUF", 0, "a GGUF (llama.cpp) model"),
)

_ONNX_SECOND_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}

#: what users call the formats -> our name
_FORMAT_ALIASES = {
    "pt": "pytorch",
    "pth": "pytorch",
    "torch": "pytorch",
    "state_dict": "pytorch",
    "st": "safetensors",
}


def _known_non_model(head: bytes) -> str | None:
    for magic, offset, what in _NON_MODEL_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return what
    if head[:1] in (b"{", b"[") and head.lstrip()[:1] in (b"{", b"["):
        try:
            json.loads(head.decode("utf-8"))
            return "a JSON document"
        except (UnicodeDecodeError, ValueError):
            pass
    return None


def _looks_like_onnx(head: bytes) -> bool:
    # ModelProto starts with field 1 (ir_version, varint): 0x08 <small int>, then another field tag.
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in _ONNX_SECOND_TAGS


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return 2 <= n and head[8:9] == b"{"


def _not_a_model(head: bytes) -> CheckpointError:
    """The most useful refusal for a file that is no model format: what it is instead."""
    if head.startswith(b"\x1f\x8b"):
        return CheckpointError("file is gzip-compressed; upload the uncompressed model file")
    known = _known_non_model(head)
    if known:
        return CheckpointError(f"file is {known}, not model weights ({_EXPECTED})")
    try:
        head.decode("utf-8")
        is_text = all(c >= 32 or c in (9, 10, 13) for c in head)
    except UnicodeDecodeError:
        is_text = False
    if is_text:
        return CheckpointError(f"file is text, not model weights ({_EXPECTED})")
    return CheckpointError(f"unrecognized file format ({_EXPECTED})")


def detect_format(path: str | os.PathLike[str], settings: Settings | None = None) -> Format:
    """Format by magic bytes. Raises CheckpointError for unknown files, TorchScript and full pickles."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise CheckpointError(f"cannot read {path.name}: {e.strerror or e}") from None
    if not head:
        raise CheckpointError("file is empty")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        check_torch_zip(path, settings)
        return "pytorch"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        check_legacy_torch_pickle(path, size)
        return "pytorch"
    if _looks_like_safetensors(head):
        return "safetensors"
    if _looks_like_onnx(head):
        return "onnx"
    if looks_like_old_pickle(head):
        check_legacy_torch_pickle(path, size)
        return "pytorch"
    raise _not_a_model(head)


def normalise_format(fmt: str | None) -> Format | None:
    """A declared format in our words; None for 'auto' or nothing declared."""
    if fmt is None:
        return None
    norm = str(fmt).strip().lower().lstrip(".")
    norm = _FORMAT_ALIASES.get(norm, norm)
    if norm in ("", "auto"):
        return None
    if norm not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return norm  # type: ignore[return-value]


def resolve_format(path: Path, fmt: str | None, settings: Settings | None = None) -> Format:
    """The detected format, refusing a file whose content contradicts its declared format."""
    fmt = normalise_format(fmt)
    detected = detect_format(path, settings)
    if fmt is not None and fmt != detected:
        raise CheckpointError(f"file was declared as {fmt} but its content is {detected}")
    return detected
