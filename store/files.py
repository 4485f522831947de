"""Content-addressed file store for teacher files: `<root>/ab/cd/<sha256>`.

Files are written to a temporary name inside the root and renamed into place, so a
reader never sees a half-written file and identical uploads are stored once.

Secrets (a remote teacher's headers and full URL, store/remote_teachers.py) live beside them
in `<root>/secrets/<name>.json`: folder 0700, files 0600, written the same atomic way. The
root is the volume the workers already share with the API for teacher files.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{64}$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    @property
    def tmp_dir(self) -> Path:
        d = self.root / ".tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def path_for(self, sha256: str) -> Path:
        if not _SHA.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def new_temp(self, suffix: str = "") -> Path:
        """A fresh empty file inside the store (same filesystem, so `adopt` is a rename)."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=suffix)
        os.close(fd)
        return Path(name)

    def adopt(self, tmp: Path, sha256: str) -> Path:
        """Move `tmp` (whose content hashes to `sha256`) into place; drop it if already stored."""
        dest = self.path_for(sha256)
        if dest.is_file():
            tmp.unlink(missing_ok=True)
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        return dest

    def put_bytes(self, data: bytes) -> tuple[str, Path]:
        sha = hashlib.sha256(data).hexdigest()
        tmp = self.new_temp()
        tmp.write_bytes(data)
        return sha, self.adopt(tmp, sha)

    # ------------------------------------------------------------------ secrets

    @property
    def secrets_dir(self) -> Path:
        d = self.root / "secrets"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)  # mkdir's mode is masked by the umask
        return d

    def secret_path(self, name: str) -> Path:
        if not _SECRET_NAME.match(name):
            raise ValueError(f"not a valid secret name: {name!r}")
        return self.root / "secrets" / f"{name}.json"

    def put_secret(self, name: str, data: bytes) -> Path:
        """Write `data` readable by this user only (0600), atomically (replaces an older one)."""
        dest = self.secret_path(name)
        fd, tmp = tempfile.mkstemp(dir=self.secrets_dir, prefix=".tmp-")  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def read_secret(self, name: str) -> bytes | None:
        try:
            return self.secret_path(name).read_bytes()
        except FileNotFoundError:
            return None

    def delete_secret(self, name: str) -> None:
        self.secret_path(name).unlink(missing_ok=True)
