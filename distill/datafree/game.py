"""The adversarial game of one data-free run: the generator looks for images where student and
teacher disagree, the student learns to agree with the teacher on them.

- ZSKT (Micaelli & Storkey 2019, grey-box): per pseudo batch `zskt_generator_steps`
  generator steps maximising KL(T || S), then `zskt_student_steps` student steps on the
  same latents minimising KL(T || S) + beta_AT * attention transfer over matched stages.
  Its generator backpropagates through the teacher; both networks' gradients are clipped.
- DFAD (Fang et al. 2019): `dfad_student_steps` student steps minimising the L1 distance
  between student and teacher logits (fresh latents each), then `dfad_generator_steps`
  generator steps maximising it. Black-box by default (the teacher's outputs are constants,
  the generator's gradient comes through the student alone); `dfad_teacher_gradient=True`
  is the official code's grey-box generator step through the teacher.
- DFME (Truong et al. 2021, black-box): DFAD's game with the generator's gradient through
  the teacher estimated by forward differences, every probe billed (distill/datafree/dfme.py).
- Skeptical variants (Kundu et al. 2021, data-free section): the teacher's loss goes to the
  auxiliary-classifier exit only and the generator attacks that exit; the final exit trains
  with CE against the teacher's argmax, the self-distillation head with
  beta * KL(final/tau || head/tau) + (1 - beta) * CE(head, argmax).

Every teacher query goes through the meter (distill/oracle.py). The student's named loss
terms (the registry's `loss_terms`, distill/attacks/) are summed on the device by the cohort
trainer's `TermSums` and read once per checkpoint block (`loss_terms_block`), as is the
non-finite flag: no host sync per step. Each recorded term is its weighted contribution, as
in the data-available trainer, so a block's terms add up to the mean loss the student
minimised (the loss itself is computed exactly as before terms were recorded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdaudit.distill.attacks import attack_spec
from kdaudit.distill.config import DataFreeSettings, KDSettings, SkepticalSettings
from kdaudit.distill.datafree.dfme import dfme_generator_step
from kdaudit.distill.datafree.losses import attention_loss, student_outputs, zskt_kl
from kdaudit.distill.datafree.plan import DataFreePlan
from kdaudit.distill.losses import LossTerms, self_distillation_loss
from kdaudit.distill.oracle import TeacherOracle
from kdaudit.distill.train import TermSums
from kdaudit.models.generator import Generator
from kdaudit.models.multi_exit import MultiExitNet

GRAD_CLIP = 5.0  # ZSKT's official code clips both networks' gradients at norm 5


class DataFreeGame:
    """One student, one generator, one meter; `iteration()` plays one pseudo batch."""

    def __init__(self, plan: DataFreePlan, settings: DataFreeSettings, kd: KDSettings, sk: SkepticalSettings,
                 student: nn.Module, gen: Generator, meter: TeacherOracle, device: torch.device, base_seed: int):
        spec = attack_spec(plan.attack)
        self.plan, self.settings, self.kd, self.sk = plan, settings, kd, sk
        self.student, self.gen, self.meter, self.device = student, gen, meter, device
        self.zskt, self.dfme, self.skeptical = spec.family == "zskt", spec.family == "dfme", spec.skeptical
        self.ac_stage = (sk.ac_stage or student.default_ac_stage) if self.skeptical else 4
        self.ac = MultiExitNet.exit_index(self.ac_stage) if self.skeptical else 0  # the teacher-facing exit
        self.sd = MultiExitNet.exit_index(3)
        self.rng = torch.Generator(device="cpu").manual_seed(base_seed + 2)
        self.dfme_rng = torch.Generator(device="cpu").manual_seed(base_seed + 4)  # DFME's random directions
        self.opt_g = torch.optim.Adam(gen.parameters(), lr=settings.generator_lr)
        if self.zskt:
            self.opt_s: torch.optim.Optimizer = torch.optim.Adam(student.parameters(), lr=settings.zskt_student_lr)
        else:
            self.opt_s = torch.optim.SGD(student.parameters(), lr=settings.dfad_student_lr, momentum=0.9, weight_decay=5e-4)
        self.scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, plan.iterations) for o in (self.opt_g, self.opt_s)]
        self.g_params = list(gen.parameters())
        # watchdog (a): a non-finite loss (student's or generator's) sets this flag on the device
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.term_names = spec.loss_terms
        self._term_sums = TermSums()

    def latents(self) -> torch.Tensor:
        return torch.randn(self.plan.batch_size, self.plan.latent_dim, generator=self.rng).to(self.device)

    # ------------------------------------------------------------------ losses

    def teacher_term(self, exits: list[torch.Tensor], feats: list[torch.Tensor], t: torch.Tensor,
                     t_feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The loss the teacher-facing exit gets (also what the generator maximises, minus AT), and
        its named parts as they enter it (ZSKT: KL, beta_AT * AT; DFAD/DFME: L1)."""
        if not self.zskt:  # DFAD and DFME: L1 between logits
            loss = F.l1_loss(exits[self.ac], t)
            return loss, [loss.detach()]
        loss = kl = zskt_kl(t, exits[self.ac], self.settings.kl_temperature)
        at = kl.new_zeros(())
        if feats and self.settings.beta_at > 0:
            at = self.settings.beta_at * attention_loss(feats, t_feats, self.ac_stage)
            loss = loss + at
        return loss, [kl.detach(), at.detach()]

    def student_loss(self, x: torch.Tensor, t: torch.Tensor, t_feats: list[torch.Tensor]) -> tuple[torch.Tensor, LossTerms]:
        """(the student's loss, its named terms' weighted contributions, detached)."""
        exits, feats = student_outputs(self.student, x, with_features=self.zskt)
        loss, parts = self.teacher_term(exits, feats, t, t_feats)
        if self.skeptical:
            sk, y = self.sk, t.argmax(1)
            sd = self_distillation_loss(exits[self.sd], exits[0], y, sk.sd_beta, self.kd.temperature)
            ce = F.cross_entropy(exits[0], y)
            loss = sk.gamma_teacher * loss + sk.gamma_sd * sd + sk.gamma_ce * ce
            parts = [sk.gamma_teacher * p for p in parts] + [sk.gamma_sd * sd.detach(), sk.gamma_ce * ce.detach()]
        return loss, dict(zip(self.term_names, parts, strict=True))

    # ------------------------------------------------------------------ steps

    def step(self, opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[nn.Parameter] | None = None) -> None:
        self.nonfinite.logical_or_(~torch.isfinite(loss.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        if self.zskt:
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], GRAD_CLIP)
        opt.step()

    def student_step(self, x: torch.Tensor, t: torch.Tensor, t_feats: list[torch.Tensor]) -> None:
        loss, terms = self.student_loss(x, t, t_feats)
        self._term_sums.add(terms)
        self.step(self.opt_s, loss)

    def generator_step(self, z: torch.Tensor) -> None:
        x = self.gen(z)
        if self.zskt:  # grey-box: the generator's gradient flows through the teacher too
            t, _ = self.meter.logits_features(x, grad=True)
            exits = student_outputs(self.student, x, with_features=False)[0]
            loss = -zskt_kl(t, exits[self.ac], self.settings.kl_temperature)
        elif self.dfme:  # black-box: the gradient through the teacher is estimated by forward differences
            loss = dfme_generator_step(
                self.gen, z, self.meter.logits, self.student,
                lambda x: student_outputs(self.student, x, with_features=False)[0][self.ac],
                self.opt_g, self.plan.directions, self.settings.dfme_epsilon, self.dfme_rng,
            )
            self.nonfinite.logical_or_(~torch.isfinite(loss))
            return
        else:  # black-box: teacher outputs are constants, the gradient comes through the student
            t = self.meter.logits_with_grad(x) if self.settings.dfad_teacher_gradient else self.meter.logits(x)
            exits = student_outputs(self.student, x, with_features=False)[0]
            loss = -F.l1_loss(exits[self.ac], t)
        self.step(self.opt_g, loss, self.g_params)

    def iteration(self) -> None:
        """One pseudo batch (generator and student steps in the attack's order), then the lr schedules."""
        plan = self.plan
        if self.zskt:
            z = self.latents()
            for _ in range(plan.generator_steps):
                self.generator_step(z)
            with torch.no_grad():
                x = self.gen(z)
            t, t_feats = self.meter.logits_features(x, grad=False)
            for _ in range(plan.student_steps):
                self.student_step(x, t, t_feats)
        else:
            for _ in range(plan.student_steps):
                with torch.no_grad():
                    x = self.gen(self.latents())
                self.student_step(x, self.meter.logits(x), [])
            for _ in range(plan.generator_steps):
                self.generator_step(self.latents())
        for s in self.scheds:
            s.step()

    def loss_terms_block(self) -> dict[str, float | None]:
        """Mean of each named term over the student steps since the last call (None: not finite), then reset."""
        means = self._term_sums.means()
        self._term_sums = TermSums()
        return means
