"""Teacher files are untrusted: formats, wrappers, and clear rejections (all on a tiny CNN)."""

from __future__ import annotations

import json
import pickle
import random
import struct
import time
import warnings

import pytest
import torch

from kdaudit.core.errors import CheckpointError
from kdaudit.core.settings import Settings
from kdaudit.models import build_model
from kdaudit.models import checkpoints as ck
from kdaudit.models.checkpoints import (
    OnnxTeacher,
    TeacherFileInfo,
    detect_format,
    load_teacher,
    pickle_scan,
    save_teacher,
    sha256_file,
    validate_teacher_file,
)

ARCH = "cnn-4-8-8-16"
SETTINGS = Settings()


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = build_model(ARCH, 10, 1)
    # non-trivial BN statistics, so that a forgotten buffer shows up in the logits
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture
def x():
    return torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, atol: float = 1e-6) -> bool:
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=atol)


def _load(path, arch=ARCH, classes=10, channels=1, **kw):
    return load_teacher(path, arch, classes, channels, settings=kw.pop("settings", SETTINGS), **kw)


class _WritesMarker:
    """Unpickling this object opens (creates) the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _export_onnx(model, path, dynamic=True):
    kw = {"dynamic_axes": {"x": {0: "n"}, "y": {0: "n"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, 28, 28),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            **kw,
        )


# --------------------------------------------------------------------------------- accepted


def test_safetensors_round_trip(tmp_path, model, x):
    path = tmp_path / "teacher.safetensors"
    digest = save_teacher(model, path, arch=ARCH)
    assert digest == sha256_file(path)
    assert detect_format(path) == "safetensors"
    loaded = _load(path)
    assert not loaded.training
    assert _same(loaded, model, x)
    assert loaded.has_features


@pytest.mark.parametrize("wrap", ["state_dict", "model", "net", "module-prefix"])
def test_pytorch_state_dict_wrappers(tmp_path, model, x, wrap):
    sd = model.state_dict()
    obj = {
        "state_dict": {"epoch": 7, "state_dict": sd, "optim_dict": {"lr": 0.1}},
        "model": {"model": sd, "acc": 93.1},
        "net": {"net": sd, "epoch": 200},
        "module-prefix": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    path = tmp_path / "teacher.pth"
    torch.save(obj, path)
    assert detect_format(path) == "pytorch"
    assert _same(_load(path), model, x)


def test_legacy_torch_format(tmp_path, model, x):
    path = tmp_path / "old.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    assert detect_format(path) == "pytorch"
    assert _same(_load(path), model, x)


def test_num_batches_tracked_is_optional(tmp_path, model, x):
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "t.safetensors"))
    assert _same(_load(tmp_path / "t.safetensors"), model, x)


def test_onnx_teacher_matches_torch(tmp_path, model, x):
    path = tmp_path / "teacher.onnx"
    _export_onnx(model, path)
    assert detect_format(path) == "onnx"
    teacher = _load(path)
    assert isinstance(teacher, OnnxTeacher)
    assert teacher.has_features is False
    with torch.no_grad():
        assert torch.allclose(teacher(x), model(x), atol=1e-4)


def test_onnx_fixed_batch_is_chunked(tmp_path, model, x):
    path = tmp_path / "fixed.onnx"
    _export_onnx(model, path, dynamic=False)  # batch fixed at 2; x has 5 images
    with torch.no_grad():
        assert torch.allclose(_load(path)(x), model(x), atol=1e-4)


def test_validate_teacher_file_all_formats(tmp_path, model):
    st, pt, ox = tmp_path / "t.safetensors", tmp_path / "t.pt", tmp_path / "t.onnx"
    save_teacher(model, st)
    torch.save(model.state_dict(), pt)  # plain state_dict (wrappers: see test_pytorch_state_dict_wrappers)
    _export_onnx(model, ox)
    n = sum(p.numel() for p in model.parameters())
    for path, fmt in ((st, "safetensors"), (pt, "pytorch"), (ox, "onnx")):
        info = validate_teacher_file(path, ARCH, 10, 1, settings=SETTINGS)
        assert isinstance(info, TeacherFileInfo)
        assert info.format == fmt
        assert info.sha256 == sha256_file(path)
        assert info.size_bytes == path.stat().st_size
        if fmt != "onnx":
            assert info.parameters == n
        assert info.parameters > 0


# --------------------------------------------------------------------------------- rejected


@pytest.mark.parametrize("kind", ["torch.save", "pickle", "pickle-protocol-0", "torch-legacy"])
def test_full_pickle_is_rejected_without_running_it(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = {"weight": _WritesMarker(marker)}
    path = tmp_path / "evil.pt"
    if kind == "torch.save":
        torch.save(payload, path)
    elif kind == "torch-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=0 if kind == "pickle-protocol-0" else 4)
    with pytest.raises(CheckpointError, match="full pickle"):
        detect_format(path)
    with pytest.raises(CheckpointError, match="full pickle"):
        _load(path)
    assert not marker.exists()


def test_full_pickle_refused_by_child_even_without_the_scan(tmp_path, monkeypatch):
    """The opcode scan is a fast path; weights_only in the child is the real guard."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": _WritesMarker(marker)}, path)
    monkeypatch.setattr(pickle_scan, "reject_foreign_globals", lambda globals_: None)
    with pytest.raises(CheckpointError, match="full pickle"):
        _load(path)
    assert not marker.exists()


