"""The upload form's teacher-input-contract fields (`preprocess`, `mean`, `std`, `pixel_scale`,
`expected_accuracy`) read into the engine's `TeacherInput`; bad values are a 422 problem."""

from __future__ import annotations

from typing import Any

from kdaudit.core.errors import KdauditError
from kdaudit.distill.preprocess import TeacherInput, parse_cli
from kdaudit.service.problems import Problem

CONTRACT_FIELDS = ("preprocess", "mean", "std", "pixel_scale", "expected_accuracy")


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _number(value: Any, name: str, lo: float, hi: float) -> float | None:
    text = _text(value)
    if text is None:
        return None
    try:
        n = float(text)
    except ValueError:
        raise Problem(422, f"`{name}` must be a number, got {text[:40]!r}", slug="validation-error") from None
    if not lo <= n <= hi:
        raise Problem(422, f"`{name}` must be between {lo:g} and {hi:g}", slug="validation-error")
    return n


def check_fits(contract: TeacherInput, channels: int) -> None:
    """422 when the contract's mean/std cannot apply to the dataset's channels (e.g. imagenet on MNIST)."""
    try:
        contract.numbers(channels, [0.0] * channels, [1.0] * channels)
    except KdauditError as e:
        raise Problem(422, str(e), slug="validation-error") from None


def contract_fields(form: dict[str, Any]) -> tuple[TeacherInput, float | None]:
    """(contract, expected accuracy) from the form; Problem(422) when they are invalid."""
    try:
        contract = parse_cli(_text(form.get("preprocess")), _text(form.get("mean")), _text(form.get("std")),
                             _number(form.get("pixel_scale"), "pixel_scale", 1e-6, 65535))
    except KdauditError as e:
        raise Problem(422, str(e).replace("--preprocess", "`preprocess`").replace("--mean/--std/--pixel-scale",
                      "`mean`/`std`/`pixel_scale`"), slug="validation-error") from None
    return contract, _number(form.get("expected_accuracy"), "expected_accuracy", 0, 100)
