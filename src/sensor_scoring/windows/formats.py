"""The landed-window files: their columns and dtypes, every Stream Analytics serialisation, and reading folders.

A corrupt file (truncated, garbage) is set aside whole and the hour goes on; a file that parses but breaks the
contract's structure (a column missing, or unreadable as its type) stops the run, naming file and column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sensor_scoring.contracts import SOURCE_COLUMN, WINDOW_COLUMNS
from sensor_scoring.storage import Storage, parquet_frame

#: Column -> pandas dtype of a landed window (the columns of ``contracts.WINDOW_SCHEMA``, in its order).
WINDOW_DTYPES: dict[str, str] = {
    "device_id": "string",
    "tag": "string",
    "window_end": "datetime64[ns, UTC]",
    "value_avg": "float64",
    "value_min": "float64",
    "value_max": "float64",
    "value_std": "float64",
    "reading_count": "int64",
}
#: Stream Analytics writes a numeric schema hash in front of its file names; ours is fixed per column set.
SCHEMA_HASH = str(int(hashlib.sha256(",".join(WINDOW_COLUMNS).encode()).hexdigest()[:8], 16))
READABLE_SUFFIXES = (".json", ".csv", ".parquet")


class WindowFileError(ValueError):
    """A landed file that cannot be read as windows; the message names the file (and column)."""


class CorruptFileError(WindowFileError):
    """The file is not valid in its serialisation (truncated, garbage): quarantined whole, the hour goes on."""


class WindowSchemaError(WindowFileError):
    """The file parses but its structure breaks the contract (a required column missing, or of a type that
    cannot be read): the input is wrong, not some rows, so the run fails naming the file and the column."""


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Cast to the contract's dtypes (window_end in UTC nanoseconds); columns beyond it are kept."""
    out = frame.copy()
    for column, dtype in WINDOW_DTYPES.items():
        if column == "window_end":
            out[column] = pd.to_datetime(out[column], utc=True).astype(dtype)
        else:
            out[column] = out[column].astype(dtype)
    return out


def to_asa_json_lines(windows: pd.DataFrame) -> bytes:
    """Line-separated JSON as Stream Analytics writes it (ISO timestamps with 7 fractional digits, Z)."""
    records = windows[WINDOW_COLUMNS].copy()
    records["window_end"] = records["window_end"].dt.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
    records["reading_count"] = records["reading_count"].astype("int64")
    lines = (json.dumps(rec, allow_nan=False) for rec in _records(records))
    return ("\n".join(lines) + "\n").encode()


def _records(frame: pd.DataFrame) -> Iterable[dict[str, object]]:
    columns = list(frame.columns)
    for row in frame.itertuples(index=False, name=None):
        yield {col: (val.item() if isinstance(val, np.generic) else val) for col, val in zip(columns, row)}


def parse_window_file(name: str, data: bytes) -> pd.DataFrame:
    """Read one landed file in any Stream Analytics serialisation into the contract's columns.

    Line-separated JSON, a JSON array, CSV (with header) and Parquet are understood. A missing column or
    a value that cannot be cast raises ``WindowFileError`` naming the file and the column.
    """
    lower = name.lower()
    if not lower.endswith(READABLE_SUFFIXES):
        raise WindowFileError(f"{name}: unknown serialisation (expected {', '.join(READABLE_SUFFIXES)})")
    try:
        frame = _parse(lower, data)
    except Exception as exc:  # every parser has its own error types; the file name is what matters
        raise CorruptFileError(f"{name}: cannot be parsed: {type(exc).__name__}: {exc}") from exc
    if frame.empty and not len(frame.columns):
        frame = pd.DataFrame(columns=WINDOW_COLUMNS)
    missing = [col for col in WINDOW_COLUMNS if col not in frame.columns]
    if missing:
        raise WindowSchemaError(f"{name}: missing required column(s) {', '.join(missing)}")
    frame = frame[WINDOW_COLUMNS].copy()
    for column, dtype in WINDOW_DTYPES.items():
        try:
            frame[column] = _cast(frame[column], column, dtype)
        except Exception as exc:
            raise WindowSchemaError(f"{name}: column {column} cannot be read as {dtype}: {exc}") from exc
    frame[SOURCE_COLUMN] = name
    return frame


