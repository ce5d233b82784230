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
#: Rows of one Parquet row group, at most, in every file the pipeline writes (pyarrow's default is 1Mi). A reader
#: of a few rows (the sensor page) fetches only the row groups whose min/max statistics can hold them: with rows
#: in key order, 64Ki rows of an hour's predictions are ~1,100 sensors, about 0.8 MB of the columns the page reads,
#: while the footer of 6M rows stays ~160 kB (docs/benchmarks.md, the sensor page).
ROW_GROUP_ROWS = 65_536


@dataclass(frozen=True)
class BlobInfo:
    """What a listing tells about one blob."""

    name: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class BlobStat:
    """A blob's length and a token of its content, taken together: ranged reads pinned to ``version`` never mix
    the bytes of two writes (a commit replacing the hour while a page reads it)."""

    size: int
    #: The ETag on blob storage (what :meth:`Storage.generation` gives); a directory's file identity (inode,
    #: modification time, size: every write renames a new file into place).
    version: str


class Storage(Protocol):
    """The operations the pipeline needs; nothing else is used, so a new backend stays small."""

    def read_bytes(self, container: str, path: str) -> bytes: ...

    def read_many(self, container: str, paths: Sequence[str], concurrency: int = READ_CONCURRENCY) -> list[bytes]:
        """The bytes of many blobs, in the order of ``paths``, at most ``concurrency`` requests in flight; a
        missing one raises ``FileNotFoundError`` as :meth:`read_bytes` does. What a folder of many small
        landed files is read through: per blob it costs one request and little else."""
        ...

    def stat(self, container: str, path: str) -> BlobStat:
        """The blob's size and version, by one request that reads none of its bytes; a missing one raises
        ``FileNotFoundError`` as :meth:`read_bytes` does."""
        ...

    def read_range(self, container: str, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        """``length`` bytes of the blob from ``offset``, fewer where it ends first (none from its end on), by one
        request. With ``version`` (of :meth:`stat`), only from the blob still at that version, else
        ``GenerationMismatch``: a reader of a few ranges of a large blob (``storage.ranged.BlobFile``, the
        sensor page's footer and row groups) never mixes two writes. A missing blob raises ``FileNotFoundError``."""
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


def check_range(offset: int, length: int) -> None:
    """A byte range every implementation refuses alike: no negative offset or length."""
    if offset < 0 or length < 0:
        raise ValueError(f"a byte range needs a non-negative offset and length, got offset={offset}, length={length}")


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
    """A frame as one Parquet file's bytes (cast to ``schema`` when given), without the pandas index; row groups
    of at most ``ROW_GROUP_ROWS`` rows, so a reader of some rows can skip the others' (``storage.ranged``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS)
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
