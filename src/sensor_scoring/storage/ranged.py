"""Reading a few parts of a large blob: a seekable read-only file over ranged reads, and the Parquet query on it.

An hour's predictions partition at 100k sensors is ~6M rows, hundreds of MB; the sensor page wants one sensor's
60 of them. Opened through :class:`BlobFile`, pyarrow reads the footer, prunes row groups by their min/max
statistics (the writers keep rows in key order in row groups of ``ROW_GROUP_ROWS``) and fetches only the column
chunks of the row groups that can hold the sensor: a few requests and about a MB, not the partition.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sensor_scoring.storage.base import BlobStat, GenerationMismatch, Storage

if TYPE_CHECKING:
    import pyarrow as pa

#: A read shorter than this fetches this much from where it starts (a page header, a small column chunk read
#: without pre-buffering): a request costs the same for a few bytes as for a quarter MB.
READ_AHEAD = 256 * 1024
#: The first read in the last TAIL bytes fetches all of them: a Parquet footer is read from the end (pyarrow asks
#: for 64 kB, then for the rest of a larger footer); 256 kB holds the footer of an hour of 100k sensors (~160 kB)
#: and the whole of a small file (a quarantine partition) in one request.
TAIL = 256 * 1024
#: Reads of one partition when a writer replaces it meanwhile (each attempt reads one version, never a mix).
ATTEMPTS = 3


class BlobFile(io.RawIOBase):
    """A read-only, seekable file over one blob, pinned to the version :meth:`Storage.stat` found when it was
    opened: every byte comes from that version or the read fails with ``GenerationMismatch`` (the blob was
    written since; open it again). What pyarrow reads through ``pa.PythonFile(BlobFile(...), mode="r")``.

    Bytes are fetched by :meth:`Storage.read_range` and few are kept: the tail (the footer) and the last
    read-ahead (``READ_AHEAD`` and ``TAIL`` unless given). ``requests`` and ``bytes_fetched`` say what it cost.
    """

    def __init__(
        self,
        storage: Storage,
        container: str,
        path: str,
        *,
        read_ahead: int | None = None,
        tail: int | None = None,
        stat: BlobStat | None = None,
    ) -> None:
        super().__init__()
        self._storage, self._container, self._path = storage, container, path
        self._stat = stat or storage.stat(container, path)
        self._read_ahead = max(READ_AHEAD if read_ahead is None else read_ahead, 0)
        self._tail_length = max(TAIL if tail is None else tail, 0)
        self._position = 0
        self._tail: tuple[int, bytes] | None = None
        self._ahead: tuple[int, bytes] | None = None
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes_fetched = 0

    @property
    def version(self) -> str:
        return self._stat.version

    def size(self) -> int:
        return self._stat.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._position + offset
        elif whence == io.SEEK_END:
            target = self._stat.size + offset
        else:
            raise ValueError(f"whence must be 0, 1 or 2, got {whence}")
        if target < 0:
            raise ValueError(f"cannot seek to {target}: before the start of the blob")
        self._position = target
        return target

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        with self._lock:
            start = self._position
            wanted = self._stat.size - start if size is None or size < 0 else min(size, self._stat.size - start)
            if wanted <= 0:
                return b""
            data = self._cached(start, wanted)
            if data is None:
                data = self._fetch_for(start, wanted)
            self._position = start + len(data)
            return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._tail = self._ahead = None  # the bytes kept go with the file
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed BlobFile")

    def _cached(self, start: int, length: int) -> bytes | None:
        for span in (self._tail, self._ahead):
            if span is not None and span[0] <= start and start + length <= span[0] + len(span[1]):
                offset = start - span[0]
                return span[1][offset : offset + length]
        return None

    def _fetch_for(self, start: int, length: int) -> bytes:
        """Fetch what a read of ``length`` bytes at ``start`` needs: the whole tail, a read-ahead, or exactly it
        (a long read: pyarrow's coalesced column chunks, read once)."""
        size = self._stat.size
        tail_start = max(size - self._tail_length, 0)
        if self._tail_length and start >= tail_start:
            self._tail = (tail_start, self._fetch(tail_start, size - tail_start))
            return self._cached(start, length) or b""
        if length < self._read_ahead:
            self._ahead = (start, self._fetch(start, min(self._read_ahead, size - start)))
            return self._ahead[1][:length]
        return self._fetch(start, length)

    def _fetch(self, start: int, length: int) -> bytes:
        data = self._storage.read_range(self._container, self._path, start, length, self._stat.version)
        self.requests += 1
        self.bytes_fetched += len(data)
        if len(data) != length:  # the version did not change, so its length cannot have
            raise GenerationMismatch(
                f"{self._container}/{self._path}: {len(data)} of {length} bytes at {start} arrived "
                f"from a blob of {self._stat.size} bytes"
            )
        return data


def read_parquet_rows(
    storage: Storage,
    container: str,
    path: str,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    *,
    attempts: int = ATTEMPTS,
) -> pa.Table | None:
    """The rows of one Parquet blob that match ``filters`` (pyarrow's filter forms), ``columns`` only; None when
    the blob does not exist. Read through a :class:`BlobFile`: the footer, then only the column chunks of the row
    groups whose statistics can match, so the cost follows the rows asked for, not the blob. A blob replaced
    while it is read (a commit of the hour) is read again from its new version, up to ``attempts`` times.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    for attempt in range(1, attempts + 1):
        try:
            file = BlobFile(storage, container, path)
        except FileNotFoundError:
            return None
        try:
            with file:
                wanted = None if columns is None else list(columns)
                table: pa.Table = pq.read_table(pa.PythonFile(file, mode="r"), columns=wanted, filters=filters)
                return table
        except (GenerationMismatch, FileNotFoundError):  # replaced or deleted since it was opened
            if attempt == attempts:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")
