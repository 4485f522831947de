"""ONNX teachers: black boxes of any architecture, run through onnxruntime (CPU provider).

An ONNX file carries its own graph, so it needs no architecture name: the input shape
(N, C, H, W) and the class count are read from the graph (`onnx_io`), and a teacher whose
channels, image size or classes do not fit the dataset is refused with a message that says
which. External-data references (paths to other files) are refused: they would let an upload
read files on the server.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdaudit.core.errors import CheckpointError
from kdaudit.core.settings import Settings, get_settings
from kdaudit.models.checkpoints.archive_limits import check_size, check_upload_bytes
from kdaudit.models.checkpoints.errors import CheckpointLimitError, one_line


@dataclass(frozen=True)
class OnnxIO:
    """What the graph says about its one input and first output (None where a dim is dynamic)."""

    input_name: str
    input_shape: tuple[int | None, ...]
    input_type: str
    output_shape: tuple[int | None, ...]
    parameters: int

    @property
    def channels(self) -> int | None:
        return self.input_shape[1] if len(self.input_shape) == 4 else None

    @property
    def image_size(self) -> tuple[int | None, int | None]:
        return (self.input_shape[2], self.input_shape[3]) if len(self.input_shape) == 4 else (None, None)

    @property
    def num_classes(self) -> int | None:
        return self.output_shape[-1] if len(self.output_shape) == 2 else None


def _dims(value_info: Any) -> tuple[int | None, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)


def _proto(data: bytes) -> Any:
    import onnx

    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:
        raise CheckpointError(f"not a valid ONNX model ({one_line(e, 150)})") from None
    graph = proto.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) for t in graph.initializer):
        raise CheckpointError("ONNX model references external data files; export it as a single file")
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                raise CheckpointError("ONNX model references external data files; export it as a single file")
    return proto


def onnx_io(data: bytes) -> OnnxIO:
    """Input/output facts of an ONNX model (no session is created)."""
    import onnx

    proto = _proto(data)
    graph = proto.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1 or not graph.output:
        raise CheckpointError(f"ONNX model must take one image tensor; it has {len(inputs)} inputs")
    elem = inputs[0].type.tensor_type.elem_type
    return OnnxIO(
        input_name=inputs[0].name,
        input_shape=_dims(inputs[0]),
        input_type=onnx.TensorProto.DataType.Name(elem).lower(),
        output_shape=_dims(graph.output[0]),
        parameters=int(sum(math.prod(t.dims) for t in graph.initializer)),
    )


class OnnxTeacher(nn.Module):
    """A black-box teacher: logits from an ONNX model through onnxruntime (CPU provider).

    `num_classes` / `in_channels` / `image_size` None take the graph's values; given ones must
    agree with the graph (a CheckpointError names the difference).
    """

    has_features = False

    def __init__(
        self,
        source: str | os.PathLike[str] | bytes,
        num_classes: int | None = None,
        in_channels: int | None = None,
        settings: Settings | None = None,
        image_size: int | None = None,
        threads: int | None = None,
    ):
        super().__init__()
        settings = settings or get_settings()
        if isinstance(source, bytes):
            data = source
        else:
            path = Path(source)
            check_size(path, settings)
            data = path.read_bytes()
        check_upload_bytes(len(data), settings, what="ONNX model")
        import numpy as np
        import onnxruntime as ort

        self._np = np
        io = onnx_io(data)
        self.num_parameters = io.parameters
        if self.num_parameters > settings.max_parameters:
            raise CheckpointLimitError(
                f"ONNX model has {self.num_parameters:,} weights, over the parameter limit of {settings.max_parameters:,}",
                "max_parameters", settings.max_parameters, self.num_parameters,
            )
        if len(io.input_shape) != 4:
            raise CheckpointError(f"ONNX model input has rank {len(io.input_shape)}; expected (N, C, H, W)")
        if io.channels is not None and in_channels is not None and io.channels != in_channels:
            raise CheckpointError(f"ONNX model takes {io.channels} input channel(s); the dataset has {in_channels}")
        channels = io.channels or in_channels
        if channels is None:
            raise CheckpointError("the ONNX model's channel dimension is dynamic; give the dataset so it is known")
        for dim in io.image_size:
            if dim is not None and image_size is not None and dim != image_size:
                h, w = io.image_size
                raise CheckpointError(f"ONNX model takes {h}x{w} images; the dataset's are {image_size}x{image_size}")
        if io.num_classes is not None and num_classes is not None and io.num_classes != num_classes:
            raise CheckpointError(f"ONNX model outputs {io.num_classes} classes; the dataset has {num_classes}")
        self.in_channels = channels
        self.io = io
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise CheckpointError(f"onnxruntime cannot load the model ({one_line(e, 150)})") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        self._input_name, self._output_name = inputs[0].name, outputs[0].name
        self._dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}.get(inputs[0].type)
        if self._dtype is None:
            raise CheckpointError(f"ONNX model input has type {inputs[0].type}; expected float")
        shape = io.input_shape
        self._batch = shape[0]
        default = image_size or (32 if channels == 3 else 28)
        self.input_size = tuple(d or default for d in shape[2:])
        self.num_classes = num_classes or io.num_classes
        with torch.no_grad():
            probe = self._run(np.zeros((self._batch or 2, channels, *self.input_size), np.float32), check=False)
        if self.num_classes is None:
            self.num_classes = int(probe.shape[-1]) if probe.ndim == 2 else None
        if probe.ndim != 2 or probe.shape[1] != self.num_classes:
            raise CheckpointError(
                f"ONNX teacher returned shape {tuple(probe.shape)} for {probe.shape[0]} images; "
                f"expected ({probe.shape[0]}, {self.num_classes})"
            )

    def _run(self, arr: Any, check: bool = True) -> Any:
        np = self._np
        try:
            out = self._session.run([self._output_name], {self._input_name: arr.astype(self._dtype, copy=False)})[0]
        except Exception as e:
            raise CheckpointError(f"ONNX teacher failed on a batch of shape {tuple(arr.shape)} ({one_line(e, 150)})") from None
        out = np.asarray(out)
        if check and out.shape != (arr.shape[0], self.num_classes):
            raise CheckpointError(
                f"ONNX teacher returned shape {tuple(out.shape)} for {arr.shape[0]} images; "
                f"expected ({arr.shape[0]}, {self.num_classes})"
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        np = self._np
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise CheckpointError(f"ONNX teacher expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        b = self._batch
        if b is None or arr.shape[0] == b:
            out = self._run(arr)
        else:  # fixed-batch export: run in chunks of b, padding the last one
            parts = []
            for i in range(0, arr.shape[0], b):
                chunk = arr[i : i + b]
                k = chunk.shape[0]
                if k < b:
                    chunk = np.concatenate([chunk, np.zeros((b - k, *chunk.shape[1:]), chunk.dtype)])
                parts.append(self._run(chunk)[:k])
            out = np.concatenate(parts)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)
