"""From a `POST /v1/defences` request to a stored, sized defence comparison - torch-free.

A defence comparison is stored as an audit of kind 'defend' whose config is the engine's
`DefendConfig` (distill/defences/config.py). Its work is the sum of the audits the engine will
run (`DefendConfig.planned_audits`, the same rule the engine follows), each sized and checked
with the audits' own estimate (service/limits.py, service/quotas.py, distill/planning); each
nasty teacher's training is counted as one more audit of its panel (an upper-ish estimate of
training a teacher-sized model for its epochs on the same data).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdaudit.distill.defences.registry import DEFAULT_DEFENCES, parse_defence
from kdaudit.service.problems import Problem
from kdaudit.store import remote_teachers as rt
from kdaudit.store.models import Teacher

#: formats whose weights the service never holds: no nasty teacher can be trained from them
NO_WEIGHTS = ("onnx", rt.REMOTE_FORMAT)


class DefenceCreate(BaseModel):
    """A defence comparison of one of your teachers (`kdaudit defend`). Unset fields take its defaults."""

    model_config = ConfigDict(extra="forbid")

    teacher_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    defences: list[str] | None = Field(default=None, min_length=1, max_length=24, description="Defence specs, e.g. "
                                       "none, top1, stingy3, round1, probs@4, rsig, noise@0.1, nasty, nasty@0.04+top1.")
    students: list[str] | None = Field(default=None, min_length=1, max_length=4)
    seeds: int | None = Field(default=None, ge=1, le=20)
    base_seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    epochs: int | None = Field(default=None, ge=1, le=1000, description="Student epochs.")
    fraction: float | None = Field(default=None, gt=0, le=1, description="Share of the training set the thief holds.")
    query_budget: int | None = Field(default=None, ge=1, description="Cap on billed teacher queries (images) per run, "
                                     "every attack under every defence.")
    billing: Literal["distinct", "every"] | None = None
    datafree: bool | None = Field(default=None, description="Add DFAD where the defence serves full scores.")
    nasty_epochs: int | None = Field(default=None, ge=1, le=1000, description="Nasty teachers' epochs.")
    max_utility_loss: float | None = Field(default=None, ge=0, le=100, description="Most top-1 points given up.")
    device: Literal["auto", "cpu", "cuda"] | None = Field(default=None, description="Device hint for the worker.")
    expected_accuracy: float | None = Field(default=None, gt=0, le=100, description="The teacher's test accuracy in "
                                            "your pipeline, percent (default: the teacher's); the comparison stops "
                                            "if the owner's audit measures > 2 pts less.")
    force: bool | None = Field(default=None, description="Run even when the teacher sanity check fails.")


def _invalid(what: str, e: ValidationError) -> Problem:
    errors = [{"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")),
               "type": str(err.get("type", ""))} for err in e.errors()]
    summary = "; ".join(f"{'.'.join(x['loc'])}: {x['msg']}" for x in errors[:5])
    return Problem(422, f"invalid {what}: {summary}", slug="validation-error", errors=errors)


def build_defend_config(body: DefenceCreate, teacher: Teacher) -> dict[str, Any]:
    """The JSON form of the DefendConfig this request asks for (422 when the engine would refuse it)."""
    from kdaudit.distill.defences.config import DefendConfig

    if teacher.format == rt.REMOTE_FORMAT:  # the engine would serve the defences on top of the endpoint's own answers
        raise Problem(422, f"teacher {teacher.id} is a remote teacher: defence comparisons need the teacher's own "
                      "scores to apply each serving defence to (upload the ONNX or weights file instead)",
                      slug="validation-error", errors=[{"loc": ["teacher_id"], "msg": "remote teachers are not "
                                                        "supported by defence comparisons", "type": "remote_teacher"}])
    if teacher.format in NO_WEIGHTS or not teacher.architecture:
        _refuse_nasty(body.defences or list(DEFAULT_DEFENCES), teacher)
    fields = body.model_dump(exclude_none=True, exclude={"teacher_id"})
    contract = {"teacher_input": teacher.preprocess or "dataset", "expected_accuracy": teacher.expected_accuracy}
    try:  # the teacher's input contract and expected accuracy, as its audits get them (routers/audit_request.py)
        config = DefendConfig(teacher_arch=teacher.architecture, dataset=teacher.dataset, **{**contract, **fields})
    except ValidationError as e:
        raise _invalid("defence comparison", e) from None
    try:  # every audit it plans must be one the engine runs
        config.planned_audits(config.parse_syntax())
    except ValidationError as e:
        raise _invalid("defence comparison (one of its audits)", e) from None
    return config.model_dump(mode="json")


def _refuse_nasty(specs: list[str], teacher: Teacher) -> None:
    """422 naming the nasty-teacher defences a teacher without trainable weights cannot have."""
    from kdaudit.core.errors import InputError
    from kdaudit.distill.defences.config import SYNTAX_OMEGA, SYNTAX_TAU

    try:
        nasty = [s for s in specs if parse_defence(s, default_omega=SYNTAX_OMEGA, default_tau=SYNTAX_TAU).nasty_omega]
    except InputError:
        return  # a bad spec: DefendConfig's validation says which
    if nasty:
        raise Problem(422, f"defences {', '.join(nasty)} train a nasty teacher from your teacher's weights, but teacher "
                      f"{teacher.id} is a {teacher.format} teacher the service holds no trainable weights for; "
                      "compare serving-time defences only, or upload the weights (safetensors / PyTorch)",
                      slug="validation-error", errors=[{"loc": ["defences"], "msg": "nasty needs weights",
                                                        "type": "nasty_without_weights"}])


def planned_audits(config: dict[str, Any], *, nasty_training: bool = True) -> list[dict[str, Any]]:
    """The AuditConfig dicts a stored defend config runs; with `nasty_training`, each nasty teacher's
    training counted as one more of its audits (sizing), without it the audits alone (progress)."""
    from kdaudit.distill.defences.config import DefendConfig

    cfg = DefendConfig.model_validate(config)
    out: list[dict[str, Any]] = []
    for key, audits in cfg.planned_audits(cfg.parse_syntax()).items():
        extra = [audits[0]] if key != "owner" and nasty_training else []
        out += [a.model_dump(mode="json") for a in audits + extra]
    return out


def is_defend(config: dict[str, Any]) -> bool:
    return "defences" in config


def planned_runs(config: dict[str, Any], *, nasty_training: bool = True) -> int:
    """Training runs of a defend config's audits (see `planned_audits`)."""
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.runner import plan_runs  # the audits' own count (POST /v1/audits uses it too)

    return sum(len(plan_runs(AuditConfig.model_validate(a))) for a in planned_audits(config, nasty_training=nasty_training))


def config_flops(config: dict[str, Any]) -> float:
    """Training FLOPs of a stored config of either kind (the tenant's compute admission)."""
    from kdaudit.distill.budget import audit_compute

    if is_defend(config):
        return float(sum(audit_compute(a).flops for a in planned_audits(config)))
    return float(audit_compute(config).flops)
