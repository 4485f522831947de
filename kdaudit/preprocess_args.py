"""The teacher-input-contract flags, shared by `audit`, `upload`, `register-remote` and `serve-teacher`
(and --expected-accuracy, which `submit` takes too)."""

from __future__ import annotations

import argparse

from kdaudit.distill.preprocess import PRESET_NAMES, TeacherInput, parse_cli


def add_preprocess_args(p: argparse.ArgumentParser, *, expected: bool = True) -> None:
    g = p.add_argument_group("the teacher's input preprocessing (what its own pipeline fed it)")
    g.add_argument("--preprocess", choices=[n for n in PRESET_NAMES if n != "custom"],
                   help="preset: dataset (default: the dataset's train mean/std, kdaudit's own teachers), none "
                   "(pixels in [0,1]), pixels255, half ([-1,1]), imagenet, cifar, cifar-kuangliu, cifar100, mnist")
    g.add_argument("--mean", help="explicit per-channel mean, comma-separated (in the units of --pixel-scale)")
    g.add_argument("--std", help="explicit per-channel std, comma-separated")
    g.add_argument("--pixel-scale", type=float, help="pixels in [0, SCALE] before mean/std (e.g. 255)")
    if expected:
        add_expected_accuracy_option(g)


def add_expected_accuracy_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--expected-accuracy: the owner's number the sanity check holds the teacher to (teacher and audit commands)."""
    p.add_argument("--expected-accuracy", type=float,
                   help="the teacher's test accuracy in its own pipeline, percent: the audit stops if it measures > 2 pts less")


def contract_from_args(args: argparse.Namespace) -> TeacherInput:
    return parse_cli(getattr(args, "preprocess", None), getattr(args, "mean", None), getattr(args, "std", None),
                     getattr(args, "pixel_scale", None))
