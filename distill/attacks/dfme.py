"""DFME (Truong et al. 2021): DFAD's game with the generator's gradient through the teacher
estimated by forward differences of its scores (black-box, distill/datafree/dfme.py)."""

from kdaudit.distill.attacks.datafree_trainer import DATAFREE_TRAINER
from kdaudit.distill.attacks.spec import AttackSpec, skeptical_form

#: why DFME refuses a label-only endpoint (config validation, the runner and distill/datafree/dfme.py say the same)
DFME_LABEL_ONLY = (
    "{attack} estimates the generator's gradient from differences between the teacher's scores at nearby "
    "images; a label-only endpoint returns the same label for almost every such pair, so the estimate is zero "
    "and the attack cannot run (use output policy logits or probs; for label-only use normal_kd / skeptical "
    "with thief data)"
)

DFME = AttackSpec(
    name="datafree_dfme", label="data-free DFME", setting="data-free", family="dfme", skeptical=False,
    access="black-box", needs_scores=True, student_kind="single-exit", loss_terms=("l1",),
    trainer=DATAFREE_TRAINER, label_only_reason=DFME_LABEL_ONLY,
)
DFME_SKEPTICAL = skeptical_form(DFME, name="datafree_dfme_skeptical", label="data-free skeptical DFME",
                                teacher_terms=("l1_aux",))
SPECS = (DFME, DFME_SKEPTICAL)
