"""Cohort trainer: every network that shares a data stream trains in lockstep.

An audit trains many students against one fixed teacher. Students of the same seed see
the same batches in the same order with the same augmentation, so the teacher (or, for
the nasty loss, the adversary) runs *once per batch for the whole cohort* and its logits
are shared. A cohort of one is the plain per-student loop; because each member's weights
are initialised from its own seed and the data stream from the cohort's seed, a member
gets the same numbers whether it trains alone or with others (tested).

Checkpoint selection uses the validation split only: `best_val` keeps the epoch with the
best validation accuracy; `late_window` keeps the best epoch within the last part of
training (for nasty teachers, whose early epochs are not yet nasty: DESIGN.md trap 1).
"""

from __future__ import annotations

import copy
import math
import os
import time
import zlib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdaudit.distill.access import OutputPolicy
from kdaudit.distill.attacks import attack_names, find_attack
from kdaudit.distill.augment import random_crop_flip
from kdaudit.distill.config import KDSettings, SkepticalSettings, TrainSchedule
from kdaudit.distill.data import Splits
from kdaudit.distill.losses import LossTerms, hinton_kd_terms, nasty_teacher_loss, skeptical_terms, total_loss
from kdaudit.distill.oracle import Billing, QueryBudgetExhausted, TeacherOracle
from kdaudit.models import build_model
from kdaudit.models.multi_exit import MultiExitNet

Kind = Literal["scratch", "scratch_ls", "normal_kd", "skeptical", "nasty"]
#: kinds whose loss needs the shared reference network's logits (teacher or adversary)
NEEDS_REFERENCE = {*attack_names("data-available"), "nasty"}
EVAL_BATCH = 1024
#: a run whose validation accuracy never exceeds chance + this many points is "stuck at chance"
CHANCE_MARGIN_PTS = 2.0


def stuck_at_chance(curve: list[float], num_classes: int) -> bool:
    """Watchdog rule: at least 2 epochs and every epoch's val accuracy <= 100/C + CHANCE_MARGIN_PTS."""
    return len(curve) >= 2 and max(curve) <= 100.0 / num_classes + CHANCE_MARGIN_PTS


@dataclass
class Member:
    """One network of a cohort: what to train and how to pick its checkpoint."""

    key: str
    kind: Kind
    arch: str
    seed: int
    selection: Literal["best_val", "late_window"] = "best_val"
    #: for late_window: the share of epochs at the end that may be selected
    window: float = 0.25
    nasty_omega: float = 0.04
    nasty_tau: float = 4.0
    #: the divergence watchdog's "new seed" retry: shifts the init seed, never the record's seed
    seed_offset: int = 0
    #: what this member's thief sees of the teacher (None: full logits)
    view: OutputPolicy | None = None
    #: per-member KD / skeptical settings (None: the cohort's), so variants share one cohort
    kd: KDSettings | None = None
    skeptical: SkepticalSettings | None = None
    #: scratch_ls members: the label-smoothing weight of their cross-entropy (the regularisation baseline)
    label_smoothing: float = 0.1


@dataclass
class MemberResult:
    member: Member
    model: nn.Module
    best_epoch: int
    val_curve: list[float]
    teacher_queries: int
    seconds: float
    extra: dict = field(default_factory=dict)
    #: why the divergence watchdog flagged this member (None: trained normally)
    diverged: str | None = None
    #: why training stopped before the schedule's end (the query budget ran out), else None
    stopped: str | None = None
    #: per epoch trained, the mean of each named loss term over its batches (None: not finite)
    loss_curve: list[dict[str, float | None]] = field(default_factory=list)


@dataclass
class EpochReport:
    member: Member
    epoch: int
    epochs: int
    val_accuracy: float


