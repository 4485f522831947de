"""Loading teacher files, which are untrusted input.

Formats (detected by magic bytes, never by extension):

* **safetensors** (preferred): the header (8-byte length + JSON) is checked against the file
  size and the parameter limit *before* any tensor is read, so a header that claims 10^12
  values fails in microseconds.
* **ONNX**: run as a black-box teacher through onnxruntime (`OnnxTeacher`, CPU provider);
  external-data references (paths to other files) are refused.
* **PyTorch state_dict** (`torch.save` zip archive, or the legacy pre-1.6 format): never
  unpickled in the calling process. The pickle opcodes are scanned first (globals outside
  torch's weights-only allow-list are rejected without running anything), then
  `torch.load(weights_only=True)` runs in a child process (`kdaudit.models.loader_proc`)
  under RLIMIT_AS / RLIMIT_CPU / a wall timeout, which writes the tensors to a temporary
  safetensors file that this process reads back.

Rejected with a one-line `CheckpointError`: TorchScript archives, full pickles, truncated or
corrupt files, files over `Settings.max_upload_bytes`, more values than
`Settings.max_parameters`, and weights whose keys or shapes do not match the declared
architecture. Wrappers `{'state_dict': ...}`, `{'model': ...}`, `{'net': ...}` and the
DataParallel `module.` prefix are unwrapped; `num_batches_tracked` differences are ignored.

`validate_teacher_file` does *all* parsing (every format) in the resource-limited child, so
the API process never parses untrusted bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickletools
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from kdaudit.core.errors import CheckpointError, KdauditError
from kdaudit.core.settings import Settings, get_settings

Format = Literal["safetensors", "onnx", "pytorch"]
FORMATS: tuple[str, ...] = get_args(Format)

#: dict keys under which training scripts commonly nest the state_dict
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")

_SAFETENSORS_DTYPES = {
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
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_MAX_PICKLE_BYTES = 16 * 1024 * 1024  # data.pkl of a ResNet-50 state_dict is ~30 KB
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_FEW = 3
#: torch.save writes stored (uncompressed) entries; a compressed entry that expands more than
#: this is refused as a zip bomb before anything decompresses it
_MAX_ZIP_RATIO = 50
_ZIP_SLACK = 64 * 1024 * 1024


class CheckpointLimitError(CheckpointError):
    """A file over one of the configured limits. `limit` names the setting (e.g. 'max_parameters')."""

    def __init__(self, message: str, limit: str, limit_value: int, requested: int | None = None) -> None:
        super().__init__(message)
        self.limit, self.limit_value, self.requested = limit, int(limit_value), requested

    def as_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "limit_value": self.limit_value, "requested": self.requested}

# ---------------------------------------------------------------------------------------------
# small helpers


def _one_line(msg: object, limit: int = 300) -> str:
    text = " ".join(str(msg).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _few(items: list[str], n: int = _FEW) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise CheckpointError(f"cannot read {Path(path).name}: {e.strerror or e}") from None
    return h.hexdigest()


def _check_size(path: Path, settings: Settings) -> int:
    try:
        st = path.stat()
    except OSError as e:
        raise CheckpointError(f"cannot read {path.name}: {e.strerror or e}") from None
    if not path.is_file():
        raise CheckpointError(f"{path.name} is not a regular file")
    if st.st_size == 0:
        raise CheckpointError("file is empty")
    if st.st_size > settings.max_upload_bytes:
        raise CheckpointLimitError(
            f"file is {st.st_size:,} bytes, over the upload limit of {settings.max_upload_bytes:,} bytes",
            "max_upload_bytes",
            settings.max_upload_bytes,
            st.st_size,
        )
    return st.st_size


# ---------------------------------------------------------------------------------------------
# format detection


def _allowed_globals() -> set[str]:
    """What `torch.load(weights_only=True)` accepts, as 'module.name' strings."""
    try:
        from torch import _weights_only_unpickler as wou

        allowed = set(wou._get_allowed_globals())
        for obj in torch.serialization.get_safe_globals():
            obj = obj[0] if isinstance(obj, tuple) else obj
            allowed.add(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}")
        return allowed
    except Exception:  # pragma: no cover - private API moved; the child's weights_only still guards
        return {
            "collections.OrderedDict",
            "collections.Counter",
            "_codecs.encode",
            "builtins.set",
            "builtins.bytearray",
            "builtins.complex",
        }


_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _pickle_globals(stream: io.BytesIO) -> list[str]:
    """Globals referenced by the next pickle in `stream` (opcode scan; nothing is executed).

    STACK_GLOBAL arguments are recovered by tracking pushed strings through the memo; when
    that fails the global is reported as '?' (left to the child's weights_only unpickler).
    """
    found: list[str] = []
    pushed: list[Any] = []
    memo: dict[int, Any] = {}
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            mod, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            found.append(f"{mod}.{attr}" if isinstance(mod, str) and isinstance(attr, str) else "?")
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg)
        elif name in _GET_OPS:
            pushed.append(memo.get(arg))
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in _PUT_OPS:
            memo[arg] = pushed[-1] if pushed else None
        elif name != "FRAME":
            pushed.append(None)
        if len(pushed) > 64:
            del pushed[:-8]
    return found


def _reject_foreign_globals(globals_: list[str]) -> None:
    allowed = _allowed_globals()
    # Unresolved ('?') and torch.* names are left to weights_only in the child, which is the
    # real guard; anything else outside the allow-list is certainly a full pickle.
    bad = [g for g in globals_ if g != "?" and g not in allowed and not g.startswith("torch.")]
    if bad:
        raise CheckpointError(
            f"file is a full pickle (it needs {_few(sorted(set(bad)), 2)} to load, and unpickling can run "
            "arbitrary code); upload model.state_dict() as safetensors, ONNX or a torch.save state_dict"
        )


def _check_zip_bomb(path: Path, infos: list[zipfile.ZipInfo], settings: Settings | None) -> None:
    """Refuse archives that expand far beyond what a state_dict needs, from the central directory
    alone (nothing is decompressed): torch.save stores entries uncompressed."""
    settings = settings or get_settings()
    total = sum(max(i.file_size, 0) for i in infos)
    packed = sum(max(i.compress_size, 0) for i in infos)
    budget = settings.max_parameters * 8 + _ZIP_SLACK  # one float64 copy of the allowed values
    for i in infos:
        if i.compress_type != zipfile.ZIP_STORED and i.file_size > 1024 * 1024:
            ratio = i.file_size / max(i.compress_size, 1)
            if ratio > _MAX_ZIP_RATIO:
                raise CheckpointError(
                    f"zip archive entry {_one_line(i.filename, 60)!r} expands {ratio:,.0f}:1 "
                    f"({i.compress_size:,} -> {i.file_size:,} bytes): refusing a zip bomb"
                )
    if total > budget:
        raise CheckpointLimitError(
            f"zip archive expands to {total:,} bytes (from {packed:,}), more than a state_dict within the "
            f"parameter limit of {settings.max_parameters:,} values can need: refusing a zip bomb",
            "max_parameters",
            settings.max_parameters,
        )


def _inspect_zip(path: Path, settings: Settings | None = None) -> Format:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if len(names) > 100_000:
                raise CheckpointError("zip archive has too many entries to be a PyTorch checkpoint")
            _check_zip_bomb(path, infos, settings)
            if any(n.endswith("constants.pkl") or n.startswith("code/") or "/code/" in n for n in names):
                raise CheckpointError(
                    "file is a TorchScript archive (torch.jit.save); TorchScript carries code and is not "
                    "accepted: upload model.state_dict() as safetensors, ONNX or a torch.save state_dict"
                )
            pkls = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
            if not pkls:
                raise CheckpointError("zip archive without data.pkl: not a PyTorch state_dict file")
            info = pkls[0]
            if info.file_size > _MAX_PICKLE_BYTES:
                raise CheckpointError(f"data.pkl is {info.file_size:,} bytes: too large for a state_dict")
            data = zf.read(info)
    except CheckpointError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        ValueError,
        RuntimeError,
        NotImplementedError,
    ) as e:
        raise CheckpointError(f"zip archive is corrupt or truncated ({_one_line(e, 120)})") from None
    try:
        _reject_foreign_globals(_pickle_globals(io.BytesIO(data)))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"PyTorch file has a corrupt pickle ({_one_line(e, 120)})") from None
    return "pytorch"


def _inspect_pickle(path: Path, size: int) -> Format:
    """Non-zip pickle: legacy torch.save format (accepted after a scan) or a plain pickle (rejected)."""
    with open(path, "rb") as f:
        stream = io.BytesIO(f.read(min(size, _MAX_PICKLE_BYTES)))
    try:
        first = list(pickletools.genops(stream))
        legacy = any(
            op.name in ("LONG1", "LONG4", "LONG") and arg == _LEGACY_TORCH_MAGIC for op, arg, _ in first
        )
        globals_: list[str] = []
        stream.seek(0)
        for _ in range(5 if legacy else 1):  # magic, protocol, sys_info, data, storage keys
            globals_ += _pickle_globals(stream)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"file looks like a pickle but is corrupt or truncated ({_one_line(e, 120)})"
        ) from None
    _reject_foreign_globals(globals_)
    if not legacy:
        raise CheckpointError(
            "file is a plain pickle, not a torch.save state_dict; pickles are not accepted: upload "
            "model.state_dict() as safetensors, ONNX or a torch.save state_dict"
        )
    return "pytorch"


def _looks_like_old_pickle(head: bytes) -> bool:
    """Protocol 0/1 pickles have no PROTO opcode: accept only if the head parses to STOP with globals."""
    try:
        ops = [op.name for op, _a, _p in pickletools.genops(io.BytesIO(head))]
    except Exception:
        return False
    return ops[-1:] == ["STOP"] and any(o in ("GLOBAL", "INST", "REDUCE", "OBJ") for o in ops)


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


_ONNX_SECOND_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}


def _looks_like_onnx(head: bytes) -> bool:
    # ModelProto starts with field 1 (ir_version, varint): 0x08 <small int>, then another field tag.
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in _ONNX_SECOND_TAGS


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return 2 <= n and head[8:9] == b"{"


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
        return _inspect_zip(path, settings)
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return _inspect_pickle(path, size)
    if _looks_like_safetensors(head):
        return "safetensors"
    if _looks_like_onnx(head):
        return "onnx"
    if _looks_like_old_pickle(head):
        return _inspect_pickle(path, size)
    if head.startswith(b"\x1f\x8b"):
        raise CheckpointError("file is gzip-compressed; upload the uncompressed model file")
    known = _known_non_model(head)
    if known:
        raise CheckpointError(
            f"file is {known}, not model weights (expected safetensors, ONNX or a PyTorch state_dict)"
        )
    try:
        head.decode("utf-8")
        is_text = all(c >= 32 or c in (9, 10, 13) for c in head)
    except UnicodeDecodeError:
        is_text = False
    if is_text:
        raise CheckpointError(
            "file is text, not model weights (expected safetensors, ONNX or a PyTorch state_dict)"
        )
    raise CheckpointError("unrecognized file format (expected safetensors, ONNX or a PyTorch state_dict)")


# ---------------------------------------------------------------------------------------------
# safetensors


def check_safetensors_header(path: Path, settings: Settings) -> dict[str, dict[str, Any]]:
    """Validate a safetensors header against the file size and limits, reading no tensor data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError("safetensors file is truncated (no header)")
        n = struct.unpack("<Q", raw)[0]
        if n > _MAX_SAFETENSORS_HEADER:
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
    data_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    total = 0
    tensors: dict[str, dict[str, Any]] = {}
    for name, spec in meta.items():
        if name == "__metadata__":
            if not isinstance(spec, dict) or not all(isinstance(v, str) for v in spec.values()):
                raise CheckpointError("safetensors __metadata__ must map strings to strings")
            continue
        if not isinstance(spec, dict):
            raise CheckpointError(f"safetensors entry {name!r} is not an object")
        dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"tensor {name!r} has unsupported dtype {_one_line(dtype, 20)!r}")
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
        nbytes = numel * _SAFETENSORS_DTYPES[dtype][0]
        if nbytes != offsets[1] - offsets[0]:
            raise CheckpointError(
                f"tensor {name!r}: shape {tuple(shape)} ({dtype}) needs {nbytes:,} bytes but the header "
                f"gives it {offsets[1] - offsets[0]:,}: corrupt or malicious file"
            )
        total += numel
        if total > settings.max_parameters:
            raise CheckpointLimitError(
                f"safetensors header declares more than {settings.max_parameters:,} values "
                f"(tensor {name!r} has shape {tuple(shape)}); over the parameter limit",
                "max_parameters",
                settings.max_parameters,
                total,
            )
        spans.append((offsets[0], offsets[1], name))
        tensors[name] = spec
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
    for name, spec in tensors.items():
        if _SAFETENSORS_DTYPES[spec["dtype"]][1] is None:
            raise CheckpointError(f"tensor {name!r} has dtype {spec['dtype']}, which kdaudit cannot load")
    return tensors