def _parse(lower_name: str, data: bytes) -> pd.DataFrame:
    """The file's rows as parsed, before any cast; a blob created before its first write is no windows."""
    if not data.strip():
        return pd.DataFrame(columns=WINDOW_COLUMNS)
    if lower_name.endswith(".parquet"):
        return parquet_frame(data)
    if lower_name.endswith(".csv"):
        _check_csv_rows(data)
        return pd.read_csv(io.BytesIO(data), dtype={"device_id": "string", "tag": "string"})
    text = data.decode("utf-8").strip()
    if text.startswith("["):
        return pd.DataFrame(json.loads(text))
    # pandas' C JSON reader: about twice as fast as json.loads per line on a 600k-window hour
    return pd.read_json(io.StringIO(text), lines=True, dtype=False)


def _cast(values: pd.Series, column: str, dtype: str) -> pd.Series:
    if column == "window_end":
        return pd.to_datetime(values, utc=True, format="ISO8601").astype(dtype)
    if column == "reading_count":
        numbers = pd.to_numeric(values, errors="raise")
        # A missing or fractional count is kept as float so that validation quarantines the row.
        whole = bool(numbers.notna().all() and (numbers % 1 == 0).all())
        return numbers.astype("int64" if whole else "float64")
    if dtype == "float64":
        return pd.to_numeric(values, errors="raise").astype(dtype)
    return values.astype(dtype)


def _check_csv_rows(data: bytes) -> None:
    """A truncated CSV still parses (the cut row gets nulls); a row with fewer fields than the header gives it away."""
    rows = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(rows, None)
    if header is None:
        return
    for number, row in enumerate(rows, start=2):
        if row and len(row) != len(header):
            raise ValueError(f"line {number} has {len(row)} field(s), the header has {len(header)} (truncated?)")


@dataclass(frozen=True)
class UnreadableFile:
    """A landed file set aside whole because it cannot be parsed."""

    file: str
    bytes: int
    sha256: str
    error: str


@dataclass
class LandedFiles:
    """What folders hold: the windows read, the files read, the files set aside whole and the empty ones."""

    folders: list[str]
    windows: pd.DataFrame
    files: list[str]
    corrupt: list[UnreadableFile]
    empty: list[str]


def read_landed_files(storage: Storage, container: str, folders: Iterable[str]) -> LandedFiles:
    """Every window in the folders, with its source file; a corrupt file is set aside (name, size, error).

    A file whose structure breaks the contract (``WindowSchemaError``) still raises: the run must fail.
    """
    folders = list(folders)
    frames, files, corrupt, empty = [], [], [], []
    for folder in folders:
        for info in storage.list(container, folder.rstrip("/") + "/"):
            if not info.name.lower().endswith(READABLE_SUFFIXES):
                continue
            data = storage.read_bytes(container, info.name)
            files.append(info.name)
            try:
                frame = parse_window_file(info.name, data)
            except CorruptFileError as exc:
                corrupt.append(UnreadableFile(info.name, len(data), hashlib.sha256(data).hexdigest(), str(exc)))
                continue
            if frame.empty:
                empty.append(info.name)
            frames.append(frame)
    windows = pd.concat(frames, ignore_index=True) if frames else empty_windows()
    return LandedFiles(folders=folders, windows=windows, files=files, corrupt=corrupt, empty=empty)


def read_landed(storage: Storage, container: str, folders: Iterable[str]) -> tuple[pd.DataFrame, list[str]]:
    """All windows in the given folders and the files read; the first corrupt file raises ``CorruptFileError``."""
    read = read_landed_files(storage, container, folders)
    if read.corrupt:
        raise CorruptFileError(read.corrupt[0].error)
    return read.windows, read.files


def empty_windows() -> pd.DataFrame:
    """No windows, in the contract's dtypes (with the source column)."""
    empty = pd.DataFrame({col: pd.Series(dtype=dtype) for col, dtype in WINDOW_DTYPES.items()})
    empty[SOURCE_COLUMN] = pd.Series(dtype="string")
    return empty
