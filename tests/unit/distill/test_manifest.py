"""Provenance manifest: in every report, round-trips through JSON, equal manifests give equal CPU numbers."""

import json

import torch

from kdaudit.distill.config import AuditConfig
from kdaudit.distill.manifest import git_commit
from kdaudit.distill.report import Manifest, Report
from kdaudit.distill.runner import run_audit
from kdaudit.models import build_model


def test_equal_manifests_give_equal_numbers_on_cpu_and_round_trip():
    torch.manual_seed(0)
    teacher = build_model("cnn-8-8-8-16", 10, 1).eval()
    cfg = AuditConfig(teacher_arch="cnn-8-8-8-16", attacks=["normal_kd"], seeds=1, schedule={"epochs": 2}, device="cpu",
                      force=True)  # a random teacher: past the sanity gate
    a = run_audit(cfg, teacher, "sha-of-teacher")
    b = run_audit(AuditConfig.model_validate(cfg.model_dump()), teacher, "sha-of-teacher")
    assert a.manifest is not None and b.manifest is not None
    assert a.manifest.identity() == b.manifest.identity()
    assert [r.test_accuracy for r in a.runs] == [r.test_accuracy for r in b.runs]
    assert [r.fidelity for r in a.runs] == [r.fidelity for r in b.runs]
    assert [x.accuracy for x in a.attacks] == [x.accuracy for x in b.attacks]

    m = a.manifest
    assert m.teacher_sha256 == "sha-of-teacher" and m.split_sha256 == a.config["split_sha256"]
    assert m.config == cfg.model_dump(mode="json") and m.seeds == [0]
    assert m.device.startswith("cpu") and m.torch == torch.__version__
    assert set(m.timing["run_seconds"]) == {"scratch/cnn-4-8-8-16/seed0", "scratch_ls/cnn-4-8-8-16/seed0", "normal_kd/cnn-4-8-8-16/seed0"}
    assert "test" in m.selection["reported_split"] and "validation" in m.selection["checkpoint_split"]
    assert m.git_commit is None or len(m.git_commit) in (40, 64)

    again = Report.model_validate_json(a.to_json())
    assert again.manifest == m
    assert Manifest.model_validate(json.loads(m.model_dump_json())) == m


def test_git_commit_never_fails(monkeypatch):
    import subprocess

    def boom(*_a, **_k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", boom)
    assert git_commit() is None