def _read_safetensors(path: Path, settings: Settings) -> dict[str, torch.Tensor]:
    check_safetensors_header(path, settings)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"safetensors file cannot be read ({_one_line(e, 150)})") from None


# ---------------------------------------------------------------------------------------------
# state_dict normalisation and matching


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
                f"file holds a dict that is not a state_dict: non-tensor entries {_few(others)}; "
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


def _describe(arch: str, num_classes: int, in_channels: int) -> str:
    return f"{arch} ({num_classes} classes, {in_channels} input channel{'s' if in_channels != 1 else ''})"


def _build(arch: str, num_classes: int, in_channels: int, settings: Settings) -> nn.Module:
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


def match_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Check keys/shapes against `model`; return a state_dict ready for strict loading."""
    expected = model.state_dict()

    def skip(k: str) -> bool:
        return k.endswith("num_batches_tracked")

    missing = [k for k in expected if not skip(k) and k not in sd]
    unexpected = [k for k in sd if not skip(k) and k not in expected]
    mismatched = [
        k for k in expected if k in sd and not skip(k) and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_few(unexpected)}")
    if mismatched:
        shown = [f"{k} is {tuple(sd[k].shape)}, expected {tuple(expected[k].shape)}" for k in mismatched]
        problems.append(f"{len(mismatched)} shape mismatch(es): {_few(shown)}")
    if problems:
        hint = ""
        if (
            "linear.weight" in mismatched
            and sd["linear.weight"].shape[1:] == expected["linear.weight"].shape[1:]
        ):
            hint = f" (the file's head has {sd['linear.weight'].shape[0]} classes)"
        raise CheckpointError(f"weights do not match {what}: " + "; ".join(problems) + hint)
    out: dict[str, torch.Tensor] = {}
    for k, ref in expected.items():
        v = sd.get(k)
        if v is None or (skip(k) and tuple(v.shape) != tuple(ref.shape)):
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
    model = _build(arch, num_classes, in_channels, settings)
    ready = match_state_dict(model, sd, _describe(arch, num_classes, in_channels))
    try:
        model.load_state_dict(ready, strict=True)
    except RuntimeError as e:  # pragma: no cover - match_state_dict checks everything load_state_dict does
        raise CheckpointError(f"weights do not load: {_one_line(e, 200)}") from None
    model.has_features = True
    return model.eval()


# ---------------------------------------------------------------------------------------------
# the loader subprocess


_ENV_KEEP = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "SYSTEMROOT",
)


def _child_env() -> dict[str, str]:
    """A minimal environment: no proxies, no credentials, one thread per math library."""
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONWARNINGS="ignore",
        PYTHONUNBUFFERED="1",
    )
    return env


def _limits(settings: Settings) -> tuple[int, int, int]:
    memory = settings.loader_memory_bytes
    cpu = settings.loader_cpu_seconds
    # The child writes at most one float64 copy of the allowed parameters.
    fsize = settings.max_parameters * 8 + 64 * 1024 * 1024
    return memory, cpu, fsize


def apply_limits(memory: int, cpu: int, fsize: int) -> None:
    """Lower this process's limits (never raises them); used by preexec_fn and by the child itself."""
    for res, value, hard in (
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_CPU, cpu, cpu + 5),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        soft_now, hard_now = resource.getrlimit(res)
        new_hard = hard if hard_now == resource.RLIM_INFINITY else min(hard, hard_now)
        new_soft = min(value, new_hard)
        if soft_now == resource.RLIM_INFINITY or soft_now > new_soft or hard_now != new_hard:
            try:
                resource.setrlimit(res, (new_soft, new_hard))
            except (ValueError, OSError):
                pass


