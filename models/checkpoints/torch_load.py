"""The one `torch.load` in kdaudit. It runs ONLY inside the resource-limited loader child
(`python -m kdaudit.models.loader_proc`), never in the API or worker process: even with
`weights_only=True`, unpickling untrusted bytes is left to a process that can crash alone.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from kdaudit.core.errors import CheckpointError
from kdaudit.models.checkpoints.errors import one_line
from kdaudit.models.checkpoints.pickle_scan import UPLOAD_HINT
from kdaudit.models.checkpoints.safetensors_io import writable_tensors
from kdaudit.models.checkpoints.state_dict_match import normalise_state_dict


def _is_refused_global(error_text: str) -> bool:
    """Whether torch's weights-only unpickler refused a global (a full pickle, not a corrupt file)."""
    return (
        "Weights only load failed" in error_text
        or "Unsupported global" in error_text
        or "unsupported" in error_text.lower()
    )


def torch_load_state_dict(path: Path, max_parameters: int) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)` + normalisation. ONLY call this inside the loader child."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if _is_refused_global(text):
            raise CheckpointError(
                "file is a full pickle (it needs objects other than tensors to load, and unpickling can run "
                f"arbitrary code); {UPLOAD_HINT}"
            ) from None
        raise CheckpointError(f"PyTorch file is corrupt ({one_line(text, 150)})") from None
    except MemoryError:
        raise
    except Exception as e:
        raise CheckpointError(f"PyTorch file is corrupt or truncated ({one_line(e, 150)})") from None
    sd = normalise_state_dict(obj, max_parameters)
    for k, v in sd.items():
        if v.is_sparse or v.layout != torch.strided or v.is_quantized:
            raise CheckpointError(f"tensor {k!r} is not a dense tensor")
    return writable_tensors(sd)