def member_seed(seed: int, kind: str, arch: str) -> int:
    """A stable per-member seed, so a member's init does not depend on its cohort mates."""
    return (seed * 1_000_003 + zlib.crc32(f"{kind}/{arch}".encode())) % (2**31 - 1)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from kdaudit.core.errors import InputError

            raise InputError("device 'cuda' requested but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def build_member_model(m: Member, splits: Splits) -> nn.Module:
    torch.manual_seed(member_seed(m.seed + m.seed_offset, m.kind, m.arch))
    net = build_model(m.arch, splits.spec.num_classes, splits.spec.in_channels)
    return MultiExitNet(net) if is_multi_exit(m.kind) else net


def is_multi_exit(kind: str) -> bool:
    """Whether a run kind trains a multi-exit student (the registry says; baselines are single-exit)."""
    spec = find_attack(kind)
    return spec is not None and spec.student_kind == "multi-exit"


def lr_at(step: int, total: int, peak: float, warmup: float = 0.15) -> float:
    """One-cycle: linear warm-up to `peak` over the first 15% of steps, cosine to zero after."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    return 0.5 * peak * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def final_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, list) else out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, ensemble: bool = False, exit_index: int | None = None) -> torch.Tensor:
    """Logits for a whole split in eval mode, in chunks (final exit unless told otherwise)."""
    was_training = model.training
    model.eval()
    outs = []
    for i in range(0, len(x), EVAL_BATCH):
        xb = x[i : i + EVAL_BATCH]
        if ensemble:
            outs.append(model.ensemble(xb))
        elif exit_index is not None:
            outs.append(model(xb)[exit_index])
        else:
            outs.append(final_logits(model, xb))
    model.train(was_training)
    return torch.cat(outs).float()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


class Cohort:
    """Trains `members` together on `splits` with one reference forward per batch."""

    def __init__(
        self,
        members: list[Member],
        splits: Splits,
        schedule: TrainSchedule,
        *,
        reference: nn.Module | None = None,
        kd: KDSettings | None = None,
        skeptical: SkepticalSettings | None = None,
        device: torch.device | None = None,
        stream_seed: int = 0,
        query_budget: int | None = None,
        billing: Billing = "every",
    ):
        if not members:
            raise ValueError("a cohort needs at least one member")
        if reference is None and any(m.kind in NEEDS_REFERENCE for m in members):
            raise ValueError("KD, skeptical and nasty members need a reference network")
        self.members = members
        self.device = device or torch.device("cpu")
        self.splits = splits.to(self.device)
        self.schedule = schedule
        self.kd = kd or KDSettings()
        self.skeptical = skeptical or SkepticalSettings()
        self.reference = reference
        self.stream_seed = stream_seed
        self.cuda = self.device.type == "cuda"
        self.query_budget = query_budget
        self.billing = billing

    def _loss_terms(self, m: Member, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    ref: torch.Tensor | None) -> LossTerms:
        """The member's loss as named terms, in the order they add up (the attack's `loss_terms`)."""
        kd = m.kd or self.kd
        # label-only: the "soft" target is one-hot, so KD is cross-entropy on the teacher's labels (tau 1)
        tau = 1.0 if m.view is not None and m.view.hard else kd.temperature
        spec = find_attack(m.kind)
        rule = spec.family if spec is not None else m.kind  # attacks by family; baselines and nasty by kind
        if rule == "scratch":
            return {"ce": F.cross_entropy(model(x), y)}
        if rule == "scratch_ls":
            return {"ce": F.cross_entropy(model(x), y, label_smoothing=m.label_smoothing)}
        if rule == "kd":
            return hinton_kd_terms(model(x), ref, y, kd.alpha, tau)
        if rule == "skeptical":
            s = m.skeptical or self.skeptical
            ac_stage = s.ac_stage or model.default_ac_stage
            return skeptical_terms(
                model(x), ref, y,
                ac_index=MultiExitNet.exit_index(ac_stage), sd_index=MultiExitNet.exit_index(3),
                alpha=kd.alpha, tau=tau, beta=s.sd_beta,
                gammas=(s.gamma_teacher, s.gamma_sd, s.gamma_ce),
            )
        if rule == "nasty":
            return {"nasty": nasty_teacher_loss(model(x), ref, y, m.nasty_omega, m.nasty_tau)}
        raise ValueError(f"unknown member kind {m.kind}")

    def _loss(self, m: Member, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        return total_loss(self._loss_terms(m, model, x, y, ref))

    def train(
        self,
        on_epoch: Callable[[EpochReport], None] | None = None,
        checkpoint: Path | None = None,
    ) -> list[MemberResult]:
        """Train all members; with `checkpoint`, save the cohort after every epoch and resume from it.

        The checkpoint holds everything the next epoch depends on (weights, optimiser state,
        the data stream's generator, best-so-far states, curves, counters), so a run resumed
        after a crash produces the same numbers as one that never stopped (tested). It is our
        own file, read back with `weights_only=True`, and removed when training ends.
        """
        sch, dev, spec = self.schedule, self.device, self.splits.spec
        models = [build_member_model(m, self.splits).to(dev) for m in self.members]
        if self.cuda:
            models = [mdl.to(memory_format=torch.channels_last) for mdl in models]
        opts = [
            torch.optim.SGD(mdl.parameters(), lr=sch.lr, momentum=sch.momentum, weight_decay=sch.weight_decay,
                            nesterov=sch.momentum > 0, **({"fused": True} if self.cuda else {}))
            for mdl in models
        ]
        if self.reference is not None:
            self.reference.eval()
        oracle = TeacherOracle(self.reference, budget=self.query_budget, billing=self.billing) if self.reference is not None else None
        n = len(self.splits.x_train)
        bs = min(sch.batch_size, n)
        steps_per_epoch = max(1, n // bs)  # drop the ragged last batch: BN on tiny batches is noise
        total = steps_per_epoch * sch.epochs
        gen = torch.Generator(device="cpu").manual_seed(self.stream_seed)
        best = [(-1.0, -1, None)] * len(models)  # (val acc, epoch, state)
        curves: list[list[float]] = [[] for _ in models]
        queries = [0] * len(models)
        clock = [0.0] * len(models)
        uses_ref = [m.kind in NEEDS_REFERENCE for m in self.members]
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()
        step, first_epoch = 0, 1
        keys = [m.key for m in self.members]
        # divergence watchdog: a non-finite loss is flagged on device (no per-step sync) and
        # checked once per epoch; a flagged member stops training, its cohort mates go on
        # exactly as before (they never depend on it), and the caller may retrain it alone.
        nonfinite = [torch.zeros((), dtype=torch.bool, device=dev) for _ in models]
        diverged: list[str | None] = [None] * len(models)
        # query budget: when the next batch would exceed it, every member that needs the
        # teacher stops (their thief cannot ask any more); the others train on
        stopped: list[str | None] = [None] * len(models)
        stop_epoch: list[int] = [0] * len(models)
        loss_curves: list[list[dict[str, float | None]]] = [[] for _ in models]
        # leakage vs queries (members taught by the teacher): after each epoch, (queries so far, test
        # accuracy of the snapshot the validation rule holds then); the test split is only scored, never chosen on
        budget_pts: list[list[list[float]]] = [[] for _ in models]
        if checkpoint is not None and checkpoint.exists():
            state = torch.load(checkpoint, map_location=dev, weights_only=True)
            if state["keys"] != keys or state["epochs"] != sch.epochs:
                raise ValueError(f"checkpoint {checkpoint} belongs to another cohort")
            for mdl, opt, ms, os_ in zip(models, opts, state["models"], state["opts"], strict=True):
                mdl.load_state_dict(ms)
                opt.load_state_dict(os_)
            gen.set_state(state["gen"])
            best = [(b[0], b[1], b[2]) for b in state["best"]]
            curves, queries, clock = state["curves"], state["queries"], state["clock"]
            step, first_epoch = state["step"], state["epoch"] + 1
            diverged = list(state.get("diverged", diverged))
            stopped = list(state.get("stopped", stopped))
            stop_epoch = list(state.get("stop_epoch", stop_epoch))
            loss_curves = list(state.get("loss_curves", loss_curves))
            budget_pts = list(state.get("budget_pts", budget_pts))
            if oracle is not None and "oracle" in state:
                oracle.load_state_dict(state["oracle"])
        for epoch in range(first_epoch, sch.epochs + 1):
            for mdl in models:
                mdl.train()
            perm = torch.randperm(n, generator=gen).to(dev)
            term_sums: list[TermSums] = [TermSums() for _ in models]
            for b in range(steps_per_epoch):
                idx = perm[b * bs : (b + 1) * bs]
                x, y = self.splits.x_train[idx], self.splits.y_train[idx]
                if sch.augment:
                    x = random_crop_flip(x, spec.crop_pad, spec.hflip, gen)
                if self.cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                ref, views, billed = None, {}, 0
                asking = [u and diverged[i] is None and stopped[i] is None for i, u in enumerate(uses_ref)]
                if oracle is not None and any(asking):
                    spent = oracle.queries
                    try:
                        with torch.no_grad(), autocast:
                            ref = oracle(x)
                    except QueryBudgetExhausted:
                        for i, a in enumerate(asking):
                            if a:
                                stop_epoch[i] = epoch
                                stopped[i] = (f"query budget of {self.query_budget:,} images spent in epoch {epoch} "
                                              f"of {sch.epochs} (after {b} of {steps_per_epoch} batches)")
                    billed = oracle.queries - spent
                lr = lr_at(step, total, sch.lr)
                for i, (m, mdl, opt) in enumerate(zip(self.members, models, opts, strict=True)):
                    if diverged[i] is not None or stopped[i] is not None:
                        continue
                    target = None
                    if uses_ref[i]:
                        policy = m.view or _FULL_LOGITS
                        if policy.spec not in views:
                            views[policy.spec] = policy.apply(ref)
                        target = views[policy.spec]
                    t0 = time.perf_counter()
                    for g in opt.param_groups:
                        g["lr"] = lr
                    with autocast:
                        terms = self._loss_terms(m, mdl, x, y, target)
                        loss = total_loss(terms)
                    term_sums[i].add(terms)
                    nonfinite[i] |= ~torch.isfinite(loss.detach())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    clock[i] += time.perf_counter() - t0
                    if uses_ref[i]:
                        queries[i] += billed
                step += 1
            for i, sums in enumerate(term_sums):
                if sums.steps:
                    loss_curves[i].append(sums.means())
            for i, flag in enumerate(nonfinite):
                if diverged[i] is None and bool(flag):
                    diverged[i] = f"non-finite (NaN/inf) loss in epoch {epoch}"
            accs = []
            for i, (m, mdl) in enumerate(zip(self.members, models, strict=True)):
                if stopped[i] is not None and epoch > stop_epoch[i]:
                    accs.append(curves[i][-1] if curves[i] else 0.0)
                    continue  # stopped in an earlier epoch: nothing changed since
                acc = accuracy(predict(mdl, self.splits.x_val), self.splits.y_val)
                if not math.isfinite(acc):
                    acc = 0.0
                accs.append(acc)
                curves[i].append(round(acc, 3))
                eligible = m.selection == "best_val" or epoch > sch.epochs - max(1, math.ceil(m.window * sch.epochs))
                improved = eligible and acc >= best[i][0]
                if improved:
                    best[i] = (acc, epoch, copy.deepcopy(mdl.state_dict()))
                if uses_ref[i] and m.selection == "best_val" and best[i][2] is not None:
                    held = (accuracy(predict(mdl, self.splits.x_test), self.splits.y_test) if improved or not budget_pts[i]
                            else budget_pts[i][-1][2])  # fmt: skip
                    budget_pts[i].append([best[i][1], queries[i], round(held, 3)])
            if checkpoint is not None:
                _save_atomically(checkpoint, {
                    "keys": keys, "epochs": sch.epochs, "epoch": epoch, "step": step, "gen": gen.get_state(),
                    "models": [mdl.state_dict() for mdl in models], "opts": [opt.state_dict() for opt in opts],
                    "best": [list(b) for b in best], "curves": curves, "queries": queries, "clock": clock,
                    "diverged": diverged, "stopped": stopped, "stop_epoch": stop_epoch, "loss_curves": loss_curves,
                    "budget_pts": budget_pts,
                    **({"oracle": oracle.state_dict()} if oracle is not None else {}),
                })
            if on_epoch is not None:
                for m, acc in zip(self.members, accs, strict=True):
                    on_epoch(EpochReport(m, epoch, sch.epochs, acc))
        results = []
        for i, (m, mdl) in enumerate(zip(self.members, models, strict=True)):
            if best[i][2] is not None:
                mdl.load_state_dict(best[i][2])
            mdl.eval()
            reason = diverged[i]
            if reason is None and stuck_at_chance(curves[i], spec.num_classes):
                reason = f"validation accuracy stuck at chance (max {max(curves[i]):.1f}% <= {100.0 / spec.num_classes + CHANCE_MARGIN_PTS:.1f}%) for the whole run"
            extra = {"budget_points": [tuple(p) for p in budget_pts[i]]} if budget_pts[i] else {}
            results.append(MemberResult(m, mdl, max(best[i][1], 1), curves[i], queries[i], round(clock[i], 3), extra,
                                        diverged=reason, stopped=stopped[i], loss_curve=loss_curves[i]))
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        return results


_FULL_LOGITS = OutputPolicy()


class TermSums:
    """One member's loss terms summed over an epoch's batches, on the device (no host sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.steps = 0

    def add(self, terms: LossTerms) -> None:
        for name, value in terms.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else value
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.steps += 1

    def means(self) -> dict[str, float | None]:
        """Each term's epoch mean, rounded for the report; None where it was not finite (NaN/inf)."""
        out: dict[str, float | None] = {}
        for name, total in self.sums.items():
            mean = float(total) / self.steps
            out[name] = round(mean, 6) if math.isfinite(mean) else None
        return out


def _save_atomically(path: Path, state: dict) -> None:
    """Write to a temporary file and rename, so a kill mid-write never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
