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

One job per module, in the order a file meets them:

* `archive_limits` - upload size and zip-bomb checks, before anything is parsed
* `detect`         - the format by magic bytes, and what a non-model file is instead
* `pickle_scan`    - opcode scan: TorchScript and full pickles refused without running them
* `safetensors_io` - safetensors header checks, reading, and `save_teacher`
* `sandbox`        - the loader child process; `rlimits` - its one table of resource limits
* `torch_load`     - the one `torch.load`, run only inside that child
* `state_dict_match` - unwrapping a state_dict and matching it to the declared architecture
* `onnx_teacher`   - ONNX teachers (black boxes run by onnxruntime)
* `load`           - the entry points `load_teacher` and `validate_teacher_file`
"""

from kdaudit.models.checkpoints.archive_limits import check_size
from kdaudit.models.checkpoints.detect import FORMATS, Format, detect_format
from kdaudit.models.checkpoints.digest import sha256_file
from kdaudit.models.checkpoints.errors import CheckpointLimitError
from kdaudit.models.checkpoints.load import (
    TeacherFileInfo,
    load_teacher,
    validate_in_process,
    validate_teacher_file,
)
from kdaudit.models.checkpoints.onnx_teacher import OnnxTeacher
from kdaudit.models.checkpoints.safetensors_io import check_safetensors_header, read_safetensors, save_teacher
from kdaudit.models.checkpoints.sandbox import load_pytorch_via_child
from kdaudit.models.checkpoints.state_dict_match import (
    WRAPPER_KEYS,
    match_state_dict,
    normalise_state_dict,
    teacher_from_state_dict,
)
from kdaudit.models.checkpoints.torch_load import torch_load_state_dict

__all__ = [
    "FORMATS",
    "WRAPPER_KEYS",
    "CheckpointLimitError",
    "Format",
    "OnnxTeacher",
    "TeacherFileInfo",
    "check_safetensors_header",
    "check_size",
    "detect_format",
    "load_pytorch_via_child",
    "load_teacher",
    "match_state_dict",
    "normalise_state_dict",
    "read_safetensors",
    "save_teacher",
    "sha256_file",
    "teacher_from_state_dict",
    "torch_load_state_dict",
    "validate_in_process",
    "validate_teacher_file",
]
