"""The attack registry and the planning rules: torch-free, and one answer for every caller.

Why: the API process, the config schema and the engine used to carry their own copies of
these rules (attack tuples, the training-set table, the output-policy refusals, the cohort
size); the copies drifted (the API's table missed CIFAR-100, its cohort forgot the
label-smoothing run). These tests pin the single source.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from kdaudit.core.errors import InputError
from kdaudit.distill.attacks import attack_names, attack_spec, find_attack
from kdaudit.distill.planning import (
    TRAIN_IMAGES,
    check_threat,
    cohort_size,
    kind_of_key,
    run_work,
    thief_train_images,
    trains_in_cohort,
)
from tests.helpers.paths import REPO_ROOT

ROOT = REPO_ROOT


def test_planning_and_registry_import_without_torch() -> None:
    code = ("import sys, kdaudit.distill.planning, kdaudit.distill.attacks; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_registry_lists_every_attack_in_order() -> None:
    assert attack_names() == ("normal_kd", "skeptical", "datafree_zskt", "datafree_zskt_skeptical", "datafree_dfad",
                              "datafree_dfad_skeptical", "datafree_dfme", "datafree_dfme_skeptical")
    assert attack_names("data-available") == ("normal_kd", "skeptical")
    assert attack_names("data_free") == attack_names()[2:]
    with pytest.raises(InputError):
        attack_names("nowhere")


def test_registry_answers_what_callers_ask() -> None:
    kd, sk = attack_spec("normal_kd"), attack_spec("skeptical")
    assert (kd.family, kd.skeptical, kd.needs_scores, kd.student_kind, kd.loss_terms) == \
        ("kd", False, False, "single-exit", ("kd", "ce"))
    assert (sk.family, sk.skeptical, sk.needs_scores, sk.student_kind, sk.loss_terms) == \
        ("skeptical", True, False, "multi-exit", ("kd_aux", "self_distill", "ce"))
    zskt = attack_spec("datafree_zskt_skeptical")
    assert (zskt.family, zskt.access, zskt.needs_logits, zskt.skeptical, zskt.data_free) == ("zskt", "grey-box", True, True, True)
    assert attack_spec("datafree_dfme").label_only_reason is not None
    assert all(attack_spec(n).access == "black-box" for n in ("normal_kd", "datafree_dfad", "datafree_dfme"))
    assert find_attack("scratch") is None
    with pytest.raises(InputError, match="unknown attack"):
        attack_spec("scratch")


def test_trainers_resolve_lazily() -> None:
    assert attack_spec("normal_kd").trainer == "kdaudit.distill.train:Cohort"
    assert attack_spec("datafree_dfad").trainer.startswith("kdaudit.distill.datafree")


def test_config_names_derive_from_the_registry() -> None:
    from typing import get_args

    from kdaudit.distill.config import DATA_FREE_ATTACKS, TRAINED_ATTACKS, AttackName

    assert get_args(AttackName) == TRAINED_ATTACKS == attack_names()
    assert DATA_FREE_ATTACKS == attack_names("data-free")


def _policy(kind: str, *, hard: bool = False, full: bool = True) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, spec=kind, hard=hard, full_scores=full)


@pytest.mark.parametrize(("attack", "policy", "response", "message"), [
    ("datafree_dfme", _policy("label", hard=True, full=False), "logits", "differences"),  # DFME's own reason
    ("datafree_dfme_skeptical", _policy("logits"), "labels", "differences"),
    ("datafree_dfad", _policy("topk", full=False), "logits", "needs a score for every class"),
    ("datafree_zskt", _policy("probs"), "logits", "logits only"),
])
def test_threat_rules_refuse(attack, policy, response, message) -> None:
    with pytest.raises(InputError, match=message):
        check_threat({"attacks": [attack]}, policy, response=response)


def test_threat_rules_allow_what_runs() -> None:
    check_threat({"attacks": ["normal_kd", "skeptical"]}, _policy("label", hard=True, full=False))
    check_threat({"attacks": ["datafree_dfad", "datafree_dfme"]}, _policy("probs"))
    check_threat(SimpleNamespace(attacks=["datafree_zskt"]), _policy("logits"))
    check_threat({"attacks": ["not-an-attack"]}, _policy("logits"))  # left to the config's validation


def test_remote_threat_rules() -> None:
    with pytest.raises(InputError, match="grey-box"):
        check_threat({"attacks": ["datafree_zskt"]}, remote=True)
    with pytest.raises(InputError, match="labels only"):
        check_threat({"attacks": ["datafree_dfad"]}, response="labels", remote=True)
    check_threat({"attacks": ["normal_kd", "datafree_dfme"]}, response="probabilities", remote=True)


def test_config_validation_uses_the_threat_rules() -> None:
    from kdaudit.distill.config import AuditConfig

    with pytest.raises(ValueError, match="logits only"):
        AuditConfig(attacks=["datafree_zskt"], threat={"output": "probs"})


def test_cohort_size_counts_the_label_smoothing_run() -> None:
    attacks = ["normal_kd", "skeptical", "datafree_dfad"]
    assert cohort_size(2, attacks, 0.1) == 2 * (2 + 2)
    assert cohort_size(2, attacks, None) == 2 * (1 + 2)
    assert cohort_size(0, [], None) == 1


def test_api_cohort_size_asks_planning() -> None:
    from kdaudit.service.schemas import _cohort_size

    assert _cohort_size({"students": ["a"], "attacks": ["normal_kd"], "label_smoothing": 0.1}) == 3
    assert _cohort_size({"students": ["a"], "attacks": ["normal_kd"], "label_smoothing": None}) == 2
    assert _cohort_size(None) == 1


def test_run_keys_tell_cohort_runs_from_data_free_ones() -> None:
    assert kind_of_key("output=probs:datafree_dfad/cnn/seed0") == "datafree_dfad"
    assert not trains_in_cohort(kind_of_key("output=probs:datafree_dfad/cnn/seed0"))
    assert trains_in_cohort(kind_of_key("scratch_ls/cnn/seed1")) and trains_in_cohort("normal_kd")


def test_one_training_set_table() -> None:
    from kdaudit.distill.budget import TRAIN_IMAGES as budget_table
    from kdaudit.distill.cost import FULL_TRAIN_IMAGES

    assert FULL_TRAIN_IMAGES is TRAIN_IMAGES is budget_table
    assert TRAIN_IMAGES["cifar100"] == 50_000


def test_run_work_estimate() -> None:
    images = thief_train_images("digits", 0.1, 0.5)
    assert images == 540
    kw = dict(dataset="digits", val_fraction=0.1, fraction=0.5, epochs=3)
    assert run_work("scratch", query_budget=None, **kw).teacher_queries == 0
    assert run_work("normal_kd", query_budget=None, **kw).teacher_queries == 3 * 540
    assert run_work("skeptical", query_budget=1000, **kw).teacher_queries == 1000
    assert run_work("datafree_dfad", query_budget=None, datafree_queries=77, **kw).teacher_queries == 77
    with pytest.raises(ValueError):
        run_work("datafree_dfad", query_budget=None, **kw)


def test_output_sweep_beside_a_data_free_attack_plans() -> None:
    """A top-k variant skips DFAD (it needs every score); its config lists the variant's attacks, so the
    validation no longer refuses it for an attack it does not run (this used to raise)."""
    from kdaudit.distill.config import AuditConfig
    from kdaudit.distill.runner import plan_runs
    from kdaudit.distill.variants import apply, expand_variants
    from kdaudit.service.limits import estimate_teacher_queries

    cfg = AuditConfig(attacks=["normal_kd", "datafree_dfad"], sweep={"outputs": ["top3"]}, seeds=1)
    top3 = next(v for v in expand_variants(cfg) if v.name == "output=top3")
    assert top3.attacks == ("normal_kd",)
    assert apply(cfg, top3.overrides, top3.attacks).attacks == ["normal_kd"]
    assert "output=top3:normal_kd/cnn-4-8-8-16/seed0" in [r.key for r in plan_runs(cfg)]
    assert estimate_teacher_queries(cfg.model_dump()) > 0
