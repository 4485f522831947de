"""Teacher files sealed at rest: how the API stores an upload and how a worker gets it back.

The content address stays the sha256 of the *plaintext* (what the owner can compute and what
the report names), so identical uploads are still stored once; the bytes under that name are
sealed with the storage keyring (`kdaudit.store.crypto`). A worker never gets a plaintext copy
in the store: `plaintext` decrypts into a private temporary folder (0700, file 0600) outside
it and removes the folder when the `with` block ends, i.e. as soon as the teacher is loaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdaudit.store.crypto import Keyring
from kdaudit.store.files import FileStore


def store_upload(files: FileStore, tmp: Path, sha256: str, ring: Keyring | None) -> Path:
    """Move the validated plaintext `tmp` into the store under `sha256`, sealed when `ring` is
    set; the plaintext temp file is removed either way."""
    if ring is None or files.exists(sha256):
        return files.adopt(tmp, sha256)
    sealed = files.new_temp(suffix=".sealed")
    try:
        with open(tmp, "rb") as src, open(sealed, "wb") as dst:
            ring.seal_stream(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        return files.adopt(sealed, sha256)
    finally:
        sealed.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def reseal(files: FileStore, sha256: str, ring: Keyring) -> bool:
    """Re-seal one stored file under the keyring's newest key (rotation); True if rewritten."""
    from kdaudit.store.crypto import sealed_key_id

    path = files.path_for(sha256)
    if sealed_key_id(path) == ring.primary_id.hex():
        return False
    out = files.new_temp(suffix=".sealed")
    try:
        with open(path, "rb") as src, open(out, "wb") as dst:
            plain = _Chunks(ring.open_stream(src))
            ring.seal_stream(plain, dst)  # type: ignore[arg-type]
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(out, path)
    finally:
        out.unlink(missing_ok=True)
    return True


class _Chunks:
    """A read()-able view of an iterator of byte chunks (for streaming re-sealing)."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self.it, self.buf = it, b""

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            nxt = next(self.it, None)
            if nxt is None:
                break
            self.buf += nxt
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


@contextmanager
def plaintext(files: FileStore, sha256: str, ring: Keyring | None) -> Iterator[Path]:
    """A readable plaintext path of a stored teacher file for the duration of the block.

    A file that was never sealed is handed out where it is; a sealed one is decrypted into a
    private temporary folder that is removed when the block exits (also on errors)."""
    from kdaudit.store.crypto import MAGIC

    path = files.path_for(sha256)
    with open(path, "rb") as f:
        sealed = f.read(len(MAGIC)) == MAGIC
    if not sealed:
        yield path
        return
    if ring is None:
        from kdaudit.store.crypto import StorageKeyError

        raise StorageKeyError("the teacher file is sealed but encrypt_at_rest is off: no storage key to open it")
    folder = tempfile.mkdtemp(prefix="kdaudit-teacher-")  # 0700
    try:
        out = Path(folder) / sha256
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as dst, open(path, "rb") as src:
            for block in ring.open_stream(src):
                dst.write(block)
        yield out
    finally:
        shutil.rmtree(folder, ignore_errors=True)
