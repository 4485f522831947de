"""Train one data-free student and pick its checkpoint without real data.

The run's parts, one module each: the plan (how many iterations, what they cost:
plan.py), the game (generator and student steps: game.py), the meter every query goes
through (distill/oracle.py), checkpoint selection on held-out generated images
(selection.py) and the watchdog (watchdog.py). This module wires them together in a fixed
seed order, so a run is reproducible from (seed, attack, student architecture).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from kdaudit.distill.config import DataFreeSettings, KDSettings, SkepticalSettings
from kdaudit.distill.data import Splits
from kdaudit.distill.datafree.dfme import dfme_teacher
from kdaudit.distill.datafree.game import DataFreeGame
from kdaudit.distill.datafree.kind import access_of, family, is_skeptical
from kdaudit.distill.datafree.plan import plan_datafree
from kdaudit.distill.datafree.selection import SELECTION_RULE, SelectionPool
from kdaudit.distill.datafree.teacher import check_teacher
from kdaudit.distill.datafree.watchdog import WATCHDOG_RULE, top2_share, watchdog_reason
from kdaudit.distill.oracle import TeacherOracle
from kdaudit.distill.train import EpochReport, Member, MemberResult, member_seed
from kdaudit.models import build_model
from kdaudit.models.generator import Generator
from kdaudit.models.multi_exit import MultiExitNet


def input_range(splits: Splits) -> tuple[list[float], list[float]]:
    """Per-channel (low, high) of the teacher's standardised input: pixels 0 and 1 after standardisation.

    This is the teacher's declared preprocessing (a public contract), read off the split's
    extreme values rather than the images themselves; the attack uses nothing else of the data.
    """
    x = splits.x_train.transpose(0, 1).flatten(1)
    return x.min(1).values.tolist(), x.max(1).values.tolist()


def train_datafree(
    attack: str,
    arch: str,
    seed: int,
    splits: Splits,
    teacher: nn.Module,
    settings: DataFreeSettings | None = None,
    *,
    kd: KDSettings | None = None,
    skeptical: SkepticalSettings | None = None,
    device: torch.device | None = None,
    key: str | None = None,
    on_checkpoint: Callable[[EpochReport], None] | None = None,
    seed_offset: int = 0,
) -> MemberResult:
    """Train one data-free student; return it at the checkpoint chosen without real data.

    `splits` supplies only the task's shape (classes, channels, image size) and the input
    range; no image from it is used. The returned `extra` holds the plan, the selection rule,
    the watchdog's per-checkpoint class counts, the generator and the budget curve;
    `loss_curve` the student's named loss terms per checkpoint block (as the cohort trainer's
    per epoch). `diverged` is the watchdog's reason (None: trained normally). `seed_offset` is
    the retry's "new seed": it shifts the inits and latents, never the record's seed.
    """
    settings = settings or DataFreeSettings()
    kd = kd or KDSettings()
    sk = skeptical or SkepticalSettings()
    dev = device or torch.device("cpu")
    check_teacher(attack, teacher, settings)
    plan = plan_datafree(attack, settings, splits.spec.name)
    spec = splits.spec
    member = Member(key or f"{attack}/{arch}/seed{seed}", attack, arch, seed, seed_offset=seed_offset)  # type: ignore[arg-type]
    teacher.eval()
    if family(attack) == "dfme":  # probabilities back to logits (DFME's mean correction); label-only refused above
        teacher = dfme_teacher(attack, teacher)
    meter = TeacherOracle(teacher, budget=plan.budget, billing="every", grey_box=access_of(attack, settings) == "grey_box")

    base = member_seed(seed + seed_offset, attack, arch)
    torch.manual_seed(base)
    net = build_model(arch, spec.num_classes, spec.in_channels)
    student: nn.Module = (MultiExitNet(net) if is_skeptical(attack) else net).to(dev)
    torch.manual_seed(base + 1)
    low, high = input_range(splits)
    gen = Generator(plan.latent_dim, spec.image_size, spec.in_channels, low, high, width=plan.generator_width).to(dev)
    game = DataFreeGame(plan, settings, kd, sk, student, gen, meter, dev, base)
    z_sel = torch.randn(plan.selection_samples, plan.latent_dim, generator=torch.Generator().manual_seed(base + 3)).to(dev)

    total = plan.iterations
    eval_at = set(plan.checkpoint_iterations)
    pool = SelectionPool(spec.num_classes)
    loss_curve: list[dict[str, float | None]] = []  # per checkpoint block: mean of each named student loss term
    nonfinite_at: int | None = None
    started = time.perf_counter()
    student.train()
    gen.train()
    for it in range(1, total + 1):
        game.iteration()
        if it in eval_at:
            with torch.no_grad():
                xs = gen(z_sel)
            score = pool.add(student, xs, meter.logits(xs).argmax(1), meter.queries)
            loss_curve.append(game.loss_terms_block())
            if on_checkpoint is not None:
                on_checkpoint(EpochReport(member, len(pool.running), plan.checkpoints, score))
            if bool(game.nonfinite):  # read once per checkpoint: no host sync per step
                nonfinite_at = len(pool.running)
                break
    seconds = time.perf_counter() - started

    scores, best, choice = pool.select(student)
    reason = watchdog_reason(nonfinite_at, pool.class_counts, best, scores, spec.num_classes)
    # val_curve = the selection scores (same pool for every checkpoint), so best_epoch is its argmax
    return MemberResult(
        member, student, best + 1, [round(s, 3) for s in scores], meter.queries, round(seconds, 3),
        extra={
            "plan": plan,
            "running_agreement": pool.running,
            "selection_rule": SELECTION_RULE,
            "access": access_of(attack, settings),
            "teacher_pool_classes": pool.teacher_classes(),
            "generated_class_counts": pool.class_counts,
            "generated_top2_share": [round(top2_share(c)[0], 4) for c in pool.class_counts],
            "watchdog_rule": WATCHDOG_RULE,
            "generator": gen.eval(),
            "budget_curve": {"queries": pool.queries[: len(choice)], "choice": choice,
                             "snapshots": {i: pool.snapshots[i] for i in sorted(set(choice))}},
        },
        diverged=reason,
        loss_curve=loss_curve,
    )
