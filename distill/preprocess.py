"""The teacher's input contract: what a model owner's teacher expects to be fed.

kdaudit keeps every image as the thief sees it: pixels in [0, 1], standardised per channel with
the dataset's own training statistics (distill/data.py). Students train on that (the thief's
choice). A teacher trained elsewhere expects *its* pipeline's input: pixels in [0, 1] or
[0, 255], then its own per-channel mean/std, or none at all. Feeding it ours cripples it
silently (an ONNX digits teacher at 99.2 % scored 87.8 %), so the owner declares the contract
and the teacher oracle maps every image into it:

    teacher_input = (pixels01 * pixel_scale - mean) / std

Since the thief's tensors are `(pixels01 - m_d) / s_d`, this is one per-channel affine map
`x * a + b`, applied by `TeacherInputAdapter` (distill/teacher_input.py) in front of the teacher (file, ONNX or remote),
so the test split, every KD batch and every data-free query go through it alike.

Presets (the `--preprocess` names):

| preset           | pixel_scale | mean / std                                                  |
|------------------|-------------|-------------------------------------------------------------|
| `dataset`        | 1           | the dataset's train statistics (kdaudit's own teachers; default) |
| `none`           | 1           | 0 / 1: pixels in [0, 1], no standardisation                 |
| `pixels255`      | 255         | 0 / 1: pixels in [0, 255]                                   |
| `half`           | 1           | 0.5 / 0.5: pixels in [-1, 1] (GAN-style, many torchvision recipes) |
| `imagenet`       | 1           | (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)               |
| `cifar`          | 1           | (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616) (canonical CIFAR-10) |
| `cifar-kuangliu` | 1           | (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010) (kuangliu, Nasty-Teacher, Skeptical2021) |
| `cifar100`       | 1           | (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762)         |
| `mnist`          | 1           | 0.1307 / 0.3081                                             |

An explicit contract (`--pixel-scale`, `--mean`, `--std`) is the preset `custom`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from kdaudit.core.errors import InputError

#: preset -> (pixel_scale, mean, std); `dataset` has no fixed numbers (the dataset's statistics)
PRESETS: dict[str, tuple[float, tuple[float, ...], tuple[float, ...]] | None] = {
    "dataset": None,
    "none": (1.0, (0.0,), (1.0,)),
    "pixels255": (255.0, (0.0,), (1.0,)),
    "half": (1.0, (0.5,), (0.5,)),
    "imagenet": (1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": (1.0, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar-kuangliu": (1.0, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": (1.0, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": (1.0, (0.1307,), (0.3081,)),
}
PRESET_NAMES: tuple[str, ...] = (*PRESETS, "custom")
DEFAULT_PRESET = "dataset"


class TeacherInput(BaseModel):
    """A declared input contract: a preset, or `custom` with explicit numbers.

    `mean`/`std` are in the units of `pixels01 * pixel_scale` (so a [0, 255] pipeline with
    mean 125.3 declares pixel_scale 255 and mean 125.3); one value applies to every channel.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = Field(default=DEFAULT_PRESET, description=f"One of: {', '.join(PRESET_NAMES)}.")
    pixel_scale: float | None = Field(default=None, gt=0, le=65535, description="Pixels in [0, pixel_scale] before mean/std (custom).")
    mean: list[float] | None = Field(default=None, min_length=1, max_length=64, description="Per-channel mean (custom).")
    std: list[float] | None = Field(default=None, min_length=1, max_length=64, description="Per-channel std, > 0 (custom).")

    @model_validator(mode="after")
    def _consistent(self) -> TeacherInput:
        explicit = self.pixel_scale is not None or self.mean is not None or self.std is not None
        preset = self.preset.strip().lower()
        if preset != self.preset:
            object.__setattr__(self, "preset", preset)
        if explicit and preset == DEFAULT_PRESET:
            object.__setattr__(self, "preset", "custom")
            preset = "custom"
        if preset not in PRESET_NAMES:
            raise ValueError(f"unknown preprocessing preset {self.preset!r}; choose one of: {', '.join(PRESET_NAMES)}")
        if preset != "custom" and explicit:
            raise ValueError(f"preset {preset!r} fixes pixel scale, mean and std; give explicit numbers without a preset")
        if preset == "custom":
            if self.std is not None and any(s <= 0 for s in self.std):
                raise ValueError("every std must be > 0")
            if self.mean is not None and self.std is not None and len(self.mean) not in (1, len(self.std)) \
                    and len(self.std) != 1:
                raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}; give one or one per channel")
        return self

    @classmethod
    def of(cls, value: TeacherInput | dict[str, Any] | str | None) -> TeacherInput:
        if value is None:
            return cls()
        if isinstance(value, TeacherInput):
            return value
        if isinstance(value, str):
            return cls(preset=value)
        return cls(**value)

    @property
    def is_default(self) -> bool:
        return self.preset == DEFAULT_PRESET

    def numbers(self, channels: int, dataset_mean: Sequence[float], dataset_std: Sequence[float]) -> tuple[float, list[float], list[float]]:
        """(pixel_scale, mean, std) with one value per channel; InputError if they do not fit."""
        if self.preset == DEFAULT_PRESET:
            return 1.0, [float(v) for v in dataset_mean], [float(v) for v in dataset_std]
        if self.preset == "custom":
            scale = self.pixel_scale or 1.0
            mean, std = tuple(self.mean or (0.0,)), tuple(self.std or (1.0,))
        else:
            scale, mean, std = PRESETS[self.preset]  # type: ignore[misc]
        out = []
        for name, values in (("mean", mean), ("std", std)):
            if len(values) == 1:
                values = values * channels
            if len(values) != channels:
                raise InputError(f"preprocessing {self.preset!r} gives {len(values)} {name} values; the images have {channels} channel(s)")
            out.append([float(v) for v in values])
        return float(scale), out[0], out[1]

    def fits(self, channels: int) -> bool:
        try:
            self.numbers(channels, [0.0] * channels, [1.0] * channels)
        except InputError:
            return False
        return True

    def describe(self, channels: int, dataset_mean: Sequence[float], dataset_std: Sequence[float]) -> str:
        scale, mean, std = self.numbers(channels, dataset_mean, dataset_std)
        pix = "[0, 1]" if scale == 1 else f"[0, {scale:g}]"
        fmt = ", ".join
        if all(m == 0 for m in mean) and all(s == 1 for s in std):
            return f"{self.preset}: pixels in {pix}, no mean/std"
        return (f"{self.preset}: pixels in {pix}, mean ({fmt(f'{m:.4g}' for m in mean)}), "
                f"std ({fmt(f'{s:.4g}' for s in std)})")

    def record(self, channels: int, dataset_mean: Sequence[float], dataset_std: Sequence[float]) -> dict[str, Any]:
        """The resolved contract, as the report and the teacher resource state it."""
        scale, mean, std = self.numbers(channels, dataset_mean, dataset_std)
        return {"preset": self.preset, "pixel_scale": scale, "mean": [round(m, 6) for m in mean],
                "std": [round(s, 6) for s in std], "description": self.describe(channels, dataset_mean, dataset_std)}


