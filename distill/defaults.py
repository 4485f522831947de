"""Per-dataset default schedules: what a thief would reasonably run at each scale.

Digits and MNIST-like sets train in seconds to minutes on a CPU; CIFAR-10 follows the
papers' recipe shape (SGD, lr 0.1, batch 128) with a one-cycle schedule instead of steps.
"""

from __future__ import annotations

from kdaudit.distill.config import TrainSchedule

_DEFAULTS = {
    "digits": TrainSchedule(epochs=40, batch_size=32, lr=0.05, augment=False),
    "mnist": TrainSchedule(epochs=10, batch_size=128, lr=0.05),
    "fashion-mnist": TrainSchedule(epochs=15, batch_size=128, lr=0.05),
    "cifar10": TrainSchedule(epochs=160, batch_size=128, lr=0.1),
    # CIFAR-100: the Nasty Teacher / Skeptical papers' 200 epochs (their CIFAR-10 figure is 160)
    "cifar100": TrainSchedule(epochs=200, batch_size=128, lr=0.1),
    "cifar100-coarse": TrainSchedule(epochs=200, batch_size=128, lr=0.1),
    "folder": TrainSchedule(epochs=40, batch_size=64, lr=0.05),
    "npz": TrainSchedule(epochs=40, batch_size=64, lr=0.05),
}


def default_schedule(dataset: str) -> TrainSchedule:
    return _DEFAULTS.get(dataset, TrainSchedule()).model_copy()
