"""Data-free attacks: the thief has no images, only query access to the teacher.

A generator (models/generator.py) synthesises the queries and is trained adversarially
against the student: it looks for images where student and teacher disagree, the student
learns to agree with the teacher on them.

- ZSKT (Micaelli & Storkey 2019, grey-box): per pseudo batch `zskt_generator_steps`
  generator steps maximising KL(T || S), then `zskt_student_steps` student steps on the
  same latents minimising KL(T || S) + beta_AT * sum of attention-transfer losses over
  matched stages. Grey-box: it needs the teacher's activations (and backpropagates through
  the teacher for the generator), so a teacher without features is an `InputError`.
  KL as in the official code: temperature 1, averaged over batch *and* classes
  (`F.kl_div(..., reduction='mean')`), which is what beta_AT = 250 is balanced against.
- DFAD (Fang et al. 2019, black-box by default): `dfad_student_steps` student steps
  minimising the L1 distance between student and teacher logits (fresh latents each), then
  `dfad_generator_steps` generator steps maximising it. By default only the teacher's
  output vectors are used and no gradient flows through the teacher (the generator's
  gradient comes through the student alone, the teacher's outputs are constants), so it
  runs against an ONNX or remote teacher. `dfad_teacher_gradient=True` is the official
  code's generator step (backpropagating through the teacher): much stronger on digits
  (see tests/test_datafree.py) but grey-box, and it needs a PyTorch teacher.
- DFME (Truong et al. 2021, black-box): DFAD's game with the generator's gradient through
  the teacher estimated by forward differences, every probe billed (distill/dfme.py).
  Probabilities are turned back into logits; label-only teachers are refused.
- Budget curve: each checkpoint also records the queries spent and the snapshot a thief
  stopping there would select (distill/budget_curve.py), in `extra["budget_curve"]`.
- Skeptical variants (Kundu et al. 2021, data-free section): the student is a
  `MultiExitNet`; the teacher's loss (KL + AT on the stages up to the AC for ZSKT, L1 for
  DFAD) goes to the auxiliary-classifier exit only, and the generator attacks that exit.
  The deeper exits never see the teacher's scores: the final exit trains with CE against
  the teacher's argmax label, the self-distillation head with
  beta * KL(final/tau || head/tau) + (1 - beta) * CE(head, argmax), as in the official
  loss with the argmax standing in for the missing ground truth.

Query budget: every image sent to the teacher is counted by `TeacherAccess`, including
the held-out generated images used to pick the checkpoint. A budget caps the iterations
(and the run stops before any query that would exceed it).

Checkpoint selection never touches real data (DESIGN.md trap: DFAD students on digits
reach 97-99% and then collapse to 10-16% late in the schedule). At each of `checkpoints`
evaluation points the current generator renders a *fixed* set of held-out latents, the
teacher labels them (argmax) and they join a selection pool that is never trained on; the
student is snapshotted. At the end every snapshot is scored on the whole pool by
class-balanced agreement with the teacher (the mean over teacher classes of the share of
that class's images the student's final exit labels the same), and the best one is kept.
A collapsed student (one or two classes) scores low on a pool gathered over the whole run,
whatever the generator produces at the end. The test split is only used by the caller,
for the reported accuracy.

Watchdog (the data-free counterpart of the cohort trainer's, distill/train.py): a run is
flagged `diverged` when (a) a student or generator loss was non-finite (flagged on device,
read once per checkpoint; training stops at that checkpoint), (b) the generator collapsed:
at the selected checkpoint and the ones just before it the teacher put almost all the
held-out generated images into one or two classes (`generator_collapse`), so the student we
would report learnt from, and was chosen on, a degenerate view of the task, or (c) the
selection score stayed at chance for the whole run (`stuck_at_chance`). `retry_datafree`
then retrains per `DATAFREE_RETRY_PLAN`, and every attempt's teacher queries count.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdaudit.core.errors import InputError
from kdaudit.distill.budget_curve import prefix_choices
from kdaudit.distill.config import DATA_FREE_ATTACKS, DataFreeSettings, KDSettings, SkepticalSettings
from kdaudit.distill.data import Splits
from kdaudit.distill.dfme import check_dfme_teacher, dfme_generator_step, dfme_teacher
from kdaudit.distill.losses import self_distillation_loss, soft_kl
from kdaudit.distill.train import (
    CHANCE_MARGIN_PTS,
    EpochReport,
    Member,
    MemberResult,
    member_seed,
    stuck_at_chance,
)
from kdaudit.models import build_model
from kdaudit.models.base import StagedNet
from kdaudit.models.generator import Generator
from kdaudit.models.multi_exit import MultiExitNet

Access = Literal["white_box", "grey_box", "black_box"]
SELECTION_RULE = (
    "class-balanced agreement of the final exit with the teacher's argmax on held-out generated "
    "images (fixed latents rendered at every checkpoint, pooled over the run); no real data"
)

#: per-dataset defaults for fields left `None`: iterations (when no budget is given), batch
#: size and generator width. CIFAR-10 follows the papers (ZSKT ~80k pseudo batches of 128;
#: DFAD 500 epochs x 50 iterations of 256); digits (8x8) is scaled down to run on a CPU.
DATASET_DEFAULTS: dict[str, dict[str, dict[str, int]]] = {
    "digits": {"zskt": {"iterations": 150, "batch_size": 64}, "dfad": {"iterations": 400, "batch_size": 64},
               # DFME: the skeptical gain needs this scale (README: 61.8 vs 71.4 here, 65.2 vs 59.3 at 500 x 128)
               "dfme": {"iterations": 1000, "batch_size": 256}, "width": {"": 16}},
    "mnist": {"zskt": {"iterations": 2000}, "dfad": {"iterations": 2000}, "dfme": {"iterations": 2000}, "width": {"": 32}},
    "fashion-mnist": {"zskt": {"iterations": 3000}, "dfad": {"iterations": 3000}, "dfme": {"iterations": 3000}, "width": {"": 32}},
    # DFME on CIFAR-10: the paper's 20M queries at batch 256, m = 1 (7 x 256 queries an iteration)
    "cifar10": {"zskt": {"iterations": 80_000}, "dfad": {"iterations": 25_000}, "dfme": {"iterations": 11_000}, "width": {"": 64}},
    "npz": {"zskt": {"iterations": 2000}, "dfad": {"iterations": 2000}, "dfme": {"iterations": 2000}, "width": {"": 64}},
}
# CIFAR-100 (fine or coarse labels): the same image size and generator as CIFAR-10, the papers' iteration counts
DATASET_DEFAULTS["cifar100"] = DATASET_DEFAULTS["cifar100-coarse"] = DATASET_DEFAULTS["cifar10"]
PAPER = {
    "zskt": {"batch_size": 128, "latent_dim": 100},
    "dfad": {"batch_size": 256, "latent_dim": 256},
    "dfme": {"batch_size": 256, "latent_dim": 256},
}


def _dataset_default(dataset: str, fam: str, key: str) -> int | None:
    return DATASET_DEFAULTS.get(dataset, DATASET_DEFAULTS["npz"])[fam].get(key)


def reference_iterations(attack: str, dataset: str) -> int:
    """The dataset's default iteration count for `attack` (the papers' for CIFAR-10): what
    the cost of theft extrapolates a data-free run to (distill/cost.py)."""
    n = _dataset_default(dataset, family(attack), "iterations")
    assert n is not None
    return n


GRAD_CLIP = 5.0  # ZSKT's official code clips both networks' gradients at norm 5


def family(attack: str) -> Literal["zskt", "dfad", "dfme"]:
    if attack not in DATA_FREE_ATTACKS:
        raise ValueError(f"{attack!r} is not a data-free attack")
    return "zskt" if attack.startswith("datafree_zskt") else "dfme" if attack.startswith("datafree_dfme") else "dfad"


def is_skeptical(attack: str) -> bool:
    return attack.endswith("_skeptical")


def access_of(attack: str, settings: DataFreeSettings | None = None) -> Access:
    if family(attack) == "zskt" or (family(attack) == "dfad" and settings is not None and settings.dfad_teacher_gradient):
        return "grey_box"
    return "black_box"


def teacher_is_torch(teacher: nn.Module) -> bool:
    """A differentiable PyTorch teacher (not ONNX, not remote): gradients can flow through it."""
    if getattr(teacher, "is_remote", False) or getattr(teacher, "has_features", None) is False:
        return False
    return any(True for _ in teacher.parameters())


def teacher_has_features(teacher: nn.Module) -> bool:
    """Whether the teacher exposes stage activations (`forward_with_features`)."""
    if getattr(teacher, "is_remote", False):
        return False
    flag = getattr(teacher, "has_features", None)
    if flag is None:
        flag = isinstance(teacher, StagedNet)
    return bool(flag) and callable(getattr(teacher, "forward_with_features", None))


def check_teacher(attack: str, teacher: nn.Module, settings: DataFreeSettings | None = None) -> None:
    """Raise `InputError` if `attack` cannot run against this teacher (ZSKT needs activations, DFME scores)."""
    if family(attack) == "dfme":
        check_dfme_teacher(attack, teacher)
    if family(attack) == "dfad" and settings is not None and settings.dfad_teacher_gradient and not teacher_is_torch(teacher):
        raise InputError(
            f"{attack} with dfad_teacher_gradient backpropagates through the teacher, and this teacher "
            f"({type(teacher).__name__}) only returns output vectors; leave dfad_teacher_gradient off for a black-box attack"
        )
    if family(attack) == "zskt" and not teacher_has_features(teacher):
        kind = type(teacher).__name__
        raise InputError(
            f"{attack} is a grey-box attack: it needs the teacher's intermediate activations for attention "
            f"transfer, and this teacher ({kind}, e.g. ONNX or a remote endpoint) only returns output vectors; "
            "use datafree_dfme / datafree_dfad (and their _skeptical forms; black-box) or give the teacher as weights with an architecture"
        )


# ------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class DataFreePlan:
    attack: str
    batch_size: int
    latent_dim: int
    iterations: int
    generator_width: int
    generator_steps: int
    student_steps: int
    checkpoints: int
    selection_samples: int
    budget: int | None
    directions: int = 1  # DFME: probes per image per generator step are directions + 1

    @property
    def queries_per_iteration(self) -> int:
        if family(self.attack) == "zskt":  # teacher runs on every generator step + once for the student steps
            return (self.generator_steps + 1) * self.batch_size
        if family(self.attack) == "dfme":  # forward differences: every probe is a query
            return (self.generator_steps * (self.directions + 1) + self.student_steps) * self.batch_size
        return (self.generator_steps + self.student_steps) * self.batch_size

    @property
    def planned_queries(self) -> int:
        return self.iterations * self.queries_per_iteration + self.checkpoints * self.selection_samples


def plan_datafree(attack: str, settings: DataFreeSettings, dataset: str) -> DataFreePlan:
    """Resolve the paper defaults, the dataset's iteration count and the query budget."""
    fam = family(attack)
    bs = settings.batch_size or _dataset_default(dataset, fam, "batch_size") or PAPER[fam]["batch_size"]
    width = _dataset_default(dataset, "width", "") or 64
    latent = settings.latent_dim or PAPER[fam]["latent_dim"]
    gsteps = settings.zskt_generator_steps if fam == "zskt" else settings.dfad_generator_steps
    ssteps = settings.zskt_student_steps if fam == "zskt" else settings.dfad_student_steps
    sel = settings.selection_samples
    dirs = settings.dfme_directions if fam == "dfme" else 1
    per_iter = DataFreePlan(attack, bs, latent, 1, width, gsteps, ssteps, 1, sel, None, dirs).queries_per_iteration
    iters = settings.iterations
    if iters is None and settings.budget is None:
        iters = _dataset_default(dataset, fam, "iterations")
    ck = settings.checkpoints
    if settings.budget is not None:
        budget = settings.budget
        fit = 0
        for ck in range(min(settings.checkpoints, iters or settings.checkpoints), 0, -1):
            fit = (budget - ck * sel) // per_iter
            if fit >= ck:
                break
        if fit < 1:
            raise InputError(
                f"a teacher-query budget of {budget:,} is too small for {attack}: one iteration sends "
                f"{per_iter:,} images (batch {bs}) and checkpoint selection {sel:,} more"
            )
        iters = min(iters, fit) if iters is not None else fit
    assert iters is not None
    return DataFreePlan(attack, bs, latent, iters, width, gsteps, ssteps, min(ck, iters), sel, settings.budget, dirs)


