"""Cost of theft (distill/cost.py): hand-computed extrapolations and rejected inputs. No training."""

from __future__ import annotations

import pytest

from kdaudit.distill.cost import FULL_TRAIN_IMAGES, REFERENCE_EPOCHS, TheftCost, theft_cost


def kd_cost(**kw):
    args = dict(attack="normal_kd", student="cnn-4-8-8-16", device="cpu", run_seconds=[10.0], run_queries=[10_000],
                train_images=1_000, full_train_images=50_000, epochs=10, dataset="cifar10", data_free=False, full_epochs=200)
    args.update(kw)
    return theft_cost(**args)


def test_data_available_scales_with_images_times_epochs():
    # 10 s and 10,000 queries for 1,000 images x 10 epochs -> 50,000 x 200 is 1,000x the work
    c = kd_cost()
    assert c.scale == 1_000
    assert c.extrapolated_seconds == 10_000.0
    assert c.extrapolated_queries == 10_000_000
    assert (c.basis, c.measured_train_images, c.full_train_images, c.measured_epochs, c.full_epochs) == (
        "images x epochs", 1_000, 50_000, 10, 200)
    assert any("linearly in images x epochs" in a for a in c.assumptions)
    assert any("does not cache" in a for a in c.assumptions)
    TheftCost.model_validate_json(c.model_dump_json())


def test_means_over_runs_and_table_defaults():
    # mean of 8 and 12 s = 10 s, of 9,000 and 11,000 queries = 10,000; cifar10 defaults: 50,000 x 160
    c = kd_cost(run_seconds=[8.0, 12.0], run_queries=[9_000, 11_000], full_train_images=None, full_epochs=None)
    assert (c.runs, c.seconds_per_run, c.queries_per_run) == (2, 10.0, 10_000.0)
    assert (c.full_train_images, c.full_epochs) == (FULL_TRAIN_IMAGES["cifar10"], REFERENCE_EPOCHS["cifar10"]) == (50_000, 160)
    assert c.extrapolated_seconds == 10.0 * 800 and c.extrapolated_queries == 8_000_000
    # digits at its default schedule on the audit's 1,080-image train split: 1200/1080 x 40/40
    d = kd_cost(dataset="digits", train_images=1_080, epochs=40, full_train_images=None, full_epochs=None)
    assert d.scale == pytest.approx(1200 / 1080)
    assert d.extrapolated_seconds == pytest.approx(10.0 * 1200 / 1080, abs=0.05)


def test_data_free_scales_with_iterations_and_keeps_selection_queries():
    # 400 iterations took 20 s and 158,720 queries, of which 20 x 256 = 5,120 were checkpoint selection;
    # 25,000 iterations: 62.5x -> 1,250 s and (158,720 - 5,120) x 62.5 + 5,120 = 9,605,120 queries
    c = theft_cost("datafree_dfad", "resnet18", "cuda", [20.0], [158_720], None, None, None, "cifar10", True,
                   datafree_iterations=400, full_iterations=25_000, fixed_queries=5_120)
    assert (c.basis, c.scale, c.extrapolated_seconds, c.extrapolated_queries) == ("iterations", 62.5, 1_250.0, 9_605_120)
    assert c.measured_train_images is None and c.full_epochs is None
    assert any("25,000 iterations" in a for a in c.assumptions)
    # without a fixed part everything scales
    plain = theft_cost("datafree_zskt", "s", "cpu", [3.0, 5.0], [100, 300], 0, 0, 0, "digits", True,
                       datafree_iterations=10, full_iterations=150)
    assert (plain.extrapolated_seconds, plain.extrapolated_queries) == (60.0, 3_000)
    assert "datafree_zskt -> s: ~60 s on cpu and 3,000 teacher queries" in plain.summary()


@pytest.mark.parametrize(("kw", "match"), [
    ({"run_seconds": [], "run_queries": []}, "no measured runs"),
    ({"run_seconds": [1.0, 2.0]}, "one of each per run"),
    ({"run_seconds": [0.0]}, "> 0"),
    ({"run_seconds": [float("nan")]}, "finite"),
    ({"run_queries": [-1]}, "non-negative"),
    ({"train_images": 0}, "train_images must be a positive integer"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"full_train_images": 500}, "smaller than the audit's thief train set"),
    ({"full_epochs": 0}, "full_epochs must be a positive integer"),
    ({"dataset": "npz", "full_train_images": None}, "pass full_train_images"),
    ({"dataset": "imagenet", "full_epochs": None}, "pass full_epochs"),
    ({"device": ""}, "device"),
    ({"data_free": True}, "datafree_iterations must be a positive integer"),
    ({"data_free": True, "datafree_iterations": 10}, "full_iterations must be a positive integer"),
    ({"data_free": True, "datafree_iterations": 10, "full_iterations": 100, "fixed_queries": 20_000}, "fixed_queries"),
])
def test_inputs_that_cannot_be_extrapolated_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        kd_cost(**kw)


def test_zero_queries_extrapolate_to_zero():
    assert kd_cost(run_queries=[0]).extrapolated_queries == 0
