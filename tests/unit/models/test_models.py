"""Architectures: shapes, per-stage features, kuangliu parameter names, parameter counts."""

from __future__ import annotations

import pytest
import torch

from kdaudit.core.errors import InputError
from kdaudit.models import ARCHITECTURES, build_model, parse_arch
from kdaudit.models.base import StagedNet

CIFAR_ARCHS = ["resnet18", "resnet34", "resnet50", "mobilenetv2"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_cifar_family_is_registered():
    parse_arch("resnet18")  # triggers the lazy import
    assert set(CIFAR_ARCHS) <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", CIFAR_ARCHS + ["cnn-4-8-8-16"])
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_output_and_feature_shapes(arch, in_channels, size):
    model = build_model(arch, 10, in_channels).eval()
    assert isinstance(model, StagedNet)
    x = torch.randn(1, in_channels, size, size)
    with torch.no_grad():
        logits, feats = model.forward_with_features(x)
    assert logits.shape == (1, 10)
    assert len(feats) == 4
    assert tuple(f.shape[1] for f in feats) == tuple(model.stage_channels)
    assert all(f.shape[0] == 1 for f in feats)
    assert 1 <= model.default_ac_stage <= 3


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_stage_views_match_stage_forward(arch):
    """`stem`/`stages` are unregistered views that compute the same thing as the overrides."""
    model = build_model(arch, 10, 3).eval()
    x = torch.randn(1, 3, 16, 16)  # small: this test is about wiring, not resolution
    with torch.no_grad():
        out = model.stem(x)
        assert torch.allclose(out, model.stem_forward(x))
        for i in range(4):
            ref = model.stage_forward(i, out)
            out = model.stages[i](out)
            assert torch.allclose(out, ref)
        assert torch.allclose(model.head_forward(out), model(x), atol=1e-5)
    assert not any(k.startswith(("stages.", "stem.")) for k in model.state_dict())


RESNET18_KEYS = [
    "conv1.weight",
    "bn1.running_mean",
    "layer1.0.conv1.weight",
    "layer1.1.bn2.bias",
    "layer2.0.shortcut.0.weight",
    "layer2.0.shortcut.1.running_var",
    "layer3.1.conv2.weight",
    "layer4.1.bn2.running_var",
    "layer4.0.bn1.num_batches_tracked",
    "linear.weight",
    "linear.bias",
]
RESNET50_KEYS = [
    "layer1.0.conv3.weight",
    "layer1.0.bn3.weight",
    "layer1.0.shortcut.0.weight",
    "layer4.2.bn3.running_mean",
]
MOBILENET_KEYS = [
    "conv1.weight",
    "bn1.weight",
    "layers.0.conv1.weight",
    "layers.0.shortcut.0.weight",
    "layers.1.conv2.weight",
    "layers.16.conv3.weight",
    "layers.16.bn3.running_var",
    "layers.16.shortcut.1.weight",
    "conv2.weight",
    "bn2.running_mean",
    "linear.weight",
]


@pytest.mark.parametrize(
    "arch,keys,count",
    [
        ("resnet18", RESNET18_KEYS, 11_173_962),
        ("resnet34", ["layer3.5.bn2.weight", "layer4.2.conv2.weight"], 21_282_122),
        ("resnet50", RESNET50_KEYS, 23_520_842),
        ("mobilenetv2", MOBILENET_KEYS, 2_296_922),
    ],
)
def test_kuangliu_names_and_parameter_counts(arch, keys, count):
    model = build_model(arch, 10, 3)
    sd = model.state_dict()
    missing = [k for k in keys if k not in sd]
    assert not missing
    assert sum(p.numel() for p in model.parameters()) == count


def test_kuangliu_shapes():
    r18 = build_model("resnet18", 10, 3).state_dict()
    assert r18["conv1.weight"].shape == (64, 3, 3, 3)
    assert r18["linear.weight"].shape == (10, 512)
    assert "layer1.0.shortcut.0.weight" not in r18  # identity shortcut has no parameters
    mnv2 = build_model("mobilenetv2", 100, 3).state_dict()
    assert mnv2["conv2.weight"].shape == (1280, 320, 1, 1)
    assert mnv2["layers.1.conv2.weight"].shape == (96, 1, 3, 3)  # depthwise
    assert mnv2["linear.weight"].shape == (100, 1280)
    assert "layers.1.shortcut.0.weight" in mnv2  # stride 1, 16 -> 24: projection shortcut
    assert "layers.2.shortcut.0.weight" not in mnv2  # stride 1, 24 -> 24: identity
    assert "layers.3.shortcut.0.weight" not in mnv2  # stride 2: no residual at all


def test_in_channels_and_stage_channels():
    assert build_model("resnet18", 10, 1).state_dict()["conv1.weight"].shape == (64, 1, 3, 3)
    assert build_model("mobilenetv2", 10, 1).state_dict()["conv1.weight"].shape == (32, 1, 3, 3)
    assert build_model("resnet18", 10, 3).stage_channels == (64, 128, 256, 512)
    assert build_model("resnet50", 10, 3).stage_channels == (256, 512, 1024, 2048)
    assert build_model("mobilenetv2", 10, 3).stage_channels == (24, 64, 160, 1280)
    assert build_model("mobilenetv2", 10, 3).default_ac_stage == 2
    assert build_model("resnet34", 10, 3).default_ac_stage == 2


def test_cifar_resolutions():
    """No max-pool, stride-1 stems: 32x32 ends at 4x4 in both families."""
    with torch.no_grad():
        r = build_model("resnet18", 10, 3).eval().forward_features(torch.randn(1, 3, 32, 32))
        m = build_model("mobilenetv2", 10, 3).eval().forward_features(torch.randn(1, 3, 32, 32))
    assert [f.shape[-1] for f in r] == [32, 16, 8, 4]
    assert [f.shape[-1] for f in m] == [32, 8, 4, 4]


def test_small_cnn_builds():
    model = build_model("cnn-4-8-8-16", 10, 1)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.stage_channels == (4, 8, 8, 16)


@pytest.mark.parametrize("name", ["resnet99", "vgg16", "cnn-0-8-8-16", "cnn-4-8-8"])
def test_unknown_arch_is_input_error(name):
    with pytest.raises(InputError):
        build_model(name, 10, 3)


def test_arch_names_are_normalised():
    assert parse_arch(" ResNet18 ") == "resnet18"
