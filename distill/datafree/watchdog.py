"""The data-free watchdog (the counterpart of the cohort trainer's, distill/train.py).

A run is flagged `diverged` when (a) a student or generator loss was non-finite (flagged on
device, read once per checkpoint; training stops at that checkpoint), (b) the generator
collapsed: at the selected checkpoint and the ones just before it the teacher put almost all
the held-out generated images into one or two classes (`generator_collapse`), so the student
we would report learnt from, and was chosen on, a degenerate view of the task, or (c) the
selection score stayed at chance for the whole run (`stuck_at_chance`). A flagged run is
retrained per `DATAFREE_RETRY_PLAN` (distill/datafree/retry.py).
"""

from __future__ import annotations

from kdaudit.distill.train import CHANCE_MARGIN_PTS, stuck_at_chance

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
