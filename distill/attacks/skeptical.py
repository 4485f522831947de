"""Skeptical student (Kundu et al. 2021): an auxiliary classifier at a shallow depth takes the KD
loss, the deep exit self-distils from the final exit, the final exit learns from the labels."""

from kdaudit.distill.attacks.normal_kd import NORMAL_KD
from kdaudit.distill.attacks.spec import skeptical_form

SKEPTICAL = skeptical_form(NORMAL_KD, name="skeptical", label="skeptical student", teacher_terms=("kd_aux",),
                           family="skeptical")
SPECS = (SKEPTICAL,)
