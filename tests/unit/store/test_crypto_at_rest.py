"""The at-rest format (store/crypto.py): round trips at every chunk boundary, authentication of
every byte and of the chunk order/length, key ids and rotation, sealed report JSON bound to
its audit, the key file created 0600 once."""

from __future__ import annotations

import io
import os

import pytest

from kdaudit.core.settings import Settings
from kdaudit.store import crypto
from kdaudit.store.crypto import CHUNK, Keyring, StorageKeyError, _parse_key


def ring(*keys: str) -> Keyring:
    return Keyring([_parse_key(k) for k in keys])


def seal(r: Keyring, data: bytes) -> bytes:
    out = io.BytesIO()
    r.seal_stream(io.BytesIO(data), out)
    return out.getvalue()


def unseal(r: Keyring, blob: bytes) -> bytes:
    return b"".join(r.open_stream(io.BytesIO(blob)))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 7])
def test_round_trip_at_chunk_boundaries(size):
    r = ring(crypto.new_key())
    data = os.urandom(size)
    blob = seal(r, data)
    assert len(blob) == size + 20 + 16 * max(1, -(-size // CHUNK))  # header + one tag per chunk
    assert unseal(r, blob) == data
    if size >= 64:
        assert data[:64] not in blob


def test_tampering_truncation_and_reordering_fail():
    r = ring(crypto.new_key())
    data = os.urandom(2 * CHUNK + 100)
    blob = seal(r, data)
    flipped = bytearray(blob)
    flipped[CHUNK + 50] ^= 1
    step = CHUNK + 16
    body = blob[20:]
    swapped = blob[:20] + body[step : 2 * step] + body[:step] + body[2 * step :]
    for bad in (bytes(flipped), blob[:-1], blob[: 20 + step], swapped, blob + os.urandom(16)):
        with pytest.raises(StorageKeyError):
            unseal(r, bad)


def test_unsealed_files_read_as_they_are():
    assert unseal(ring(crypto.new_key()), b"plain old file") == b"plain old file"


def test_rotation_by_key_id():
    old, new = crypto.new_key(), crypto.new_key()
    blob = seal(ring(old), b"x" * 1000)
    assert unseal(ring(new, old), b"".join([blob])) == b"x" * 1000
    assert seal(ring(new, old), b"y")[5:13] == crypto.key_id(_parse_key(new))
    with pytest.raises(StorageKeyError, match="not among the configured keys"):
        unseal(ring(new), blob)


def test_report_json_is_bound_to_its_audit():
    r = ring(crypto.new_key())
    doc = {"schema": "kdaudit.report/v1", "summary": {"verdict": "leaks"}}
    sealed = r.seal_json(doc, "kdaudit-report/a1")
    assert crypto.is_sealed_json(sealed) and "leaks" not in str(sealed)
    assert r.open_json(sealed, "kdaudit-report/a1") == doc
    with pytest.raises(StorageKeyError):
        r.open_json(sealed, "kdaudit-report/a2")


def test_bad_keys_are_refused():
    for bad in ("", "short", "!" * 44):
        with pytest.raises(StorageKeyError):
            _parse_key(bad)


def test_key_file_created_once_0600(tmp_path):
    crypto.clear_cache()
    s = Settings(data_dir=tmp_path, storage_keys=None, storage_key_file=None)
    first = crypto.keyring(s)
    path = tmp_path / "storage.key"
    assert path.stat().st_mode & 0o777 == 0o600
    crypto.clear_cache()
    assert crypto.keyring(s).primary_id == first.primary_id  # read back, not replaced
    assert crypto.keyring(Settings(data_dir=tmp_path, encrypt_at_rest=False)) is None
