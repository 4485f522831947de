"""Refusing code before it can run: TorchScript archives and full pickles, found by scanning
pickle opcodes (`pickletools.genops` only decodes; nothing is unpickled or executed here).

The scan is a fast path with clear messages. The real guard is `torch.load(weights_only=True)`
in the loader child (`torch_load`): names the scan cannot resolve, and every `torch.*` name, are
left to it.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch

from kdaudit.core.errors import CheckpointError
from kdaudit.core.settings import Settings
from kdaudit.models.checkpoints.archive_limits import check_zip_bomb
from kdaudit.models.checkpoints.errors import few, one_line

MAX_PICKLE_BYTES = 16 * 1024 * 1024  # data.pkl of a ResNet-50 state_dict is ~30 KB
#: the first pickle of a legacy (pre-1.6) torch.save file is this number
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
#: what to upload instead; the end of every refusal here
UPLOAD_HINT = "upload model.state_dict() as safetensors, ONNX or a torch.save state_dict"

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


def allowed_globals() -> set[str]:
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


def pickle_globals(stream: io.BytesIO) -> list[str]:
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


def reject_foreign_globals(globals_: list[str]) -> None:
    allowed = allowed_globals()
    # Unresolved ('?') and torch.* names are left to weights_only in the child, which is the
    # real guard; anything else outside the allow-list is certainly a full pickle.
    bad = [g for g in globals_ if g != "?" and g not in allowed and not g.startswith("torch.")]
    if bad:
        raise CheckpointError(
            f"file is a full pickle (it needs {few(sorted(set(bad)), 2)} to load, and unpickling can run "
            f"arbitrary code); {UPLOAD_HINT}"
        )


def _read_data_pkl(path: Path, settings: Settings | None) -> bytes:
    """data.pkl of a torch.save zip archive, after the entry count, zip-bomb and TorchScript checks."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(names) > 100_000:
            raise CheckpointError("zip archive has too many entries to be a PyTorch checkpoint")
        check_zip_bomb(infos, settings)
        if any(n.endswith("constants.pkl") or n.startswith("code/") or "/code/" in n for n in names):
            raise CheckpointError(
                f"file is a TorchScript archive (torch.jit.save); TorchScript carries code and is not "
                f"accepted: {UPLOAD_HINT}"
            )
        pkls = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
        if not pkls:
            raise CheckpointError("zip archive without data.pkl: not a PyTorch state_dict file")
        info = pkls[0]
        if info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"data.pkl is {info.file_size:,} bytes: too large for a state_dict")
        return zf.read(info)


def check_torch_zip(path: Path, settings: Settings | None = None) -> None:
    """Refuse a zip archive unless it is a torch.save state_dict whose pickle names only allowed globals."""
    try:
        data = _read_data_pkl(path, settings)
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
        raise CheckpointError(f"zip archive is corrupt or truncated ({one_line(e, 120)})") from None
    try:
        reject_foreign_globals(pickle_globals(io.BytesIO(data)))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"PyTorch file has a corrupt pickle ({one_line(e, 120)})") from None


def check_legacy_torch_pickle(path: Path, size: int) -> None:
    """Non-zip pickle: legacy torch.save format (accepted after a scan) or a plain pickle (rejected)."""
    with open(path, "rb") as f:
        stream = io.BytesIO(f.read(min(size, MAX_PICKLE_BYTES)))
    try:
        first = list(pickletools.genops(stream))
        legacy = any(
            op.name in ("LONG1", "LONG4", "LONG") and arg == LEGACY_TORCH_MAGIC for op, arg, _ in first
        )
        globals_: list[str] = []
        stream.seek(0)
        for _ in range(5 if legacy else 1):  # magic, protocol, sys_info, data, storage keys
            globals_ += pickle_globals(stream)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"file looks like a pickle but is corrupt or truncated ({one_line(e, 120)})"
        ) from None
    reject_foreign_globals(globals_)
    if not legacy:
        raise CheckpointError(
            f"file is a plain pickle, not a torch.save state_dict; pickles are not accepted: {UPLOAD_HINT}"
        )


def looks_like_old_pickle(head: bytes) -> bool:
    """Protocol 0/1 pickles have no PROTO opcode: accept only if the head parses to STOP with globals."""
    try:
        ops = [op.name for op, _a, _p in pickletools.genops(io.BytesIO(head))]
    except Exception:
        return False
    return ops[-1:] == ["STOP"] and any(o in ("GLOBAL", "INST", "REDUCE", "OBJ") for o in ops)
