"""Datasets: fixed stratified splits, the thief's fraction, user .npz files, clear errors."""

import numpy as np
import pytest
import torch

from kdaudit.core.errors import DataError, InputError
from kdaudit.distill.augment import random_crop_flip
from kdaudit.distill.data import dataset_spec, default_data_roots, load_splits


def test_digits_split_is_fixed_stratified_and_disjoint():
    a, b = load_splits("digits"), load_splits("digits")
    assert (len(a.x_train), len(a.x_val), len(a.x_test)) == (1080, 120, 597)
    assert a.split_sha256 == b.split_sha256 and torch.equal(a.x_val, b.x_val)
    assert torch.bincount(a.y_val).min() >= 11  # every class present in validation
    # no validation image is also a training image
    tr = {bytes(x.numpy().tobytes()) for x in a.x_train}
    assert not any(bytes(x.numpy().tobytes()) in tr for x in a.x_val)
    assert abs(a.x_train.mean().item()) < 0.05  # standardised with the full training split's statistics


def test_fraction_keeps_every_class_and_changes_the_split_hash():
    full, tenth = load_splits("digits"), load_splits("digits", fraction=0.1)
    assert 100 <= len(tenth.x_train) <= 115
    assert len(torch.unique(tenth.y_train)) == 10
    assert torch.equal(full.x_test, tenth.x_test) and torch.equal(full.x_val, tenth.x_val)
    assert full.split_sha256 != tenth.split_sha256


def test_user_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(200, 12, 12), dtype=np.uint8)
    y = np.repeat(np.arange(4), 50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = dataset_spec("npz", tmp_path / "d.npz")
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (4, 1, 12)
    s = load_splits("npz", dataset_path=tmp_path / "d.npz")
    assert len(s.x_test) == 40 and s.x_train.shape[1:] == (1, 12, 12)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="unknown dataset"):
        dataset_spec("imagenet")
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match="arrays 'x' and 'y'"):
        load_splits("npz", dataset_path=tmp_path / "bad.npz")
    with pytest.raises(DataError, match="not found"):
        load_splits("mnist", data_root=tmp_path)


@pytest.mark.skipif(not any((r / "mnist.npz").exists() for r in default_data_roots()), reason="shared datasets absent")
def test_mnist_from_shared_datasets():
    s = load_splits("mnist", fraction=0.05)
    assert s.x_test.shape == (10000, 1, 28, 28)
    assert len(torch.unique(s.y_train)) == 10


def test_crop_flip_is_a_pure_function_of_the_generator():
    x = torch.randn(16, 3, 8, 8)
    a = random_crop_flip(x, 2, True, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, 2, True, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.equal(random_crop_flip(x, 0, False, torch.Generator()), x)
