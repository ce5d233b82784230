"""Storage in a local directory: one folder per container, for laptops without Node and for unit tests.

Writes are atomic per file, as a committed block blob is: a file is written in the root's own ``.tmp`` folder and
renamed over its target. The temporary files and the locks of conditional writes live outside every container
(``.tmp`` and ``.locks`` cannot be container names), so every file in a container is a blob, whatever its name:
a landed ``.tmp-...`` or dot-named file is listed and read like any other.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from stat import S_ISREG

from sensor_scoring.storage.base import (
    READ_CONCURRENCY,
    BlobInfo,
    BlobStat,
    GenerationMismatch,
    UnsafePathError,
    check_range,
    safe_path,
)

#: The root's folders of temporary files and of lock files: dot names, so never a container's.
TMP_DIR = ".tmp"
LOCK_DIR = ".locks"


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

    def read_many(self, container: str, paths: Sequence[str], concurrency: int = READ_CONCURRENCY) -> list[bytes]:
        """One after the other: a local file costs a few microseconds, so threads would only add their own."""
        return [self.read_bytes(container, path) for path in paths]

    def stat(self, container: str, path: str) -> BlobStat:
        info = self._path(container, path).stat()
        if not S_ISREG(info.st_mode):
            raise FileNotFoundError(f"{container}/{path} is a folder, not a blob")
        return BlobStat(size=info.st_size, version=_file_version(info))

    def read_range(self, container: str, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        """By ``pread`` on a descriptor whose file is the one checked against ``version``: a write renames a new
        file into place, so the open file is the version read whatever happens meanwhile."""
        check_range(offset, length)
        with open(self._path(container, path), "rb") as handle:
            current = _file_version(os.fstat(handle.fileno()))
            if version is not None and current != version:
                raise GenerationMismatch(f"{container}/{path} was written since version {version}: read it again")
            chunks, end = [], offset + length
            while offset < end:
                chunk = os.pread(handle.fileno(), end - offset, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
            return b"".join(chunks)

    def _tmp(self) -> tuple[int, str]:
        """A new temporary file outside every container, on the root's filesystem (renamed into place)."""
        folder = self.root / TMP_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=folder, prefix="write-")

    def write_bytes(self, container: str, path: str, data: bytes) -> None:
        target = self._path(container, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = self._tmp()
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
        fd, tmp = self._tmp()
        os.close(fd)
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def download_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        shutil.copyfile(self._path(container, path), local_path)

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]:
        safe_path(container, prefix, prefix=True)
        base = self.root / container
        start = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base  # walk only below the prefix's folder
        if not start.is_dir():
            return []
        found = []
        for file in start.rglob("*"):
            if not file.is_file():
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

    def generation(self, container: str, path: str) -> str | None:
        """The content's sha256 (a directory has no ETag; the content is what a writer read)."""
        target = self._path(container, path)
        try:
            return hashlib.sha256(target.read_bytes()).hexdigest()
        except FileNotFoundError:
            return None

    def write_bytes_if(self, container: str, path: str, data: bytes, generation: str | None) -> None:
        """Check and write under an exclusive lock on the blob's lock file (``flock``: every writer of this
        directory through this method takes it), so the check and the rename are one step."""
        self._path(container, path)
        locks = self.root / LOCK_DIR / container
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / hashlib.sha256(path.encode()).hexdigest(), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.generation(container, path)
                if current != generation:
                    raise GenerationMismatch(
                        f"{container}/{path} is no longer at generation {generation or '(absent)'} "
                        f"(now {current or 'absent'}): written by someone else meanwhile"
                    )
                self.write_bytes(container, path, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _file_version(info: os.stat_result) -> str:
    """A file's identity: every write renames a new file (a new inode) into place, so this changes with it. Not the
    content hash of :meth:`LocalStorage.generation`: a version is taken per ranged read and must cost no read."""
    return f"{info.st_dev}:{info.st_ino}:{info.st_mtime_ns}:{info.st_size}"
