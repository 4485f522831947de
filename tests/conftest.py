"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def digits_teachers(tmp_path_factory):
    """The digits recipe's normal and nasty teachers (`protect`, seed 0), trained once per session.

    About a minute on 2 idle cores; the science and threat-model tests both audit them.
    """
    from kdaudit.distill.protect import ProtectConfig, protect_teacher

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("teachers")
    return protect_teacher(ProtectConfig(dataset="digits", seed=0, out=out / "nasty.safetensors",
                                         normal_out=out / "normal.safetensors", verify=False, device="cpu"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: many tiny batches on a loaded 2-core box ran ~15x slower with 2."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits():
    """scikit-learn digits with kdaudit's fixed train/val/test split."""
    from kdaudit.distill.data import load_splits

    return load_splits("digits")


@pytest.fixture(scope="session")
def pixel_teacher(tmp_path_factory):
    """Issue 16's owner model: a digits CNN trained on [0, 1] pixels with no mean/std step,
    exported to ONNX. Returns (onnx path, torch model, its own test accuracy in percent)."""

    from tests.helpers.contract import export_onnx, train_raw_teacher

    torch.set_num_threads(2)
    model, acc = train_raw_teacher(epochs=15)
    path = export_onnx(model, tmp_path_factory.mktemp("pixel_teacher") / "digits_pixels.onnx")
    return path, model, acc
