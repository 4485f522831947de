"""Nasty teachers for `kdaudit defend`, trained from the owner's own model with `protect`'s recipe.

`protect_teacher` trains its own normal teacher first; an owner asking "should I deploy a
nasty teacher?" already has one, so here that model is the adversary A of the nasty loss
CE - omega * tau^2 * KL(p_T || p_A) (distill/losses.py) and the nasty student of the same
architecture is trained on the owner's training split with the dataset's `ProtectConfig`
schedule, its checkpoint chosen on the validation split from the late window only
(DESIGN.md trap 1: early epochs are not yet nasty). Whether the result is actually nasty is
what the matrix's normal-KD column and protection verdict then show (trap 2).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kdaudit.distill.data import Splits
from kdaudit.distill.protect import ProtectConfig
from kdaudit.distill.train import Cohort, EpochReport, Member, accuracy, predict, resolve_device
from kdaudit.models.checkpoints import load_teacher, save_teacher


@dataclass
class NastyTeacher:
    omega: float
    model: nn.Module
    epoch: int
    recipe: dict
    sha256: str | None = None
    path: Path | None = None


def nasty_recipe(dataset: str, arch: str, omega: float, seed: int, nasty_epochs: int | None,
                 device: str = "auto") -> ProtectConfig:
    """protect's recipe for this dataset, at strength omega (and, if given, a shorter schedule)."""
    given: dict = {"dataset": dataset, "arch": arch, "omega": omega, "seed": seed, "verify": False, "device": device}
    if nasty_epochs is not None:
        given["nasty_schedule"] = {"epochs": nasty_epochs}
    return ProtectConfig(**given)


def train_nasty(owner: nn.Module, splits: Splits, recipe: ProtectConfig,
                on_epoch: Callable[[EpochReport], None] | None = None) -> NastyTeacher:
    """One nasty teacher against `owner` (the adversary; its weights never change)."""
    device = resolve_device(recipe.device)
    member = Member(f"nasty_teacher@{recipe.omega:g}", "nasty", recipe.arch, recipe.seed, selection="late_window",
                    window=recipe.late_window, nasty_omega=recipe.omega, nasty_tau=recipe.tau)
    owner.eval()
    result = Cohort([member], splits, recipe.nasty_schedule, reference=owner, device=device,
                    stream_seed=recipe.seed).train(on_epoch)[0]
    model = result.model.eval()
    facts = {"omega": recipe.omega, "tau": recipe.tau, "arch": recipe.arch, "seed": recipe.seed,
             "schedule": recipe.nasty_schedule.model_dump(), "late_window": recipe.late_window,
             "checkpoint_rule": f"best validation accuracy within the last {recipe.late_window:.0%} of epochs",
             "epoch": result.best_epoch, "accuracy": round(accuracy(predict(model, splits.x_test), splits.y_test), 3)}
    return NastyTeacher(recipe.omega, model, result.best_epoch, facts)


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state_dict (names and bytes, in order): a nasty teacher's identity before it is saved."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _nasty_path(folder: Path, omega: float) -> Path:
    return folder / f"nasty@{omega:g}.safetensors"


def _write(nasty: NastyTeacher, folder: Path, arch: str) -> tuple[Path, str]:
    """The nasty teacher as safetensors in `folder` (its model back on its device); (path, file sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = _nasty_path(folder, nasty.omega)
    device = next(nasty.model.parameters()).device
    sha = save_teacher(nasty.model.cpu(), path, arch=arch)
    nasty.model.to(device)
    return path, sha


def save_nasty(nasty: NastyTeacher, folder: Path, arch: str) -> NastyTeacher:
    """Write the nasty teacher next to the matrix, so the recommended defence can be deployed as measured."""
    nasty.path, nasty.sha256 = _write(nasty, folder, arch)
    return nasty


def keep_for_resume(nasty: NastyTeacher, folder: Path, arch: str) -> NastyTeacher:
    """Save the nasty teacher and its recipe facts where a redelivered comparison finds them
    (`resume_nasty`): its recorded runs were measured against these weights, and retraining
    need not give the same bytes (CUDA kernels are not bit-reproducible). Its identity stays what
    it is unsaved (weights_sha256), so a resumed matrix names it as an uninterrupted one does."""
    path, _sha = _write(nasty, folder, arch)
    path.with_suffix(".json").write_text(json.dumps({"epoch": nasty.epoch, "recipe": nasty.recipe}))
    return nasty


def resume_nasty(folder: Path, omega: float, arch: str, splits: Splits) -> NastyTeacher | None:
    """The nasty teacher an earlier attempt of this comparison trained (`keep_for_resume`), or None."""
    path = _nasty_path(folder, omega)
    facts_path = path.with_suffix(".json")
    if not (path.exists() and facts_path.exists()):
        return None
    facts = json.loads(facts_path.read_text())
    model = load_teacher(path, arch, splits.spec.num_classes, splits.spec.in_channels).eval()
    return NastyTeacher(omega, model, int(facts["epoch"]), facts["recipe"])
