"""DFAD (Fang et al. 2019): a generator maximises, the student minimises, the L1 distance between
student and teacher logits; black-box unless its generator backpropagates through the teacher
(`dfad_teacher_gradient`, distill/datafree.py `access_of`)."""

from kdaudit.distill.attacks.datafree_trainer import DATAFREE_TRAINER
from kdaudit.distill.attacks.spec import AttackSpec, skeptical_form

DFAD = AttackSpec(
    name="datafree_dfad", label="data-free DFAD", setting="data-free", family="dfad", skeptical=False,
    access="black-box", needs_scores=True, student_kind="single-exit", loss_terms=("l1",),
    trainer=DATAFREE_TRAINER,
)
DFAD_SKEPTICAL = skeptical_form(DFAD, name="datafree_dfad_skeptical", label="data-free skeptical DFAD",
                                teacher_terms=("l1_aux",))
SPECS = (DFAD, DFAD_SKEPTICAL)