def _run_loader(args: list[str], settings: Settings, workdir: Path) -> dict[str, Any]:
    """Run `python -m kdaudit.models.loader_proc ARGS` under limits; return its result JSON."""
    memory, cpu, fsize = _limits(settings)
    result_path = workdir / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "kdaudit.models.loader_proc",
        *args,
        "--result",
        str(result_path),
        "--limits",
        f"{memory},{cpu},{fsize}",
    ]
    wall = max(30, 2 * cpu + 10)
    try:
        proc = subprocess.run(
            cmd,
            cwd=workdir,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=wall,
            preexec_fn=lambda: apply_limits(memory, cpu, fsize),
            close_fds=True,
        )
    except subprocess.TimeoutExpired:
        raise CheckpointLimitError(
            f"loading the file took longer than {wall} s and was stopped", "loader_cpu_seconds", cpu
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot start the loader process: {e.strerror or e}") from None
    result: dict[str, Any] | None = None
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = None
    if isinstance(result, dict) and result.get("ok") is False:
        message = _one_line(result.get("error", "loader failed"))
        limit = result.get("limit")
        if isinstance(limit, dict) and isinstance(limit.get("limit"), str):
            raise CheckpointLimitError(message, limit["limit"], limit.get("limit_value") or 0, limit.get("requested"))
        raise CheckpointError(message)
    if isinstance(result, dict) and result.get("ok") is True and proc.returncode == 0:
        return result
    rc = proc.returncode
    if rc in (-signal.SIGXCPU, -signal.SIGKILL):
        raise CheckpointLimitError(
            f"loading the file used more than the {cpu} s CPU limit or was killed", "loader_cpu_seconds", cpu
        )
    if rc == -signal.SIGXFSZ:
        raise CheckpointError("loading the file produced more data than allowed")
    stderr = (proc.stderr or b"").decode("utf-8", "replace")
    if any(
        s in stderr
        for s in (
            "MemoryError",
            "std::bad_alloc",
            "Cannot allocate memory",
            "failed to map segment",
            "out of memory",
        )
    ):
        raise CheckpointLimitError(
            f"loading the file needed more than the {memory:,}-byte memory limit", "loader_memory_bytes", memory
        )
    if rc is not None and rc < 0:
        raise CheckpointError(f"the loader process crashed (signal {-rc}) on this file")
    last = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "no details")
    raise CheckpointError(f"the loader process failed on this file ({_one_line(last, 160)})")


