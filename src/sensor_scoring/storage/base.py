"""What every storage implementation shares: the :class:`Storage` protocol, ``az://`` URIs and Parquet bytes.

Every other module speaks in (container, path) pairs or ``az://container/path`` URIs, so the same code runs
against Azure, Azurite and a plain folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

URI_SCHEME = "az://"
#: Requests in flight of one :meth:`Storage.read_many`: small blobs are latency-bound, so a few overlap the
#: service's and our own work; bounded, so an hour of 5,000 files never opens 5,000 connections.
READ_CONCURRENCY = 8


@dataclass(frozen=True)
class BlobInfo:
    """What a listing tells about one blob."""

    name: str
    size: int
    last_modified: datetime


class Storage(Protocol):
    """The operations the pipeline needs; nothing else is used, so a new backend stays small."""

    def read_bytes(self, container: str, path: str) -> bytes: ...

    def read_many(self, container: str, paths: Sequence[str], concurrency: int = READ_CONCURRENCY) -> list[bytes]:
        """The bytes of many blobs, in the order of ``paths``, at most ``concurrency`` requests in flight; a
        missing one raises ``FileNotFoundError`` as :meth:`read_bytes` does. What a folder of many small
        landed files is read through: per blob it costs one request and little else."""
        ...

    def write_bytes(self, container: str, path: str, data: bytes) -> None: ...

    def upload_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None: ...

    def download_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        """Copy a blob into a local file chunk by chunk, never whole in memory; a missing one raises
        ``FileNotFoundError`` as :meth:`read_bytes` does. What a reader of a large partition opens and reads
        in pieces (``iter_parquet``)."""
        ...

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]: ...

    def exists(self, container: str, path: str) -> bool: ...

    def delete_prefix(self, container: str, prefix: str) -> int: ...

    def describe(self) -> str: ...

    def generation(self, container: str, path: str) -> str | None:
        """An opaque token that changes whenever the blob is written (its ETag); None if it does not exist."""
        ...

    def write_bytes_if(self, container: str, path: str, data: bytes, generation: str | None) -> None:
        """Write only if the blob is still at ``generation`` (None: only if it does not exist), atomically with
        the check; else ``GenerationMismatch``. What fences a commit against a run that committed in between."""
        ...


class GenerationMismatch(RuntimeError):
    """A conditional write found the blob at another generation than the one the writer read."""


class UnsafePathError(ValueError):
    """A container or blob name that could resolve outside its container (``..``, a leading ``/``, ...)."""


#: Azure's container names: 3-63 lowercase letters, digits and dashes, starting and ending with a letter or digit.
_CONTAINER = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


def safe_path(container: str, path: str, *, prefix: bool = False) -> str:
    """``path`` if it names a blob inside ``container`` on every storage (a directory resolves ``..`` and an HTTP
    stack may normalise dot segments), else ``UnsafePathError``. A listing ``prefix`` may be empty or end in ``/``.

    Every implementation calls this first, so no parameter that reaches a path can leave its container.
    """
    if not _CONTAINER.fullmatch(container):
        raise UnsafePathError(f"container {container!r} is not a container name (3-63 of a-z, 0-9, -)")
    if prefix and not path:
        return path
    segments = path.split("/")
    if prefix and len(segments) > 1 and segments[-1] == "":
        segments = segments[:-1]
    bad = (
        not path
        or "\\" in path
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in path)
        or any(seg in ("", ".", "..") for seg in segments)
    )
    if bad:
        raise UnsafePathError(
            f"blob path {path!r} in container {container!r} is not a plain relative name "
            "(no empty, '.' or '..' segment, no leading '/', backslash or control character)"
        )
    return path


def make_uri(container: str, path: str) -> str:
    """``az://container/path``: the form shard specs and XCom carry (no account, no secret)."""
    return f"{URI_SCHEME}{container}/{path}"


def parse_uri(uri: str) -> tuple[str, str]:
    """Split an ``az://container/path`` URI; a clear error for anything else."""
    if not uri.startswith(URI_SCHEME):
        raise ValueError(f"expected a URI like az://container/path, got {uri!r}")
    container, _, path = uri[len(URI_SCHEME) :].partition("/")
    if not container or not path:
        raise ValueError(f"URI {uri!r} needs both a container and a path")
    return container, path


# --- Parquet in and out of blobs: one encoding for staging, partitions, model indexes and labels. ---


def parquet_bytes(frame: pd.DataFrame, schema: pa.Schema | None = None) -> bytes:
    """A frame as one Parquet file's bytes (cast to ``schema`` when given), without the pandas index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), sink)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def parquet_frame(data: bytes) -> pd.DataFrame:
    """The frame in one Parquet file's bytes."""
    import io

    import pyarrow.parquet as pq

    frame: pd.DataFrame = pq.read_table(io.BytesIO(data)).to_pandas()
    return frame


def read_parquet(storage: Storage, container: str, path: str) -> pd.DataFrame:
    """The frame of one Parquet blob."""
    return parquet_frame(storage.read_bytes(container, path))


def iter_parquet(
    storage: Storage, container: str, path: str, columns: Sequence[str] | None, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The rows of one Parquet blob, ``columns`` only (None: all), at most ``batch_rows`` at a time; nothing when
    the blob does not exist. The blob is first copied to a local temporary file (:meth:`Storage.download_file`),
    so neither its bytes nor its rows are ever whole in memory: a reader's peak is set by ``batch_rows`` and the
    file's row groups' compressed column chunks, not by the file."""
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="parquet-") as folder:
        local = Path(folder) / "blob.parquet"
        try:
            storage.download_file(container, path, local)
        except FileNotFoundError:
            return
        # pre_buffer (pyarrow's default) reads ahead the column chunks of every row group: the file again
        with pq.ParquetFile(local, pre_buffer=False) as file:
            yield from file.iter_batches(batch_size=batch_rows, columns=None if columns is None else list(columns))
