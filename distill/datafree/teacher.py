"""Which teachers a data-free attack can run against, decided before any training starts.

ZSKT needs the teacher's stage activations, DFAD with `dfad_teacher_gradient` needs to
backpropagate through it (a PyTorch teacher), DFME needs scores (distill/datafree/dfme.py).
An ONNX file or a remote endpoint answers with output vectors only.
"""

from __future__ import annotations

from torch import nn

from kdaudit.core.errors import InputError
from kdaudit.distill.config import DataFreeSettings
from kdaudit.distill.datafree.dfme import check_dfme_teacher
from kdaudit.distill.datafree.kind import family
from kdaudit.models.base import StagedNet


def teacher_is_torch(teacher: nn.Module) -> bool:
    """A differentiable PyTorch teacher (not ONNX, not remote): gradients can flow through it."""
    if getattr(teacher, "is_remote", False) or getattr(teacher, "has_features", None) is False:
        return False
    return any(True for _ in teacher.parameters())


def teacher_has_features(teacher: nn.Module) -> bool:
    """Whether the teacher exposes stage activations (`forward_with_features`)."""
    if getattr(teacher, "is_remote", False):
        return False
    flag = getattr(teacher, "has_features", None)
    if flag is None:
        flag = isinstance(teacher, StagedNet)
    return bool(flag) and callable(getattr(teacher, "forward_with_features", None))


def check_teacher(attack: str, teacher: nn.Module, settings: DataFreeSettings | None = None) -> None:
    """Raise `InputError` if `attack` cannot run against this teacher (ZSKT needs activations, DFME scores)."""
    fam = family(attack)
    if fam == "dfme":
        check_dfme_teacher(attack, teacher)
    if fam == "dfad" and settings is not None and settings.dfad_teacher_gradient and not teacher_is_torch(teacher):
        raise InputError(
            f"{attack} with dfad_teacher_gradient backpropagates through the teacher, and this teacher "
            f"({type(teacher).__name__}) only returns output vectors; leave dfad_teacher_gradient off for a black-box attack"
        )
    if fam == "zskt" and not teacher_has_features(teacher):
        kind = type(teacher).__name__
        raise InputError(
            f"{attack} is a grey-box attack: it needs the teacher's intermediate activations for attention "
            f"transfer, and this teacher ({kind}, e.g. ONNX or a remote endpoint) only returns output vectors; "
            "use datafree_dfme / datafree_dfad (and their _skeptical forms; black-box) or give the teacher as weights with an architecture"
        )
