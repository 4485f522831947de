"""What the report says about the teacher besides its accuracy: format, access, contract, gate.

An ONNX file or an HTTP endpoint is a black box of any architecture, so its report names no
architecture (`architecture: null`); a weights file loaded into our zoo is white-box.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdaudit.distill.config import REMOTE_ARCH, AuditConfig
from kdaudit.distill.data import Splits
from kdaudit.distill.gate import GateResult


def teacher_format(teacher: nn.Module) -> str:
    if getattr(teacher, "is_remote", False):
        return "remote"
    from kdaudit.models.checkpoints.onnx_teacher import OnnxTeacher

    return "onnx" if isinstance(teacher, OnnxTeacher) else "weights"


def teacher_facts(config: AuditConfig, raw_teacher: nn.Module, splits: Splits, gate: GateResult) -> dict[str, Any]:
    """Fields of the report's TeacherInfo (raw_teacher: the teacher before its input adapter)."""
    fmt = teacher_format(raw_teacher)
    black_box = fmt != "weights"
    arch = config.teacher_arch
    return {
        "architecture": None if fmt == "onnx" or arch == REMOTE_ARCH else arch,
        "format": fmt,
        "access": "black_box" if black_box else "white_box",
        "preprocessing": config.teacher_input.record(splits.spec.in_channels, splits.mean, splits.std),
        "expected_accuracy": config.expected_accuracy,
        "sanity": gate.as_dict(),
    }
