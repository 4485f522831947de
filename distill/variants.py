"""Settings an audit covers besides its base one: sweeps and named attack panels.

A *variant* is the base configuration with a few threat-model knobs changed (output
policy, the thief's data fraction, KD temperature, the skeptical student's AC depth) and
the attacks that those knobs affect. Sweeps (`config.sweep`) and panels (`config.panel`)
both expand into variants, so the runner, the report and the worst-case summary treat
them alike. Variants that share the thief's data (same fraction) train in one cohort per
seed with one teacher forward per batch; only a change of fraction needs its own
from-scratch baseline.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from kdaudit.distill.access import OutputPolicy
from kdaudit.distill.attacks import attack_spec
from kdaudit.distill.config import AuditConfig
from kdaudit.distill.planning.runs import AXES, BASE, variant_name  # re-exported: their home is planning

__all__ = ["AXES", "BASE", "DEFAULT_AC_STAGE", "Variant", "affected", "apply", "base_values", "describe",
           "expand_variants", "panel_variants", "variant_name"]
#: every architecture's default AC stage (models/base.py `default_ac_stage`)
DEFAULT_AC_STAGE = 2


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    attacks: tuple[str, ...] = ()
    #: the sweep table this variant belongs to ("output", ...; "grid" for combinations; "panel")
    axis: str = BASE
    #: every table it appears in (a panel entry may also be a sweep point)
    axes: tuple[str, ...] = ()

    @property
    def tables(self) -> tuple[str, ...]:
        return self.axes or (self.axis,)

    @property
    def is_base(self) -> bool:
        return self.name == BASE


def affected(axis: str, attack: str, overrides: dict[str, Any] | None = None) -> bool:
    """Whether changing `axis` changes `attack`'s numbers (otherwise the variant skips it)."""
    spec = attack_spec(attack)
    if axis == "output":  # a data-free attack runs only where it still gets every score (and ZSKT only on logits)
        policy = OutputPolicy.parse(str((overrides or {}).get("output", "logits")))
        return not spec.data_free or (policy.full_scores and not spec.needs_logits)
    if axis == "fraction":  # data-free thieves never see the thief's data
        return not spec.data_free
    if axis == "temperature":  # data-free skeptical students use tau in their self-distillation term
        return not spec.data_free or spec.skeptical
    if axis == "ac_stage":
        return spec.skeptical
    raise ValueError(f"unknown axis {axis}")


def describe(overrides: dict[str, Any], config: AuditConfig) -> str:
    """Plain words for a setting, e.g. 'top-5 probabilities, 10% of the data'."""
    merged = base_values(config) | overrides
    parts = [OutputPolicy.parse(str(merged["output"])).describe(), f"{100 * merged['fraction']:g}% of the data"]
    if "temperature" in overrides:
        parts.append(f"KD temperature {merged['temperature']:g}")
    if "ac_stage" in overrides:
        parts.append(f"skeptical AC at stage {merged['ac_stage']}")
    return ", ".join(parts)


def base_values(config: AuditConfig) -> dict[str, Any]:
    return {"output": config.threat.output, "fraction": config.fraction, "temperature": config.kd.temperature,
            "ac_stage": config.skeptical.ac_stage or DEFAULT_AC_STAGE}


def _variant(overrides: dict[str, Any], attacks: list[str], axis: str) -> Variant | None:
    kept = tuple(a for a in attacks if all(affected(k, a, overrides) for k in overrides))
    return Variant(variant_name(overrides), overrides, kept, axis) if kept else None


def panel_variants(config: AuditConfig) -> tuple[list[str], list[Variant]]:
    """The `standard` panel: extra base attacks and variants (issue "Verdicts people can trust").

    Normal KD at tau 1, 4 and 20; the skeptical student at its default AC depth and one
    shallower (or deeper, when the default is already stage 1); DFAD as the data-free,
    black-box attack (left out when the base output policy hides scores, which DFAD needs);
    normal KD on labels only.
    """
    wanted = ["normal_kd", "skeptical"]
    if OutputPolicy.parse(config.threat.output).full_scores:  # DFAD cannot run on top-k / rounded / label outputs
        wanted.append("datafree_dfad")
    extra = [a for a in wanted if a not in config.attacks]
    out: list[Variant] = []
    for tau in (1.0, 4.0, 20.0):
        if tau != config.kd.temperature:
            out.append(Variant(variant_name({"temperature": tau}), {"temperature": tau}, ("normal_kd",), "panel"))
    other_depth = 1 if (config.skeptical.ac_stage or DEFAULT_AC_STAGE) != 1 else 2
    out.append(Variant(variant_name({"ac_stage": other_depth}), {"ac_stage": other_depth}, ("skeptical",), "panel"))
    if config.threat.output != "label":
        out.append(Variant(variant_name({"output": "label"}), {"output": "label"}, ("normal_kd",), "panel"))
    return extra, out


def expand_variants(config: AuditConfig) -> list[Variant]:
    """Base first, then the panel's variants, then the sweep's (duplicates by name dropped)."""
    attacks = list(config.attacks)
    variants: list[Variant] = []
    if config.panel == "standard":
        extra, variants = panel_variants(config)
        attacks += extra
    base = base_values(config)
    sw = config.sweep
    axes = {"output": sw.outputs, "fraction": sw.fractions, "temperature": sw.temperatures, "ac_stage": sw.ac_stages}
    axes = {k: [v for v in vs if v != base[k]] for k, vs in axes.items()}
    if sw.mode == "each":
        for axis, values in axes.items():
            for value in values:
                v = _variant({axis: value}, attacks, axis)
                if v is not None:
                    variants.append(v)
    else:
        listed = [(axis, [base[axis], *values]) for axis, values in axes.items() if values]
        for combo in itertools.product(*(vals for _, vals in listed)):
            overrides = {axis: value for (axis, _), value in zip(listed, combo, strict=True) if value != base[axis]}
            v = _variant(overrides, attacks, "grid") if overrides else None
            if v is not None:
                variants.append(v)
    merged: dict[str, Variant] = {}
    for v in [Variant(BASE, {}, tuple(dict.fromkeys(attacks))), *variants]:
        if v.name in merged:  # e.g. the panel's output=label and a sweep's: one setting, the union of their attacks
            old = merged[v.name]
            merged[v.name] = Variant(v.name, old.overrides, tuple(dict.fromkeys(old.attacks + v.attacks)), old.axis,
                                     tuple(dict.fromkeys(old.tables + v.tables)))
        else:
            merged[v.name] = v
    return list(merged.values())


def apply(config: AuditConfig, overrides: dict[str, Any], attacks: tuple[str, ...] | None = None) -> AuditConfig:
    """The base config with a variant's knobs set (validated like any config).

    `attacks`: the variant's own attacks. Pass them: the base's may include attacks that the
    variant leaves out because they cannot run there (DFAD under a top-k output), and the
    validation would refuse the variant's config for them.
    """
    data = config.model_dump()
    if attacks:
        data["attacks"] = list(attacks)
    if "output" in overrides:
        data["threat"]["output"] = overrides["output"]
    if "fraction" in overrides:
        data["fraction"] = overrides["fraction"]
    if "temperature" in overrides:
        data["kd"]["temperature"] = overrides["temperature"]
    if "ac_stage" in overrides:
        data["skeptical"]["ac_stage"] = overrides["ac_stage"]
    data["sweep"], data["panel"] = {}, None
    return AuditConfig.model_validate(data)
