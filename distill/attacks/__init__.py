"""The attack registry: every attack kdaudit runs, one module each, asked by name.

Torch-free (the API, the config schema and distill/planning import it). The order of
`attack_names()` is the order the CLI, the API schema and the reports list attacks in.
Label-only is not an attack but an output policy (distill/access.py) that the attacks with
`needs_scores=False` (normal_kd, skeptical) can run under.
"""

from __future__ import annotations

from kdaudit.core.errors import InputError
from kdaudit.distill.attacks import dfad, dfme, normal_kd, skeptical, zskt
from kdaudit.distill.attacks.dfme import DFME_LABEL_ONLY
from kdaudit.distill.attacks.spec import AttackSpec

__all__ = ["DFME_LABEL_ONLY", "AttackSpec", "attack_names", "attack_spec", "find_attack"]

_REGISTRY: dict[str, AttackSpec] = {
    spec.name: spec for module in (normal_kd, skeptical, zskt, dfad, dfme) for spec in module.SPECS
}


def attack_spec(name: str) -> AttackSpec:
    """The attack called `name`; InputError naming the known ones for anything else."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise InputError(f"unknown attack {name!r}: use one of {', '.join(_REGISTRY)}")
    return spec


def find_attack(kind: str) -> AttackSpec | None:
    """The attack behind a run kind, or None for the baselines (scratch, scratch_ls) and the nasty teacher."""
    return _REGISTRY.get(kind)


def attack_names(setting: str | None = None) -> tuple[str, ...]:
    """Every attack's name, or those of one setting ("data-available" / "data-free"; "_" spellings too)."""
    if setting is None:
        return tuple(_REGISTRY)
    wanted = setting.replace("_", "-")
    if wanted not in ("data-available", "data-free"):
        raise InputError(f"unknown attack setting {setting!r}: use data-available or data-free")
    return tuple(name for name, spec in _REGISTRY.items() if spec.setting == wanted)
