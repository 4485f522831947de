"""Encryption at rest for teacher files and reports: AES-256-GCM with a keyring of storage keys.

Why our own small format rather than Fernet: teacher files reach hundreds of MiB, and Fernet
seals a whole message in memory (plus base64). Files are sealed in 1 MiB chunks instead, the
STREAM construction: each chunk is AES-GCM with a nonce made of a random per-file prefix, the
chunk counter and a last-chunk flag, and the file header as associated data. Reordered, dropped,
truncated or appended chunks fail authentication, and memory stays at one chunk.

    file   = b"KDAE\\x01" | key id (8) | nonce prefix (7) | chunk* ; chunk = GCM(<= 1 MiB) + tag (16)
    report = {"kdaudit_sealed": "aes-256-gcm/v1", "kid", "nonce", "ct"} (JSON, in the reports table)

The key id (8 bytes of a hash of the key, never the key) names the key that sealed a thing, so
after a rotation (`storage_keys = NEW,OLD`) new writes use NEW and old files still open with
OLD; `kdaudit storage rotate` re-seals everything under NEW, after which OLD can go. Files
written before encryption was enabled (no magic) are read as they are.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kdaudit.core.errors import KdauditError
from kdaudit.core.settings import Settings

MAGIC = b"KDAE\x01"
CHUNK = 1 << 20
_TAG = 16
_HEADER = len(MAGIC) + 8 + 7
SEALED_JSON = "aes-256-gcm/v1"


class StorageKeyError(KdauditError):
    """A storage key is missing, malformed, or does not open a stored file (context: storage)."""

    context = "storage"


def new_key() -> str:
    """A fresh storage key: 32 random bytes, base64url (what `kdaudit storage new-key` prints)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"kdaudit-storage-key-id\0" + key).digest()[:8]


def _parse_key(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise StorageKeyError("a storage key must be 32 bytes, base64url-encoded (`kdaudit storage new-key`)")
    return raw


class Keyring:
    """Storage keys, newest first: the first seals, any of them opens (chosen by key id)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise StorageKeyError("no storage key configured")
        self.keys = {key_id(k): AESGCM(k) for k in keys}
        self.primary_id = key_id(keys[0])

    def _aead(self, kid: bytes) -> AESGCM:
        aead = self.keys.get(kid)
        if aead is None:
            raise StorageKeyError(
                f"stored data was sealed with storage key {kid.hex()}, which is not among the configured keys "
                "(storage_keys / storage_key_file); add it back after the new key"
            )
        return aead

    # ------------------------------------------------------------------ files

    def seal_stream(self, src: BinaryIO, dst: BinaryIO) -> None:
        prefix = os.urandom(7)
        header = MAGIC + self.primary_id + prefix
        dst.write(header)
        aead = self.keys[self.primary_id]
        counter = 0
        block = src.read(CHUNK)
        while True:
            following = src.read(CHUNK) if block else b""
            last = not following
            nonce = prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
            dst.write(aead.encrypt(nonce, block, header))
            if last:
                return
            block, counter = following, counter + 1

    def open_stream(self, src: BinaryIO) -> Iterator[bytes]:
        """Plaintext chunks of a sealed file (or the bytes as they are, if it was never sealed)."""
        header = src.read(_HEADER)
        if not header.startswith(MAGIC) or len(header) < _HEADER:
            yield header
            while block := src.read(CHUNK):
                yield block
            return
        aead, prefix = self._aead(header[5:13]), header[13:]
        counter = 0
        block = src.read(CHUNK + _TAG)
        while True:
            following = src.read(CHUNK + _TAG)
            last = not following
            nonce = prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
            try:
                yield aead.decrypt(nonce, block, header)
            except InvalidTag:
                raise StorageKeyError("a stored file failed authentication (tampered, truncated or wrong key)") from None
            if last:
                return
            block, counter = following, counter + 1

    # ------------------------------------------------------------------ JSON (reports)

    def seal_json(self, doc: dict[str, Any], context: str) -> dict[str, Any]:
        """`doc` sealed for the row named `context` (a report cannot be moved to another audit)."""
        nonce = os.urandom(12)
        ct = self.keys[self.primary_id].encrypt(nonce, json.dumps(doc, separators=(",", ":")).encode(), context.encode())
        b64 = base64.b64encode
        return {"kdaudit_sealed": SEALED_JSON, "kid": self.primary_id.hex(), "nonce": b64(nonce).decode(),
                "ct": b64(ct).decode()}  # fmt: skip

    def open_json(self, doc: dict[str, Any], context: str) -> dict[str, Any]:
        if not is_sealed_json(doc):
            return doc
        try:
            aead = self._aead(bytes.fromhex(str(doc["kid"])))
            plain = aead.decrypt(base64.b64decode(doc["nonce"]), base64.b64decode(doc["ct"]), context.encode())
        except (InvalidTag, ValueError):
            raise StorageKeyError("a stored report failed authentication (tampered or wrong key)") from None
        return json.loads(plain)


def is_sealed_json(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kdaudit_sealed") == SEALED_JSON


def is_sealed_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def sealed_key_id(path: Path) -> str | None:
    with open(path, "rb") as f:
        header = f.read(_HEADER)
    return header[5:13].hex() if header.startswith(MAGIC) and len(header) == _HEADER else None


# ---------------------------------------------------------------------- keys from settings

_lock = threading.Lock()
_cache: dict[tuple[str, str], Keyring] = {}


def default_key_file(settings: Settings) -> Path:
    return settings.storage_key_file or settings.data_dir / "storage.key"


def keyring(settings: Settings) -> Keyring | None:
    """The configured keyring; None when `encrypt_at_rest` is off. With no key configured, the
    key file (default `<data_dir>/storage.key`) is created 0600 with a fresh key."""
    if not settings.encrypt_at_rest:
        return None
    env = settings.storage_keys.get_secret_value() if settings.storage_keys else ""
    path = default_key_file(settings)
    cache_key = (hashlib.sha256(env.encode()).hexdigest(), str(path))
    with _lock:
        ring = _cache.get(cache_key)
        if ring is None:
            text = env if env.strip() else _read_or_create(path)
            parts = [p for p in text.replace("\n", ",").split(",") if p.strip() and not p.strip().startswith("#")]
            ring = Keyring([_parse_key(p) for p in parts])
            _cache[cache_key] = ring
        return ring


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def _read_or_create(path: Path) -> str:
    path = Path(path).expanduser()
    try:
        return path.read_text()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".storage-key-")  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_key() + "\n")
        try:
            os.link(tmp, path)  # fails if another process created it first: then use theirs
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return path.read_text()
