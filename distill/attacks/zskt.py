"""ZSKT (Micaelli & Storkey 2019): a generator maximises the student-teacher KL; the student
minimises it plus attention transfer on the teacher's stage activations (grey-box)."""

from kdaudit.distill.attacks.datafree_trainer import DATAFREE_TRAINER
from kdaudit.distill.attacks.spec import AttackSpec, skeptical_form

ZSKT = AttackSpec(
    name="datafree_zskt", label="data-free ZSKT", setting="data-free", family="zskt", skeptical=False,
    access="grey-box", needs_scores=True, student_kind="single-exit", loss_terms=("kl", "attention"),
    trainer=DATAFREE_TRAINER, needs_logits=True,
)
ZSKT_SKEPTICAL = skeptical_form(ZSKT, name="datafree_zskt_skeptical", label="data-free skeptical ZSKT",
                                teacher_terms=("kl_aux", "attention_aux"))
SPECS = (ZSKT, ZSKT_SKEPTICAL)
