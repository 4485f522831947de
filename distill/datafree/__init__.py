"""Data-free attacks: the thief has no images, only query access to the teacher.

A generator (models/generator.py) synthesises the queries and is trained adversarially
against the student. One module per job:

| module         | job                                                                          |
|----------------|------------------------------------------------------------------------------|
| `kind.py`      | what an attack is (family, skeptical, access), asked of the registry (distill/attacks/) |
| `plan.py`      | iterations, batch size and query cost per dataset, the budget (`plan_datafree`) |
| `teacher.py`   | which teachers an attack can run against (`check_teacher`)                   |
| `losses.py`    | ZSKT's KL and attention transfer, the students' forward pass                  |
| `dfme.py`      | DFME's forward-difference gradient through a black-box teacher              |
| `game.py`      | the generator and student steps of ZSKT, DFAD and DFME, named loss terms      |
| `selection.py` | checkpoint selection on held-out generated images, never real data           |
| `watchdog.py`  | non-finite losses, generator collapse, stuck at chance                       |
| `train.py`     | one run, wired together (`train_datafree`)                                   |
| `retry.py`     | retraining a flagged run (`retry_datafree`), every attempt billed            |

Query budget: every image sent to the teacher is billed by the one query meter
(distill/oracle.py `TeacherOracle`), including the held-out generated images used to pick
the checkpoint. A budget caps the iterations (and the run stops before any query that would
exceed it). Budget curve: each checkpoint also records the queries spent and the snapshot a
thief stopping there would select (distill/budget_curve.py), in `extra["budget_curve"]`.
The test split is only used by the caller, for the reported accuracy.
"""

from kdaudit.distill.datafree.dfme import check_dfme_teacher, dfme_generator_step, dfme_teacher
from kdaudit.distill.datafree.game import GRAD_CLIP, DataFreeGame
from kdaudit.distill.datafree.kind import Access, access_of, datafree_spec, family, is_skeptical
from kdaudit.distill.datafree.losses import attention_loss, attention_map, student_outputs, zskt_kl
from kdaudit.distill.datafree.plan import (
    DATASET_DEFAULTS,
    PAPER,
    DataFreePlan,
    plan_datafree,
    reference_iterations,
)
from kdaudit.distill.datafree.retry import retry_datafree
from kdaudit.distill.datafree.selection import SELECTION_RULE, SelectionPool, balanced_agreement
from kdaudit.distill.datafree.teacher import check_teacher, teacher_has_features, teacher_is_torch
from kdaudit.distill.datafree.train import input_range, train_datafree
from kdaudit.distill.datafree.watchdog import (
    COLLAPSE_CHECKPOINTS,
    COLLAPSE_TOP2_SHARE,
    DATAFREE_RETRY_PLAN,
    WATCHDOG_RULE,
    generator_collapse,
    top2_share,
    watchdog_reason,
)

__all__ = [
    "COLLAPSE_CHECKPOINTS", "COLLAPSE_TOP2_SHARE", "DATAFREE_RETRY_PLAN", "DATASET_DEFAULTS", "GRAD_CLIP", "PAPER",
    "SELECTION_RULE", "WATCHDOG_RULE", "Access", "DataFreeGame", "DataFreePlan", "SelectionPool", "access_of",
    "attention_loss", "attention_map", "balanced_agreement", "check_dfme_teacher", "check_teacher", "datafree_spec",
    "dfme_generator_step", "dfme_teacher", "family", "generator_collapse", "input_range", "is_skeptical",
    "plan_datafree", "reference_iterations", "retry_datafree", "student_outputs", "teacher_has_features",
    "teacher_is_torch", "top2_share", "train_datafree", "watchdog_reason", "zskt_kl",
]
