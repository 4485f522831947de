"""What a data-free attack is, asked of the attack registry (distill/attacks/): its family, whether
its student is skeptical, and how much of the teacher it reaches (`access_of`).

The registry states each attack's default access; the one run-time switch is DFAD's
`dfad_teacher_gradient`, which makes its generator backpropagate through the teacher and so
turns a black-box attack grey-box. That rule lives here and nowhere else.
"""

from __future__ import annotations

from typing import Literal

from kdaudit.distill.attacks import AttackSpec, find_attack
from kdaudit.distill.config import DataFreeSettings

Access = Literal["white_box", "grey_box", "black_box"]
Family = Literal["zskt", "dfad", "dfme"]


def datafree_spec(attack: str) -> AttackSpec:
    """The registry's entry for a data-free attack; ValueError for any other name."""
    spec = find_attack(attack)
    if spec is None or not spec.data_free:
        raise ValueError(f"{attack!r} is not a data-free attack")
    return spec


def family(attack: str) -> Family:
    return datafree_spec(attack).family  # type: ignore[return-value]  # data-free specs: zskt, dfad or dfme


def is_skeptical(attack: str) -> bool:
    return datafree_spec(attack).skeptical


def access_of(attack: str, settings: DataFreeSettings | None = None) -> Access:
    """The access the run needs, as the report spells it (`grey_box` / `black_box`)."""
    spec = datafree_spec(attack)
    if spec.family == "dfad" and settings is not None and settings.dfad_teacher_gradient:
        return "grey_box"
    return spec.report_access  # type: ignore[return-value]
