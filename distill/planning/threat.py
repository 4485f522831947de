"""Which attacks a threat model lets run: the output-policy rules, written once.

The config's validation, the runner's pre-flight check and the API's check of a remote
teacher all call `check_threat`, so a thief is refused for the same reason, in the same words,
wherever it is asked. Torch-free: it reads a parsed output policy (distill/access.py
`OutputPolicy`) through the few attributes below and the attack registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from kdaudit.core.errors import InputError
from kdaudit.distill.attacks import find_attack

#: why a grey-box attack cannot run against a teacher behind an HTTP endpoint
GREY_BOX_REMOTE = (
    "{attack} is a grey-box attack: it needs the teacher's intermediate activations, and a remote "
    "teacher only returns output vectors; use datafree_dfme / datafree_dfad (and their _skeptical forms; black-box)"
)


class PolicyFacts(Protocol):
    """What the rules read of an output policy (distill/access.py `OutputPolicy`)."""

    kind: str
    spec: str

    @property
    def hard(self) -> bool: ...

    @property
    def full_scores(self) -> bool: ...


def attacks_of(config: Any) -> tuple[str, ...]:
    """The attacks an AuditConfig (or the API's config kwargs, a mapping) asks for."""
    attacks = config.get("attacks") if isinstance(config, Mapping) else config.attacks
    return tuple(attacks or ())


def check_threat(config: Any, policy: PolicyFacts | None = None, *, response: str = "logits",
                 remote: bool = False) -> None:
    """Raise InputError for the first attack of `config` that cannot run under this threat model.

    `policy`: the output policy the thief sees (None: check only what the endpoint implies);
    `response`: what the teacher's endpoint returns (logits, probabilities or labels);
    `remote`: the teacher is reached over HTTP (no activations, no gradients). Names the
    registry does not know are left to the config's own validation.
    """
    for attack in attacks_of(config):
        spec = find_attack(attack)
        if spec is None:
            continue
        if remote and spec.access == "grey-box":
            raise InputError(GREY_BOX_REMOTE.format(attack=attack))
        if remote and spec.needs_scores and response == "labels":
            raise InputError(f"{attack} needs a score for every class, and this remote teacher answers labels only")
        if policy is None:
            continue
        if spec.label_only_reason and (policy.hard or response == "labels"):
            raise InputError(spec.label_only_reason.format(attack=attack))
        if spec.needs_scores and not policy.full_scores:
            raise InputError(f"{attack} needs a score for every class (output policy logits or probs); "
                             f"{policy.spec} hides them")
        if spec.needs_logits and policy.kind != "logits":
            raise InputError(f"{attack} backpropagates through the teacher's logits; it runs with output policy logits only")


def check_attacks(attacks: Iterable[str], policy: PolicyFacts, *, response: str = "logits") -> None:
    """`check_threat` for a plain list of attacks (a variant's)."""
    check_threat({"attacks": list(attacks)}, policy, response=response)