# ------------------------------------------------------------------------------------ teacher


class TeacherAccess:
    """The only way the attack reaches the teacher: counts every image sent, enforces the budget."""

    def __init__(self, teacher: nn.Module, budget: int | None, grey_box: bool):
        self.teacher = teacher
        self.budget = budget
        self.grey_box = grey_box
        self.queries = 0

    def _charge(self, n: int) -> None:
        if self.budget is not None and self.queries + n > self.budget:  # the plan never lets this happen
            raise RuntimeError(f"teacher-query budget exceeded ({self.queries + n} > {self.budget})")
        self.queries += n

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self._charge(len(x))
        return self.teacher(x).float()

    def logits_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """Grey-box: logits with the autograd graph through the teacher (for the generator's step)."""
        if not self.grey_box:
            raise RuntimeError("gradients requested from a black-box teacher")
        self._charge(len(x))
        return self.teacher(x).float()

    def logits_features(self, x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self.grey_box:
            raise RuntimeError("activations requested from a black-box teacher")
        self._charge(len(x))
        with torch.set_grad_enabled(grad):
            logits, feats = self.teacher.forward_with_features(x)
        return logits.float(), feats


# ------------------------------------------------------------------------------------ losses


def attention_map(f: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis attention: channel mean of squared activations, L2-normalised."""
    a = f.float().pow(2).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    return F.normalize(a.flatten(1), dim=1)


def attention_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor], stages: int) -> torch.Tensor:
    """Sum over the first `stages` matched stages of mean squared attention-map difference."""
    total = student_feats[0].new_zeros(())
    for fs, ft in list(zip(student_feats, teacher_feats, strict=False))[:stages]:
        size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
        total = total + (attention_map(fs, size) - attention_map(ft.detach(), size)).pow(2).mean()
    return total


def zskt_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(T || S) at temperature tau, averaged over batch and classes (official ZSKT reduction)."""
    return soft_kl(teacher_logits, student_logits, tau) / student_logits.shape[1]


def student_outputs(model: nn.Module, x: torch.Tensor, with_features: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(exits, stage features): exits is `[logits]` for a plain net, MultiExitNet's order otherwise."""
    if isinstance(model, MultiExitNet):
        final, feats = model.backbone.forward_with_features(x)
        inner = [head(f) for head, f in zip(model.exits, feats[:3], strict=True)]
        return [final, inner[2], inner[1], inner[0]], feats
    if with_features:
        logits, feats = model.forward_with_features(x)
        return [logits], feats
    return [model(x)], []


# ----------------------------------------------------------------------------------- watchdog

#: generator collapse: the teacher's two most frequent classes hold at least this share of a
#: checkpoint's held-out generated images ...
COLLAPSE_TOP2_SHARE = 0.9
#: ... at the selected checkpoint and the checkpoints just before it, this many in all
#: (fewer when the selected checkpoint is one of the first).
#: Calibration (digits, normal cnn-16-32-32-64 teacher, cnn-4-8-8-16 students, the runs of
#: tests/test_datafree.py plus seeds 0-2 of ZSKT / DFAD / DFAD with teacher gradient at the
#: default 20 checkpoints): top-2 shares 0.29-0.65 from checkpoint 3 on, 0.46-0.89 at
#: checkpoint 1 (the untrained generator: 0.887 for ZSKT seed 0, 0.64 for DFAD), 0.50-0.75
#: in the 2-6 iteration smoke runs; healthy runs select checkpoint 11-20, where the window's
#: highest share was 0.65. A teacher that answers one class gives 1.0. No healthy run fired.
COLLAPSE_CHECKPOINTS = 3
#: the watchdog's retries, in order: (generator lr factor, student lr factor, seed offset,
#: documented change); mirrors the cohort trainer's RETRY_PLAN (distill/runner.py).
DATAFREE_RETRY_PLAN: tuple[tuple[float, float, int, str], ...] = (
    (0.5, 0.5, 0, "generator and student learning rates halved"),
    (0.5, 0.5, 1, "generator and student learning rates halved and a new seed "
                  "(student and generator init, latents offset by 1)"),
)
WATCHDOG_RULE = (
    "diverged if a loss was NaN/inf; or if the generator collapsed (the teacher's top-2 classes held "
    f">= {COLLAPSE_TOP2_SHARE:.0%} of the held-out generated images at the selected checkpoint and the "
    f"{COLLAPSE_CHECKPOINTS - 1} before it); or if the selection score never exceeded chance + "
    f"{CHANCE_MARGIN_PTS:g} pts; retried: " + "; then ".join(c for *_, c in DATAFREE_RETRY_PLAN)
)


def top2_share(counts: list[int]) -> tuple[float, list[int]]:
    """(share of the two most frequent classes, those classes) of one checkpoint's teacher labels."""
    total = sum(counts)
    if total == 0:
        return 0.0, []
    top = sorted(range(len(counts)), key=lambda c: (-counts[c], c))[:2]
    top = [c for c in top if counts[c] > 0]
    return sum(counts[c] for c in top) / total, top


def generator_collapse(class_counts: list[list[int]], selected: int) -> str | None:
    """Collapse rule: every checkpoint in the window ending at `selected` (0-based, the
    chosen snapshot) has top-2 share >= COLLAPSE_TOP2_SHARE. Returns the reason, or None.

    Judged at the selected checkpoint, not the last one: a generator that collapses after the
    chosen snapshot (DESIGN.md's late-collapse trap) did not shape the student we report, and
    one that collapsed early and recovered did not either.
    """
    window = range(max(0, selected - COLLAPSE_CHECKPOINTS + 1), selected + 1)
    stats = [top2_share(class_counts[k]) for k in window]
    if not stats or any(share < COLLAPSE_TOP2_SHARE for share, _ in stats):
        return None
    pooled = [sum(class_counts[k][c] for k in window) for c in range(len(class_counts[selected]))]
    share, top = top2_share(pooled)
    where = f"checkpoint {window[0] + 1}" if len(window) == 1 else f"checkpoints {window[0] + 1}-{window[-1] + 1}"
    classes = " and ".join(str(c) for c in top)
    return (
        f"generator collapse: {share:.0%} of the teacher's predictions on generated images in "
        f"class{'es' if len(top) > 1 else ''} {classes} at {where} (the selected checkpoint is {selected + 1})"
    )


def watchdog_reason(nonfinite_at: int | None, class_counts: list[list[int]], selected: int,
                    scores: list[float], num_classes: int) -> str | None:
    """The first rule that fires, in order: non-finite loss, generator collapse, chance."""
    if nonfinite_at is not None:
        return f"non-finite (NaN/inf) loss before checkpoint {nonfinite_at}; training stopped there"
    collapse = generator_collapse(class_counts, selected)
    if collapse is not None:
        return collapse
    if stuck_at_chance(scores, num_classes):
        return (
            f"selection score stuck at chance (max {max(scores):.1f}% <= "
            f"{100.0 / num_classes + CHANCE_MARGIN_PTS:.1f}% balanced agreement) at every checkpoint"
        )
    return None


# ------------------------------------------------------------------------------------ trainer


def input_range(splits: Splits) -> tuple[list[float], list[float]]:
    """Per-channel (low, high) of the teacher's standardised input: pixels 0 and 1 after standardisation.

    This is the teacher's declared preprocessing (a public contract), read off the split's
    extreme values rather than the images themselves; the attack uses nothing else of the data.
    """
    x = splits.x_train.transpose(0, 1).flatten(1)
    return x.min(1).values.tolist(), x.max(1).values.tolist()


@torch.no_grad()
def balanced_agreement(model: nn.Module, x: torch.Tensor, teacher_labels: torch.Tensor, chunk: int = 1024) -> float:
    """Mean over teacher classes present of P(student final exit == teacher label | teacher label), percent."""
    was = model.training
    model.eval()
    preds = []
    for i in range(0, len(x), chunk):
        out = model(x[i : i + chunk])
        preds.append((out[0] if isinstance(out, list) else out).argmax(1))
    model.train(was)
    pred = torch.cat(preds)
    per_class = [(pred[teacher_labels == c] == c).float().mean() for c in teacher_labels.unique()]
    return 100.0 * torch.stack(per_class).mean().item()


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
    range; no image from it is used. The returned `extra` holds the teacher access, the
    plan, the selection rule, the watchdog's per-checkpoint class counts and the generator.
    `diverged` is the watchdog's reason (None: trained normally). `seed_offset` is the
    retry's "new seed": it shifts the inits and latents, never the record's seed.
    """
    settings = settings or DataFreeSettings()
    kd = kd or KDSettings()
    sk = skeptical or SkepticalSettings()
    dev = device or torch.device("cpu")
    check_teacher(attack, teacher, settings)
    fam, skep = family(attack), is_skeptical(attack)
    plan = plan_datafree(attack, settings, splits.spec.name)
    spec = splits.spec
    member = Member(key or f"{attack}/{arch}/seed{seed}", attack, arch, seed, seed_offset=seed_offset)  # type: ignore[arg-type]
    teacher.eval()
    if fam == "dfme":  # probabilities back to logits (DFME's mean correction); label-only refused above
        teacher = dfme_teacher(attack, teacher)
    access = TeacherAccess(teacher, plan.budget, grey_box=access_of(attack, settings) == "grey_box")

    base = member_seed(seed + seed_offset, attack, arch)
    torch.manual_seed(base)
    net = build_model(arch, spec.num_classes, spec.in_channels)
    student: nn.Module = (MultiExitNet(net) if skep else net).to(dev)
    ac_stage = (sk.ac_stage or student.default_ac_stage) if skep else 4
    ac = MultiExitNet.exit_index(ac_stage) if skep else 0
    sd = MultiExitNet.exit_index(3)
    torch.manual_seed(base + 1)
    low, high = input_range(splits)
    gen = Generator(plan.latent_dim, spec.image_size, spec.in_channels, low, high, width=plan.generator_width).to(dev)
    rng = torch.Generator(device="cpu").manual_seed(base + 2)
    dfme_rng = torch.Generator(device="cpu").manual_seed(base + 4)  # DFME's random directions
    z_sel = torch.randn(plan.selection_samples, plan.latent_dim, generator=torch.Generator().manual_seed(base + 3)).to(dev)

    def latents() -> torch.Tensor:
        return torch.randn(plan.batch_size, plan.latent_dim, generator=rng).to(dev)

    total = plan.iterations
    opt_g = torch.optim.Adam(gen.parameters(), lr=settings.generator_lr)
    if fam == "zskt":
        opt_s: torch.optim.Optimizer = torch.optim.Adam(student.parameters(), lr=settings.zskt_student_lr)
    else:
        opt_s = torch.optim.SGD(student.parameters(), lr=settings.dfad_student_lr, momentum=0.9, weight_decay=5e-4)
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, total) for o in (opt_g, opt_s)]
    g_params = list(gen.parameters())

    def teacher_term(exits: list[torch.Tensor], feats: list[torch.Tensor], t: torch.Tensor, t_feats: list[torch.Tensor]) -> torch.Tensor:
        """The loss the student's teacher-facing exit gets (also what the generator maximises, minus AT)."""
        if fam != "zskt":  # DFAD and DFME: L1 between logits
            return F.l1_loss(exits[ac], t)
        loss = zskt_kl(t, exits[ac], settings.kl_temperature)
        if feats and settings.beta_at > 0:
            loss = loss + settings.beta_at * attention_loss(feats, t_feats, ac_stage)
        return loss

    def student_loss(x: torch.Tensor, t: torch.Tensor, t_feats: list[torch.Tensor]) -> torch.Tensor:
        exits, feats = student_outputs(student, x, with_features=fam == "zskt")
        loss = teacher_term(exits, feats, t, t_feats)
        if not skep:
            return loss
        y = t.argmax(1)
        return (
            sk.gamma_teacher * loss
            + sk.gamma_sd * self_distillation_loss(exits[sd], exits[0], y, sk.sd_beta, kd.temperature)
            + sk.gamma_ce * F.cross_entropy(exits[0], y)
        )

    # watchdog (a): a non-finite loss (student's or generator's) sets this flag on the device;
    # it is read once per checkpoint, so there is no host sync per step
    nonfinite = torch.zeros((), dtype=torch.bool, device=dev)

    def step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[nn.Parameter] | None = None) -> None:
        nonfinite.logical_or_(~torch.isfinite(loss.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        if fam == "zskt":
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], GRAD_CLIP)
        opt.step()

    def generator_step(z: torch.Tensor) -> None:
        x = gen(z)
        if fam == "zskt":  # grey-box: the generator's gradient flows through the teacher too
            t, _ = access.logits_features(x, grad=True)
            exits = student_outputs(student, x, with_features=False)[0]
            loss = -zskt_kl(t, exits[ac], settings.kl_temperature)
        elif fam == "dfme":  # black-box: the gradient through the teacher is estimated by forward differences
            loss = dfme_generator_step(
                gen, z, access.logits, student, lambda x: student_outputs(student, x, with_features=False)[0][ac],
                opt_g, plan.directions, settings.dfme_epsilon, dfme_rng,
            )
            nonfinite.logical_or_(~torch.isfinite(loss))
            return
        else:  # black-box: teacher outputs are constants, the gradient comes through the student
            t = access.logits_with_grad(x) if settings.dfad_teacher_gradient else access.logits(x)
            exits = student_outputs(student, x, with_features=False)[0]
            loss = -F.l1_loss(exits[ac], t)
        step(opt_g, loss, g_params)

    eval_at = {max(1, round(k * total / plan.checkpoints)) for k in range(1, plan.checkpoints + 1)}
    pool_x: list[torch.Tensor] = []
    pool_t: list[torch.Tensor] = []
    snapshots: list[dict[str, torch.Tensor]] = []
    curve: list[float] = []
    class_counts: list[list[int]] = []  # per checkpoint: teacher argmax histogram of the held-out images
    checkpoint_queries: list[int] = []  # per checkpoint: queries spent so far (the budget curve's x axis)
    nonfinite_at: int | None = None
    started = time.perf_counter()
    student.train()
    gen.train()
    for it in range(1, total + 1):
        if fam == "zskt":
            z = latents()
            for _ in range(plan.generator_steps):
                generator_step(z)
            with torch.no_grad():
                x = gen(z)
            t, t_feats = access.logits_features(x, grad=False)
            for _ in range(plan.student_steps):
                step(opt_s, student_loss(x, t, t_feats))
        else:
            for _ in range(plan.student_steps):
                with torch.no_grad():
                    x = gen(latents())
                step(opt_s, student_loss(x, access.logits(x), []))
            for _ in range(plan.generator_steps):
                generator_step(latents())
        for s in scheds:
            s.step()
        if it in eval_at:
            with torch.no_grad():
                xs = gen(z_sel)
            pool_x.append(xs)
            pool_t.append(access.logits(xs).argmax(1))
            checkpoint_queries.append(access.queries)
            class_counts.append(torch.bincount(pool_t[-1], minlength=spec.num_classes).tolist())
            snapshots.append({k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()})
            score = balanced_agreement(student, torch.cat(pool_x), torch.cat(pool_t))
            curve.append(round(score if math.isfinite(score) else 0.0, 3))
            if on_checkpoint is not None:
                on_checkpoint(EpochReport(member, len(curve), plan.checkpoints, curve[-1]))
            if bool(nonfinite):
                nonfinite_at = len(curve)
                break
    seconds = time.perf_counter() - started

    # final selection: every snapshot scored on the whole pool (the same images for all)
    px, pt = torch.cat(pool_x), torch.cat(pool_t)
    scores = []
    probe = copy.deepcopy(student)
    for snap in snapshots:
        probe.load_state_dict(snap)
        scores.append(balanced_agreement(probe, px, pt))
    best = max(range(len(scores)), key=lambda i: (scores[i], i))
    choice = prefix_choices(probe, snapshots, pool_x, pool_t)  # the budget curve (distill/budget_curve.py)
    student.load_state_dict(snapshots[best])
    student.eval()
    reason = watchdog_reason(nonfinite_at, class_counts, best, scores, spec.num_classes)
    # val_curve = the selection scores (same pool for every checkpoint), so best_epoch is its argmax
    return MemberResult(
        member, student, best + 1, [round(s, 3) for s in scores], access.queries, round(seconds, 3),
        extra={
            "plan": plan,
            "running_agreement": curve,
            "selection_rule": SELECTION_RULE,
            "access": access_of(attack, settings),
            "teacher_pool_classes": int(pt.unique().numel()),
            "generated_class_counts": class_counts,
            "generated_top2_share": [round(top2_share(c)[0], 4) for c in class_counts],
            "watchdog_rule": WATCHDOG_RULE,
            "generator": gen.eval(),
            "budget_curve": {"queries": checkpoint_queries[: len(choice)], "choice": choice,
                             "snapshots": {i: snapshots[i] for i in sorted(set(choice))}},
        },
        diverged=reason,
    )


def retry_datafree(
    result: MemberResult,
    splits: Splits,
    teacher: nn.Module,
    settings: DataFreeSettings | None = None,
    *,
    kd: KDSettings | None = None,
    skeptical: SkepticalSettings | None = None,
    device: torch.device | None = None,
    on_checkpoint: Callable[[EpochReport], None] | None = None,
) -> tuple[MemberResult, list[tuple[str, str]]]:
    """Retrain a run the watchdog flagged, per DATAFREE_RETRY_PLAN, until it trains or the plan runs out.

    Returns the last attempt and one (reason, change) per retry: why the previous attempt
    failed and what this one changed (the report's `Retry` records). A run that was not
    flagged comes back unchanged with no retries.

    The thief paid for every attempt, so the returned `teacher_queries` and `seconds` are the
    sums over all attempts (each attempt's own figures are in `extra["attempts"]`). Under a
    query budget the budget caps the whole run: each retry gets what the previous attempts
    left, and when that is too small for another attempt the retries stop and the reason says
    so. `on_checkpoint` is passed to every retry, whose checkpoints count from 1 again.
    """
    if result.diverged is None:
        return result, []
    settings = settings or DataFreeSettings()
    m = result.member
    fam = family(m.kind)
    attempts = [{"teacher_queries": result.teacher_queries, "seconds": result.seconds, "diverged": result.diverged}]
    retries: list[tuple[str, str]] = []
    for g_factor, s_factor, offset, change in DATAFREE_RETRY_PLAN:
        if result.diverged is None:
            break
        spent = sum(a["teacher_queries"] for a in attempts)
        update: dict[str, float | int] = {
            "generator_lr": settings.generator_lr * g_factor,
            "zskt_student_lr": settings.zskt_student_lr * s_factor,
            "dfad_student_lr": settings.dfad_student_lr * s_factor,
        }
        if settings.budget is not None:
            update["budget"] = settings.budget - spent
        cfg = settings.model_copy(update=update)
        if settings.budget is not None:
            try:
                plan_datafree(m.kind, cfg, splits.spec.name)
            except InputError:
                result.diverged += (f"; not retried: {settings.budget - spent:,} of the run's {settings.budget:,} "
                                    "teacher queries left, too few for another attempt")
                break
        student_lr = cfg.zskt_student_lr if fam == "zskt" else cfg.dfad_student_lr
        retries.append((result.diverged, f"{change} (generator lr {cfg.generator_lr:g}, student lr {student_lr:g}, seed offset {offset})"))
        result = train_datafree(
            m.kind, m.arch, m.seed, splits, teacher, cfg, kd=kd, skeptical=skeptical, device=device,
            key=m.key, on_checkpoint=on_checkpoint, seed_offset=offset,
        )
        attempts.append({"teacher_queries": result.teacher_queries, "seconds": result.seconds, "diverged": result.diverged})
    result.teacher_queries = sum(a["teacher_queries"] for a in attempts)
    result.seconds = round(sum(a["seconds"] for a in attempts), 3)
    result.extra["attempts"] = attempts
    return result, retries