def fitting_presets(channels: int) -> list[TeacherInput]:
    """Every named preset whose numbers fit images with `channels` channels (for the sanity gate)."""
    return [t for t in (TeacherInput(preset=p) for p in PRESETS) if t.fits(channels)]


def parse_cli(preset: str | None, mean: str | None, std: str | None, pixel_scale: float | None) -> TeacherInput:
    """The CLI's --preprocess / --mean / --std / --pixel-scale as one contract (InputError if they clash)."""
    def floats(text: str | None, flag: str) -> list[float] | None:
        if text is None:
            return None
        try:
            return [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"{flag} expects comma-separated numbers, e.g. 0.4914,0.4822,0.4465") from None

    explicit = {"pixel_scale": pixel_scale, "mean": floats(mean, "--mean"), "std": floats(std, "--std")}
    explicit = {k: v for k, v in explicit.items() if v is not None}
    if explicit and preset not in (None, "custom"):
        raise InputError("--preprocess names a preset; --mean/--std/--pixel-scale declare a custom contract: give one or the other")
    try:
        return TeacherInput(preset="custom", **explicit) if explicit else TeacherInput(preset=preset or DEFAULT_PRESET)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        raise InputError(f"{where}: {msg}" if where else msg) from None


def _coerce_contract(value: object) -> object:
    return TeacherInput.of(value) if value is None or isinstance(value, str) else value  # type: ignore[arg-type]


#: a config field holding a teacher's input contract that also takes the short forms, a preset name or
#: null (= the dataset's statistics): AuditConfig and DefendConfig both declare theirs with it
TeacherInputField = Annotated[TeacherInput, BeforeValidator(_coerce_contract)]
