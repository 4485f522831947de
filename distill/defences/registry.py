"""The one registry of defences `kdaudit defend` can compare, and how their names parse.

A defence is `[nasty[@omega]][+policy]`: an optional training-time part (the nasty teacher of
Ma et al., ICLR 2021, trained at strength omega with `protect`'s recipe) and an optional
serving-time part (an output policy of distill/access.py, applied by the endpoint to every
answer). `none` is the owner's unmodified teacher serving full logits. Everything that needs
to know what a defence is - the engine, the utility measurement, the matrix, the CLI's help -
asks this module, so a new serving defence is one entry in `SERVING_FAMILIES` plus its
`OutputPolicy` kind. Torch-free (policies parse through distill/policy_spec.py), so the API
validates a defence list without loading the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kdaudit.core.errors import InputError
from kdaudit.distill.policy_spec import PolicySpec

Stage = Literal["none", "training", "serving", "training+serving"]
#: what an honest API user receives, which decides how their utility is measured (distill/defences/utility.py)
Returns = Literal["logits", "probabilities", "label"]


@dataclass(frozen=True)
class ServingFamily:
    """One kind of output policy, as a defence: what the user gets and whether the top class survives."""

    returns: Returns
    #: the served answer's argmax is the teacher's (ties aside), so a label-only thief sees the teacher's labels
    keeps_argmax: bool
    summary: str
    reference: str
    #: the OutputPolicy fields that parameterise it (recorded in the matrix)
    fields: tuple[str, ...] = ()


SERVING_FAMILIES: dict[str, ServingFamily] = {
    "logits": ServingFamily("logits", True, "full logits (no serving defence)", "Hinton et al. 2015"),
    "probs": ServingFamily("probabilities", True, "softmax probabilities at the API's temperature T (T > 1 flattens them)",
                           "temperature flattening", ("temperature",)),
    "topk": ServingFamily("probabilities", True, "only the K largest probabilities (topK-renorm: renormalised)",
                          "Tramer et al. 2016, top-k outputs", ("k", "renormalise", "temperature")),
    "rounded": ServingFamily("probabilities", True, "probabilities rounded to N decimals",
                             "Tramer et al. 2016, rounding", ("decimals", "temperature")),
    "label": ServingFamily("label", True, "the predicted class only", "label-only APIs"),
    "stingy": ServingFamily("logits", True, "sparse logits: only the K largest, the rest hidden",
                            "Ma et al. 2022, 'Sparse Logits Suffice to Fail Knowledge Distillation'", ("k",)),
    "rsig": ServingFamily("probabilities", False, "reverse-sigmoid perturbed probabilities (beta, gamma)",
                          "Lee et al. 2019 (arXiv 1806.00054), IBM ART ReverseSigmoid", ("beta", "gamma", "temperature")),
    "noise": ServingFamily("probabilities", False, "probabilities plus seeded Gaussian noise (sigma), renormalised",
                           "IBM ART GaussianNoise", ("sigma", "seed", "temperature")),
}
NASTY_REFERENCE = "Ma et al., ICLR 2021, 'Undistillable: Making a Nasty Teacher That CANNOT Teach Students'"
#: the default panel: no defence, each serving family once, the nasty teacher alone and behind top-1
DEFAULT_DEFENCES: tuple[str, ...] = ("none", "top1", "stingy3", "round1", "probs@4", "rsig", "noise@0.1",
                                     "nasty", "nasty+top1")


class Defence(BaseModel):
    """One deployable defence, fully parameterised (the matrix records every field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nasty_omega: float | None = Field(default=None, gt=0, le=1, description="Nasty-teacher strength; None = the owner's teacher.")
    nasty_tau: float | None = Field(default=None, gt=0, le=100, description="Temperature of the nasty KL term.")
    serving: str = Field(default="logits", description="Output policy spec the endpoint applies (distill/access.py).")

    @property
    def policy(self) -> PolicySpec:
        """The serving policy, torch-free (distill/access.py `OutputPolicy.of` makes it appliable)."""
        return PolicySpec.parse(self.serving)

    @property
    def family(self) -> ServingFamily:
        return SERVING_FAMILIES[self.policy.kind]

    @property
    def teacher_key(self) -> str:
        """Which teacher serves it: 'owner' or 'nasty@omega' (defences with the same key share one audit)."""
        return "owner" if self.nasty_omega is None else f"nasty@{self.nasty_omega:g}"

    @property
    def name(self) -> str:
        parts = [] if self.nasty_omega is None else [self.teacher_key]
        if self.serving != "logits" or not parts:
            parts.append(self.serving if self.serving != "logits" or parts else "none")
        return "+".join(parts)

    @property
    def stage(self) -> Stage:
        serving = self.serving != "logits"
        if self.nasty_omega is None:
            return "serving" if serving else "none"
        return "training+serving" if serving else "training"

    def parameters(self) -> dict[str, object]:
        """Every knob, for the matrix: the policy's fields and the nasty recipe's."""
        policy = self.policy
        out: dict[str, object] = {"output_policy": self.serving, **{f: getattr(policy, f) for f in self.family.fields}}
        if self.nasty_omega is not None:
            out |= {"nasty_omega": self.nasty_omega, "nasty_tau": self.nasty_tau}
        return out

    def describe(self) -> str:
        served = self.policy.describe()
        if self.nasty_omega is None:
            return "the owner's teacher, serving " + served
        return f"a nasty teacher (omega {self.nasty_omega:g}, tau {self.nasty_tau:g}) serving {served}"


def parse_defence(spec: str, *, default_omega: float, default_tau: float) -> Defence:
    """`none`, a policy spec, `nasty`, `nasty@0.04`, or `nasty@0.04+top1` (InputError otherwise).

    A bare `nasty` takes the dataset's `protect` recipe strength (`default_omega`): the paper's
    0.04 is not nasty on every dataset (distill/protect.py PROTECT_DEFAULTS).
    """
    parts = [p.strip().lower() for p in spec.split("+") if p.strip()]
    if not parts:
        raise InputError(f"empty defence {spec!r}")
    omega: float | None = None
    serving: str | None = None
    for part in parts:
        if part == "none":
            if len(parts) > 1:
                raise InputError(f"defence {spec!r}: 'none' cannot be combined")
            continue
        if part == "nasty" or part.startswith("nasty@"):
            if omega is not None:
                raise InputError(f"defence {spec!r} names the nasty teacher twice")
            omega = _omega(part, default_omega, spec)
            continue
        if serving is not None:
            raise InputError(f"defence {spec!r} names two serving policies ({serving}, {part}); combine at most one with nasty")
        serving = PolicySpec.parse(part).spec
    try:
        return Defence(nasty_omega=omega, nasty_tau=default_tau if omega is not None else None, serving=serving or "logits")
    except ValueError as e:
        raise InputError(f"defence {spec!r}: {e}") from None


def _omega(part: str, default: float, spec: str) -> float:
    if part == "nasty":
        return default
    try:
        return float(part.removeprefix("nasty@"))
    except ValueError:
        raise InputError(f"defence {spec!r}: nasty@OMEGA needs a number, e.g. nasty@0.04") from None


def parse_defences(specs: list[str], *, default_omega: float, default_tau: float) -> list[Defence]:
    """Parse a list of defences, duplicates (same canonical name) dropped, `none` always first."""
    parsed = [parse_defence(s, default_omega=default_omega, default_tau=default_tau) for s in specs]
    unique = list({d.name: d for d in parsed}.values())
    none = Defence()
    return [none] + [d for d in unique if d != none]


def help_text() -> str:
    """The CLI's description of every defence family (built from the registry, never by hand)."""
    lines = [f"nasty[@OMEGA]: a nasty teacher trained from yours ({NASTY_REFERENCE})"]
    specs = {"logits": "none", "probs": "probs@T", "topk": "topK", "rounded": "roundN", "label": "label",
             "stingy": "stingyK", "rsig": "rsig[@B/G]", "noise": "noise@S[/seedN]"}
    lines += [f"{specs[k]}: {f.summary}" for k, f in SERVING_FAMILIES.items()]
    return "; ".join(lines) + "; combine with +, e.g. nasty@0.04+top1"