def test_full_pickle_rejected_by_validate(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": _WritesMarker(marker)}, path)
    with pytest.raises(CheckpointError, match="full pickle"):
        validate_teacher_file(path, ARCH, 10, 1, settings=SETTINGS)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_is_rejected(tmp_path, model):
    path = tmp_path / "scripted.pt"
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()))
    torch.jit.save(scripted, path)
    with pytest.raises(CheckpointError, match="TorchScript"):
        _load(path)
    traced = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 28, 28)), traced)
    with pytest.raises(CheckpointError, match="TorchScript"):
        detect_format(traced)


def test_truncated_safetensors(tmp_path, model):
    path = tmp_path / "t.safetensors"
    save_teacher(model, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        _load(path)


def test_truncated_pytorch_file(tmp_path, model):
    path = tmp_path / "t.pt"
    torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        _load(path)


def _raw_safetensors(path, header: dict, data: bytes = b"\0" * 16):
    hdr = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hdr)) + hdr + data)


def test_header_bomb_fails_fast(tmp_path):
    path = tmp_path / "bomb.safetensors"
    _raw_safetensors(
        path, {"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 4 * 10**12]}}
    )
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="parameter limit"):
        _load(path)
    # inconsistent claim: shape says 4 TB, offsets say 16 bytes
    _raw_safetensors(path, {"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 16]}})
    with pytest.raises(CheckpointError, match="malicious"):
        _load(path)
    # header length larger than the file
    path.write_bytes(struct.pack("<Q", 10**15) + b"{}" + b"\0" * 16)
    with pytest.raises(CheckpointError, match="malicious|truncated"):
        _load(path)
    assert time.perf_counter() - start < 1.0


def test_bad_safetensors_header_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"\0" * 8)
    with pytest.raises(CheckpointError, match="JSON"):
        _load(path)


def test_wrong_shapes_name_the_keys(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_teacher(build_model("cnn-8-8-8-16", 10, 1), path)
    with pytest.raises(CheckpointError) as err:
        _load(path)
    msg = str(err.value)
    assert "shape mismatch" in msg and "stages.0.0.weight is (8, 1, 3, 3), expected (4, 1, 3, 3)" in msg
    assert "\n" not in msg


def test_wrong_num_classes_hint(tmp_path, model):
    path = tmp_path / "t.safetensors"
    save_teacher(model, path)
    with pytest.raises(
        CheckpointError, match=r"linear.weight is \(10, 16\), expected \(100, 16\).*10 classes"
    ):
        _load(path, classes=100)


def test_missing_and_unexpected_keys(tmp_path, model):
    from safetensors.torch import save_file

    sd = dict(model.state_dict())
    del sd["linear.bias"]
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "t.safetensors"
    save_file(sd, str(path))
    with pytest.raises(
        CheckpointError, match=r"missing 1 key\(s\): linear.bias; unexpected 1 key\(s\): extra.weight"
    ):
        _load(path)


def test_non_finite_weights(tmp_path, model):
    with torch.no_grad():
        model.linear.weight[0, 0] = float("nan")
    path = tmp_path / "t.safetensors"
    save_teacher(model, path)
    with pytest.raises(CheckpointError, match="NaN"):
        _load(path)


@pytest.mark.parametrize(
    "obj,message",
    [
        ([torch.zeros(2)], "holds a list, not a state_dict"),
        ({}, "empty dict"),
        ({"epoch": 3, "acc": 0.9}, r"non-tensor entries epoch \(int\), acc \(float\)"),
        ({"state_dict": {"a": torch.zeros(1), "b": 3}}, r"non-tensor entries b \(int\)"),
    ],
)
def test_not_a_state_dict(obj, message):
    # in-process on purpose: this is what the loader child runs after torch.load(weights_only=True)
    with pytest.raises(CheckpointError, match=message):
        ck.normalise_state_dict(obj)


def test_normalise_strips_module_prefix_and_unwraps():
    sd = {"module.a": torch.zeros(1), "module.b": torch.ones(2)}
    for obj in (sd, {"state_dict": sd}, {"model": sd}, {"net": {"state_dict": sd}}):
        assert sorted(ck.normalise_state_dict(obj)) == ["a", "b"]
    with pytest.raises(CheckpointError, match="parameter limit"):
        ck.normalise_state_dict(sd, max_parameters=2)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\x00\x17" + random.Random(0).randbytes(2046), "unrecognized file format"),
        (b"epoch,acc\n1,0.93\n", "text"),
        (b"", "empty"),
        (b"PK\x03\x04" + b"\0" * 64, "zip archive is corrupt"),
        (b"\x08\x07\x3a" + random.Random(1).randbytes(200), "ONNX"),
        (b"\x80\x04" + random.Random(2).randbytes(200), "pickle but is corrupt"),
    ],
)
def test_garbage_files(tmp_path, content, message):
    path = tmp_path / "teacher.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        _load(path)