def _load_pytorch_via_child(path: Path, settings: Settings) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory(prefix="kdaudit-loader-") as tmp:
        out = Path(tmp) / "tensors.safetensors"
        _run_loader(
            ["convert", str(path.resolve()), str(out), "--max-parameters", str(settings.max_parameters)],
            settings,
            Path(tmp),
        )
        return _read_safetensors(out, settings)


def torch_load_state_dict(path: Path, max_parameters: int) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)` + normalisation. ONLY call this inside the loader child."""
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if (
            "Weights only load failed" in text
            or "Unsupported global" in text
            or "unsupported" in text.lower()
        ):
            raise CheckpointError(
                "file is a full pickle (it needs objects other than tensors to load, and unpickling can run "
                "arbitrary code); upload model.state_dict() as safetensors, ONNX or a torch.save state_dict"
            ) from None
        raise CheckpointError(f"PyTorch file is corrupt ({_one_line(text, 150)})") from None
    except MemoryError:
        raise
    except Exception as e:
        raise CheckpointError(f"PyTorch file is corrupt or truncated ({_one_line(e, 150)})") from None
    sd = normalise_state_dict(obj, max_parameters)
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in sd.items():
        if v.is_sparse or v.layout != torch.strided or v.is_quantized:
            raise CheckpointError(f"tensor {k!r} is not a dense tensor")
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if ptr and ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[k] = t
    return out


# ---------------------------------------------------------------------------------------------
# ONNX


# OnnxTeacher lives in models/onnx_teacher.py (re-exported here by the module __getattr__ below).


# ---------------------------------------------------------------------------------------------
# public API


@dataclass
class TeacherFileInfo:
    format: str
    sha256: str
    parameters: int
    size_bytes: int


_FORMAT_ALIASES = {
    "pt": "pytorch",
    "pth": "pytorch",
    "torch": "pytorch",
    "state_dict": "pytorch",
    "st": "safetensors",
}


def _normalise_fmt(fmt: str | None) -> Format | None:
    if fmt is None:
        return None
    norm = str(fmt).strip().lower().lstrip(".")
    norm = _FORMAT_ALIASES.get(norm, norm)
    if norm in ("", "auto"):
        return None
    if norm not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return norm  # type: ignore[return-value]


def _resolve_format(path: Path, fmt: str | None, settings: Settings | None = None) -> Format:
    fmt = _normalise_fmt(fmt)
    detected = detect_format(path, settings)
    if fmt is not None and fmt != detected:
        raise CheckpointError(f"file was declared as {fmt} but its content is {detected}")
    return detected


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
    _check_size(path, settings)
    detected = _resolve_format(path, fmt, settings)
    if detected == "onnx":  # a black box: the graph says its shapes, no architecture name needed
        from kdaudit.models.onnx_teacher import OnnxTeacher

        teacher = OnnxTeacher(path, num_classes, in_channels, settings=settings, threads=onnx_threads, image_size=image_size)
        return teacher, detected
    if not arch:
        raise CheckpointError(
            f"a {detected} file holds weights only: name its architecture (--arch); "
            "`kdaudit inspect FILE` says which architecture its keys and shapes match"
        )
    if detected == "safetensors":
        tensors = _read_safetensors(path, settings)
    elif in_child:
        tensors = torch_load_state_dict(path, settings.max_parameters)
    else:
        tensors = _load_pytorch_via_child(path, settings)
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
    _check_dims(num_classes, in_channels)
    try:
        model, _fmt = _load_local(Path(path), arch, num_classes, in_channels, fmt, settings, in_child=False,
                                  image_size=image_size)
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError("not enough memory to load the teacher") from None
    except Exception as e:  # never let a raw exception type escape to the CLI/worker
        raise CheckpointError(f"cannot load the file ({type(e).__name__}: {_one_line(e, 160)})") from None
    return model


def _check_dims(num_classes: int, in_channels: int) -> None:
    if not isinstance(num_classes, int) or not 1 <= num_classes <= 100_000:
        raise CheckpointError(f"num_classes must be an integer between 1 and 100000, not {num_classes!r}")
    if not isinstance(in_channels, int) or not 1 <= in_channels <= 64:
        raise CheckpointError(f"in_channels must be an integer between 1 and 64, not {in_channels!r}")


def validate_in_process(
    path: Path, arch: str | None, num_classes: int, in_channels: int, fmt: str | None, settings: Settings
) -> TeacherFileInfo:
    """The body of `validate_teacher_file`; ONLY call this inside the loader child."""
    size = _check_size(path, settings)
    model, detected = _load_local(
        path, arch, num_classes, in_channels, fmt, settings, in_child=True, onnx_threads=1
    )
    from kdaudit.models.onnx_teacher import OnnxTeacher

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
    _check_dims(num_classes, in_channels)
    _check_size(path, settings)  # stat only: no bytes are read here
    fmt = _normalise_fmt(fmt)
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
        result = _run_loader(args, settings, Path(tmp))
    try:
        return TeacherFileInfo(**result["info"])
    except (KeyError, TypeError):
        raise CheckpointError("the loader process returned an invalid answer") from None


def save_teacher(model: nn.Module, path: str | os.PathLike[str], arch: str | None = None) -> str:
    """Write `model`'s state_dict as safetensors (atomically); return the file's sha256."""
    from safetensors.torch import save_file

    from kdaudit.models.onnx_teacher import OnnxTeacher

    if isinstance(model, OnnxTeacher):
        raise CheckpointError("an ONNX teacher has no state_dict to save; store the .onnx file itself")
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if ptr and ptr in seen:
            t = t.clone()
        seen.add(ptr)
        tensors[k] = t
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


def __getattr__(name: str) -> Any:
    """`OnnxTeacher` lives in models/onnx_teacher.py (which uses this module's helpers): re-exported lazily."""
    if name == "OnnxTeacher":
        from kdaudit.models.onnx_teacher import OnnxTeacher

        return OnnxTeacher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "Format",
    "OnnxTeacher",  # noqa: F822 - provided by the module __getattr__ (lazy: onnx_teacher imports this module)
    "TeacherFileInfo",
    "CheckpointLimitError",
    "check_safetensors_header",
    "detect_format",
    "load_teacher",
    "save_teacher",
    "sha256_file",
    "validate_teacher_file",
]
