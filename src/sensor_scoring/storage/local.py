"""Storage in a local directory: one folder per container, for laptops without Node and for unit tests.

Writes are atomic per file, as a committed block blob is: a file is written beside its target and renamed over it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from sensor_scoring.storage.base import BlobInfo, UnsafePathError, safe_path


class LocalStorage:
    """A directory per container under ``root``: for laptops without Node and for unit tests."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, container: str, path: str) -> Path:
        safe_path(container, path)
        base = (self.root / container).resolve()
        full = (base / path).resolve()
        if not full.is_relative_to(base):  # a symlink inside the root that points out of it
            raise UnsafePathError(f"path {path!r} escapes container {container!r} of {self.root}")
        return full

    def read_bytes(self, container: str, path: str) -> bytes:
        return self._path(container, path).read_bytes()

    def write_bytes(self, container: str, path: str, data: bytes) -> None:
        target = self._path(container, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def upload_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        target = self._path(container, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]:
        safe_path(container, prefix, prefix=True)
        base = self.root / container
        start = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base  # walk only below the prefix's folder
        if not start.is_dir():
            return []
        found = []
        for file in start.rglob("*"):
            if not file.is_file() or file.name.startswith(".tmp-"):
                continue
            name = file.relative_to(base).as_posix()
            if name.startswith(prefix):
                stat = file.stat()
                found.append(BlobInfo(name, stat.st_size, datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc)))
        return sorted(found, key=lambda info: info.name)

    def exists(self, container: str, path: str) -> bool:
        return self._path(container, path).is_file()

    def delete_prefix(self, container: str, prefix: str) -> int:
        blobs = self.list(container, prefix)
        for info in blobs:
            self._path(container, info.name).unlink(missing_ok=True)
        return len(blobs)

    def describe(self) -> str:
        return f"local directory {self.root}"