def test_bad_dimensions(tmp_path, model):
    path = tmp_path / "t.safetensors"
    save_teacher(model, path)
    with pytest.raises(CheckpointError, match="num_classes"):
        _load(path, classes=0)
    with pytest.raises(CheckpointError, match="in_channels"):
        validate_teacher_file(path, ARCH, 10, -1, settings=SETTINGS)


def test_oversize_file(tmp_path, model):
    path = tmp_path / "t.safetensors"
    save_teacher(model, path)
    tiny = Settings(max_upload_bytes=1024)
    with pytest.raises(CheckpointError, match="upload limit"):
        _load(path, settings=tiny)
    with pytest.raises(CheckpointError, match="upload limit"):
        validate_teacher_file(path, ARCH, 10, 1, settings=tiny)


def test_parameter_limit(tmp_path, model):
    path = tmp_path / "t.safetensors"
    save_teacher(model, path)
    with pytest.raises(CheckpointError, match="parameter limit"):
        _load(path, settings=Settings(max_parameters=500))


def test_loader_memory_limit_applies(tmp_path, model):
    path = tmp_path / "t.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="memory limit"):
        _load(path, settings=Settings(loader_memory_bytes=64 * 1024**2))


def test_sandbox_and_loader_child_apply_one_limit_table(tmp_path, monkeypatch):
    """The parent's preexec_fn and the child's own first step apply the same LoaderLimits."""
    import subprocess

    from kdaudit.models import loader_proc
    from kdaudit.models.checkpoints import rlimits, sandbox

    settings = Settings(loader_memory_bytes=3 << 30, loader_cpu_seconds=17, max_parameters=1234)
    expected = rlimits.LoaderLimits.from_settings(settings)
    started: dict = {}

    def fake_run(cmd, **kwargs):
        started.update(cmd=cmd, preexec=kwargs["preexec_fn"])
        (tmp_path / "result.json").write_text('{"ok": true}')
        return subprocess.CompletedProcess(cmd, 0, b"", b"")

    monkeypatch.setattr(sandbox.subprocess, "run", fake_run)
    sandbox.run_loader(["convert", "x", "y"], settings, tmp_path)
    assert started["preexec"].func is rlimits.apply_limits and started["preexec"].args == (expected,)
    limits_arg = started["cmd"][started["cmd"].index("--limits") + 1]

    applied = []
    monkeypatch.setattr(rlimits, "apply_limits", applied.append)
    monkeypatch.setattr(loader_proc, "_deny_network", lambda: "skipped in-process")
    result = tmp_path / "child.json"
    loader_proc.main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "out"),
                      "--result", str(result), "--limits", limits_arg])  # fmt: skip
    assert applied == [expected]
    assert json.loads(result.read_text())["ok"] is False


def test_limits_are_only_ever_lowered():
    import resource

    from kdaudit.models.checkpoints.rlimits import clamp

    inf = resource.RLIM_INFINITY
    assert clamp((inf, inf), 10, 15) == (10, 15)
    assert clamp((inf, 12), 10, 15) == (10, 12)
    assert clamp((5, 20), 10, 15) == (5, 15)
    assert clamp((inf, 8), 10, 15) == (8, 8)


def test_declared_format_must_match(tmp_path, model):
    path = tmp_path / "t.safetensors"
    save_teacher(model, path)
    with pytest.raises(CheckpointError, match="declared as onnx"):
        _load(path, fmt="onnx")
    with pytest.raises(CheckpointError, match="unknown format"):
        _load(path, fmt="pickle")
    with pytest.raises(CheckpointError, match="declared as pytorch"):
        _load(path, fmt="pth")
    assert _load(path, fmt="safetensors") is not None


def test_unknown_arch_is_checkpoint_error(tmp_path, model):
    path = tmp_path / "t.safetensors"
    save_teacher(model, path)
    with pytest.raises(CheckpointError, match="unknown architecture"):
        _load(path, arch="resnet99")
    with pytest.raises(CheckpointError, match="unknown architecture"):
        validate_teacher_file(path, "resnet99", 10, 1, settings=SETTINGS)


def test_onnx_shape_checks(tmp_path, model):
    path = tmp_path / "t.onnx"
    _export_onnx(model, path)
    with pytest.raises(CheckpointError, match=r"outputs 10 classes; the dataset has 7"):
        _load(path, classes=7)
    with pytest.raises(CheckpointError, match="input channel"):
        _load(path, channels=3)


def test_onnx_external_data_is_refused(tmp_path, model):
    import onnx

    path = tmp_path / "t.onnx"
    _export_onnx(model, path)
    proto = onnx.load(str(path))
    ext = tmp_path / "ext.onnx"
    onnx.save_model(
        proto,
        str(ext),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    with pytest.raises(CheckpointError, match="external data"):
        _load(ext)


def test_truncated_onnx(tmp_path, model):
    path = tmp_path / "t.onnx"
    _export_onnx(model, path)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(CheckpointError, match="ONNX"):
        _load(path)
