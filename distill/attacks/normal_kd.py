"""Normal KD (Hinton et al. 2015): a single-exit student matches the teacher's softened scores."""

from kdaudit.distill.attacks.spec import AttackSpec

#: trains in the data-available cohort (distill/train.py), one teacher query per batch shared by all members
COHORT_TRAINER = "kdaudit.distill.train:Cohort"

NORMAL_KD = AttackSpec(
    name="normal_kd", label="normal KD (Hinton)", setting="data-available", family="kd", skeptical=False,
    access="black-box", needs_scores=False, student_kind="single-exit", loss_terms=("kd", "ce"),
    trainer=COHORT_TRAINER,
)
SPECS = (NORMAL_KD,)
