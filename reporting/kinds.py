"""How the report names, orders and colours each result kind (baselines, attacks, readouts).

Each kind keeps one colour everywhere (plots and tables alike). Names the attack registry
(distill/attacks/) already spells the same way come from it; the others are the page's own
shorter wording.
"""

from __future__ import annotations

from collections.abc import Iterable

from kdaudit.distill.attacks import attack_spec

#: display order of the result kinds; unknown kinds (future attacks) come after these
KIND_ORDER = ("scratch", "scratch_ls", "normal_kd", "skeptical", "skeptical_e", "data_free")
#: Okabe-Ito colours (colour-blind safe); one per kind, in plots and tables alike
KIND_COLOURS = {
    "scratch": "#7a7a7a",
    "scratch_ls": "#b8b8b8",
    "normal_kd": "#0072b2",
    "skeptical": "#d55e00",
    "skeptical_e": "#cc79a7",
    "data_free": "#009e73",
}
_SPARE_COLOURS = ("#e69f00", "#56b4e9", "#8c564b", "#332288", "#999933")
KIND_LABELS = {
    "scratch": "scratch (no teacher)",
    "scratch_ls": "label smoothing (no teacher)",
    "normal_kd": "normal KD",
    "skeptical": attack_spec("skeptical").label,
    "skeptical_e": "skeptical-E (exit ensemble)",
    "data_free": "data-free KD",
}
KIND_DESCRIPTIONS = {
    "scratch": "the same student trained on the thief's labelled images alone, without the teacher: the baseline",
    "scratch_ls": "the same student trained on the same images with label smoothing, without the teacher: the baseline "
    "that tells real knowledge transfer from regularisation",
    "normal_kd": "Hinton knowledge distillation from the teacher's output scores",
    "skeptical": "the skeptical student (Kundu et al. 2021): the teacher's loss enters at an intermediate exit, "
    "self-distillation trains the final head",
    "skeptical_e": "the skeptical student evaluated as the ensemble of its exits",
    "data_free": "distillation without the thief's own images (synthetic queries only)",
}
ATTACK_PHRASES = {
    "normal_kd": "trained with normal KD",
    "skeptical": "trained as a skeptical student",
    "skeptical_e": "trained as a skeptical student and read out through its exit ensemble (skeptical-E)",
    "data_free": "trained with data-free KD",
}


def kind_colour(kind: str, known: Iterable[str] = ()) -> str:
    """The colour of a result kind; kinds outside KIND_COLOURS get a spare colour by position."""
    if kind in KIND_COLOURS:
        return KIND_COLOURS[kind]
    others = sorted({k for k in known if k not in KIND_COLOURS} | {kind})
    return _SPARE_COLOURS[others.index(kind) % len(_SPARE_COLOURS)]


def kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind.replace("_", " "))


def order_kinds(kinds: Iterable[str]) -> list[str]:
    """KIND_ORDER first, then any other kind alphabetically; each kind once."""
    kinds = list(dict.fromkeys(kinds))
    known = [k for k in KIND_ORDER if k in kinds]
    return known + sorted(k for k in kinds if k not in KIND_ORDER)


def attack_phrase(kind: str) -> str:
    """How a student of this kind came about, for the verdict sentence."""
    return ATTACK_PHRASES.get(kind, f"trained with {kind_label(kind)}")
