"""The teacher sanity gate: measure the teacher before any student trains.

A teacher fed the wrong preprocessing still answers, just worse (an ONNX digits teacher at
99.2 % scored 87.8 % on standardised inputs), and every student number after that is about a
crippled teacher. So the audit first measures the teacher on the test split under its
declared input contract and stops when

* the owner declared an expected accuracy and the measured one is more than
  `EXPECTED_TOLERANCE_PTS` below it, or
* the teacher is within 2x of chance (accuracy <= 2 x 100 / classes), or
* another preprocessing preset that fits the images scores more than `PRESET_MARGIN_PTS`
  higher than the declared one and makes at most half its mistakes (an owner who never declared
  a contract gets the dataset's statistics, and a teacher trained on raw pixels then loses 15
  pts without any other sign; the halving keeps near-equivalent presets, e.g. `mnist` against
  a digits teacher's own statistics, from flipping a weak teacher's audit by chance),

with one error that lists the accuracy under every preset that fits the images and names the
one that restores it. `force` runs anyway; the report then says the check failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from kdaudit.core.errors import InputError
from kdaudit.distill.preprocess import TeacherInput, fitting_presets
from kdaudit.distill.teacher_input import apply_contract

#: how far below the owner's expected accuracy the measured one may be, points
EXPECTED_TOLERANCE_PTS = 2.0
#: how much better another fitting preset may score before the declared one is called a mistake, points
PRESET_MARGIN_PTS = 2.0
#: ... and how many of the declared preset's mistakes it may still make (a share)
PRESET_ERROR_RATIO = 0.5
GATE_RULE = (
    f"the teacher is measured on the test split before any student trains; the audit stops if it scores more than "
    f"{EXPECTED_TOLERANCE_PTS:g} pts below the owner's expected accuracy, at most twice chance, or more than "
    f"{PRESET_MARGIN_PTS:g} pts below its accuracy under another preprocessing preset that fits the images and "
    f"makes at most {PRESET_ERROR_RATIO:g}x its mistakes (that comparison is skipped for a custom mean/std and "
    "for a remote teacher, whose every extra pass over the test split is real traffic)"
)


class TeacherSanityError(InputError):
    """The teacher scores far below what it should: most likely the wrong input preprocessing."""

    context = "teacher sanity check"


@dataclass
class GateResult:
    accuracy: float
    passed: bool
    forced: bool = False
    message: str | None = None
    #: accuracy (percent) under each preset that fits (a custom mean/std is only compared when the check failed)
    presets: dict[str, float] = field(default_factory=dict)
    suggestion: str | None = None

    def as_dict(self) -> dict:
        return {"passed": self.passed, "forced": self.forced, "rule": GATE_RULE, "message": self.message,
                "preset_accuracies": self.presets or None, "suggestion": self.suggestion}


def _failure(acc: float, expected: float | None, num_classes: int) -> str | None:
    chance = 100.0 / num_classes
    if expected is not None and acc < expected - EXPECTED_TOLERANCE_PTS:
        return f"it scores {acc:.1f} % on the test split, more than {EXPECTED_TOLERANCE_PTS:g} pts below the expected {expected:.1f} %"
    if acc <= 2 * chance:
        return f"it scores {acc:.1f} % on the test split, within 2x of chance ({chance:.1f} %)"
    return None


def _clearly_better(other: float, own: float) -> bool:
    """Another preset wins by more than PRESET_MARGIN_PTS and with at most PRESET_ERROR_RATIO of the mistakes."""
    return other > own + PRESET_MARGIN_PTS and (100.0 - other) <= PRESET_ERROR_RATIO * (100.0 - own)


def _preset_accuracies(raw_teacher: nn.Module, contract: TeacherInput, accuracy: float, channels: int,
                       dataset_mean: tuple[float, ...], dataset_std: tuple[float, ...],
                       measure: Callable[[nn.Module], float]) -> dict[str, float]:
    """The teacher's test accuracy under its own contract and every other preset that fits the images."""
    presets: dict[str, float] = {contract.preset: round(accuracy, 2)} if contract.preset != "custom" else {}
    with torch.no_grad():
        for p in fitting_presets(channels):
            if p.preset in presets or p == contract:
                continue
            wrapped = apply_contract(raw_teacher, p, channels, dataset_mean, dataset_std)
            presets[p.preset] = round(measure(wrapped), 2)
    return presets


def check_teacher_sanity(
    raw_teacher: nn.Module,
    contract: TeacherInput,
    accuracy: float,
    *,
    num_classes: int,
    channels: int,
    dataset_mean: tuple[float, ...],
    dataset_std: tuple[float, ...],
    measure: Callable[[nn.Module], float],
    expected: float | None = None,
    force: bool = False,
    compare_presets: bool = True,
) -> GateResult:
    """Pass, or raise `TeacherSanityError` naming the preset that restores the accuracy.

    `accuracy` is the teacher's measured under `contract`; `measure(teacher)` measures another
    wrapping of `raw_teacher` (once per fitting preset; for a custom mean/std, or without `compare_presets`
    — a remote teacher, where every extra pass over the test split is real traffic on the owner's
    endpoint —, only when the check fails).
    """
    why = _failure(accuracy, expected, num_classes)
    if why is None and (contract.preset == "custom" or not compare_presets):  # nothing to second-guess
        return GateResult(accuracy=accuracy, passed=True)
    presets = _preset_accuracies(raw_teacher, contract, accuracy, channels, dataset_mean, dataset_std, measure)
    best = max(presets, key=lambda k: presets[k]) if presets else None
    if why is None:
        if best is None or best == contract.preset or not _clearly_better(presets[best], accuracy):
            return GateResult(accuracy=accuracy, passed=True, presets=presets)
        why = (f"it scores {accuracy:.1f} % on the test split, more than {PRESET_MARGIN_PTS:g} pts below its "
               f"{presets[best]:.1f} % under another preset")
    restores = best is not None and best != contract.preset and _failure(presets[best], expected, num_classes) is None
    ours = f"`--preprocess {contract.preset}`" if contract.preset != "custom" else "the declared mean/std"
    message = f"the teacher looks crippled: {why}. "
    if restores:
        message += (f"The teacher scores {accuracy:.1f} % with {ours} and {presets[best]:.1f} % with "
                    f"`--preprocess {best}`: did you mean `{best}`? ")
    else:
        message += "No preprocessing preset restores it (check the teacher file, the dataset and the class order). "
    message += "Accuracy under every preset that fits: " + ", ".join(f"{k} {v:.1f} %" for k, v in presets.items())
    message += ". Use --force to audit it anyway."
    result = GateResult(accuracy=accuracy, passed=False, forced=force, message=message, presets=presets,
                        suggestion=best if restores else None)
    if not force:
        raise TeacherSanityError(message)
    return result
