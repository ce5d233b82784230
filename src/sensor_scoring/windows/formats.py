"""The landed-window files: their columns and types, every Stream Analytics serialisation, and reading folders.

Three levels of fault, each kept at its own level (docs/faults.md):

- a **file** that cannot be read (not UTF-8, garbage, truncated, a serialisation we do not know) is set aside
  whole with a reason (``contracts.FILE_REASONS``) and the hour goes on;
- a file that parses but lacks a contract column stops the run, naming file and column (the producer is wrong);
- a **row** whose value cannot be taken as its contract type (``contracts.READER_REASONS``) is kept as a
  rejected row with its reason and quarantined by the hour that owns it: it never fails the file or the hour.

The strict types (the contract of docs/architecture.md, "Landed windows"):

- ``device_id``, ``tag``: strings; an integer (a JSON integer such as ``123``, a Parquet or Avro integer column) is
  taken as its decimal text (``"123"``, ``"-7"``): an integer's decimal text is one unambiguous id, and Stream
  Analytics writes a key the devices sent as a JSON integer as a ``bigint``. A float (``123.0``, ``1e3``: which
  text would it be?), a boolean, an object or an array is ``wrong_type``; CSV cells are text and stay as they are
  (``123.0`` in a CSV is the id ``"123.0"``, as written);
- ``window_end``: an ISO 8601 text with ``Z`` or an offset, to 9 fractional digits, or a timestamp of the
  serialisation (Parquet, Avro; a time zone-less one is UTC); outside pandas' nanosecond range (1677-2262) or
  not a real date it is ``bad_timestamp``; a window must end on the minute exactly (any second or fraction
  is ``window_not_on_minute``), so the microsecond unit of the partitions never truncates a scored window
  (a rejected one is quarantined with its window_end floored to the microsecond);
- values: numbers (JSON ints and floats; bare ``NaN``/``Infinity`` tokens are the floats, left to validation);
  a string (``"NaN"``, ``"3"``) or a boolean is ``wrong_type``; floats are parsed correctly rounded
  (Python's ``float``, Arrow's readers), so the features are bit-exact the landed text;
- ``reading_count``: an integer (a float with no fraction, ``3.0``, is that integer; a fractional count is
  left to validation, ``reading_count_invalid``); a string or boolean is ``wrong_type``.

Files are recognised by their content (Parquet and Avro by their magic bytes, JSON by its first character,
CSV by a header naming the contract columns); the name does not decide. UTF-8 with or without byte-order mark.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sensor_scoring.contracts import (
    CORRUPT_FILE,
    NOT_UTF8,
    REASON_COLUMN,
    SOURCE_COLUMN,
    UNSUPPORTED_FORMAT,
    WINDOW_COLUMNS,
)
from sensor_scoring.storage import READ_CONCURRENCY, BlobInfo, Storage

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
#: Names whose serialisation is obvious; kept for callers that land files. Reading goes by content.
READABLE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".txt", ".csv", ".parquet", ".avro")
#: Concurrent listings and downloads of one hour's blobs (``Storage.read_many``): small files are latency-bound
#: (bench/bench_many_files.py); bounded, so an hour of 5,000 files never opens 5,000 connections.
DOWNLOAD_CONCURRENCY_DEFAULT = READ_CONCURRENCY
DOWNLOAD_CONCURRENCY = DOWNLOAD_CONCURRENCY_DEFAULT

_KEYS = ("device_id", "tag")
#: The types pyarrow's JSON reader must find (window_end is text, parsed by the one timestamp rule here).
_ARROW_JSON_SCHEMA = pa.schema(
    [(c, pa.string()) for c in ("device_id", "tag", "window_end")]
    + [(c, pa.float64()) for c in ("value_avg", "value_min", "value_max", "value_std")]
    + [("reading_count", pa.int64())]
)
_VALUES = ("value_avg", "value_min", "value_max", "value_std")
_BOM = b"\xef\xbb\xbf"
_LEADING_SPACE = re.compile(rb"\s*")
_BLANK_LINE = re.compile(rb"(?:\A|\n)[ \t\r\f\v]*(?:\n|\Z)")
_QUOTED_COLUMNS = tuple(f'"{col}"'.encode() for col in WINDOW_COLUMNS)
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})")
_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_INTEGER = re.compile(r"-?(0|[1-9]\d*)")


class WindowFileError(ValueError):
    """A landed file that cannot be read as windows; the message names the file (and column)."""


class CorruptFileError(WindowFileError):
    """The file cannot be read (not UTF-8, garbage, truncated, unknown serialisation): quarantined whole with
    ``reason``, the hour goes on."""

    def __init__(self, message: str, reason: str = CORRUPT_FILE) -> None:
        super().__init__(message)
        self.reason = reason


class WindowSchemaError(WindowFileError):
    """The file parses but its structure breaks the contract (a required column missing): the input is wrong,
    not some rows, so the run fails naming the file and the column."""


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


# --- one file: recognise, parse into raw columns, take each value as its type ----------------------------------


@dataclass
class ParsedFile:
    """One file's rows: the windows taken as their types, and the rows rejected with the reader's reason."""

    windows: pd.DataFrame
    rejected: pd.DataFrame

    @property
    def rows(self) -> int:
        return len(self.windows) + len(self.rejected)


_Columns = dict[str, Sequence[object]]


def sniff(data: bytes) -> str:
    """The serialisation of a file by its content: parquet, avro, json, csv, empty, or '' (unknown)."""
    if data.startswith(b"PAR1"):
        return "parquet"
    if data.startswith(b"Obj\x01"):
        return "avro"
    head = data[len(_BOM) :] if data.startswith(_BOM) else data
    head = head.lstrip()
    if not head:
        return "empty"
    if head[:1] in (b"{", b"["):
        return "json"
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    if "," in first and any(col in first for col in WINDOW_COLUMNS):
        return "csv"
    return ""


def read_window_file(name: str, data: bytes) -> ParsedFile:
    """Read one landed file, whatever its serialisation, into typed windows and rejected rows.

    ``CorruptFileError`` (with its reason) if the file cannot be read; ``WindowSchemaError`` if a column of the
    contract is missing.
    """
    kind = sniff(data)
    if kind == "empty":
        return ParsedFile(empty_windows(), empty_rejected())
    source: str | bytes = data
    if kind in ("json", "csv", ""):
        try:
            source = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CorruptFileError(f"{name}: not UTF-8 text: {exc}", NOT_UTF8) from exc
    if not kind:
        raise CorruptFileError(
            f"{name}: unsupported format (not JSON lines, a JSON array, CSV with a header, Parquet or Avro)",
            UNSUPPORTED_FORMAT,
        )
    if kind == "json":
        fast = _json_lines_columnar(data, name)
        if fast is not None:
            return fast
    try:
        columns = _PARSERS[kind](source)
    except Exception as exc:  # every parser has its own error types; the file name is what matters
        raise CorruptFileError(f"{name}: cannot be parsed as {kind}: {type(exc).__name__}: {exc}") from exc
    missing = [col for col in WINDOW_COLUMNS if col not in columns]
    if missing and _rows(columns):
        raise WindowSchemaError(f"{name}: missing required column(s) {', '.join(missing)}")
    return typed(columns, name)


def parse_window_file(name: str, data: bytes) -> pd.DataFrame:
    """The windows of one landed file that the reader takes as their types (rejected rows left out)."""
    return read_window_file(name, data).windows


def _rows(columns: _Columns) -> int:
    return max((len(v) for v in columns.values()), default=0)


def _json_columns(text: str) -> _Columns:
    """JSON lines or one JSON array of objects, as raw columns (a key absent from a row is null there).

    ``json.loads`` parses floats correctly rounded; pandas' ``read_json`` does not (without precise_float)."""
    stripped = text.strip()
    if stripped.startswith("["):
        records = json.loads(stripped)
        if not isinstance(records, list):
            raise ValueError("a JSON array of window objects expected")
    else:
        records = [json.loads(line) for line in stripped.splitlines() if line.strip()]
    if not all(isinstance(r, dict) for r in records):
        raise ValueError("every row must be a JSON object")
    names = list(dict.fromkeys(k for r in records for k in r))
    return {col: [r.get(col) for r in records] for col in names}


def _json_lines_columnar(data: bytes | str, name: str | list[str]) -> ParsedFile | None:
    """One JSON-lines file through pyarrow's columnar reader (:func:`_json_lines_table`), or None."""
    table = _json_lines_table(data.encode() if isinstance(data, str) else data)
    return None if table is None else _table_windows(table, name)


def _json_lines_table(data: bytes) -> pa.Table | None:
    """JSON lines through pyarrow's reader with the contract's types: columnar, about twice as fast as
    ``json.loads`` per line, and exact (Arrow parses floats correctly rounded). It refuses a value of another
    JSON type (a float, boolean or mixed type for a key, a string or boolean for a value, ``3.0`` for a count;
    integer keys are taken, :func:`_read_json_lines`), so then, and when a
    column is absent, a line holds other than one object, or the text is not JSON lines, None: the row-wise
    reader decides, row by row. Reads the bytes in place (no decoded copy, no Python string per line)."""

    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    start = _LEADING_SPACE.match(body).end()  # type: ignore[union-attr]  # \s* matches anywhere
    if body[start : start + 1] != b"{":
        return None  # an array, or not JSON
    if not all(quoted in body for quoted in _QUOTED_COLUMNS):
        return None  # a file that may lack a column: read alone, so that the error names it
    table = _read_json_lines(body)
    if table is None:
        return None
    rows = table.num_rows
    if not rows or rows != _object_lines(body) or any(table.column(c).null_count == rows for c in WINDOW_COLUMNS):
        return None  # an absent column (a structural error), an empty file, or a line of two objects
    counts = table.column("reading_count").to_numpy(zero_copy_only=False).astype("float64")
    if (np.abs(counts[~np.isnan(counts)]) > 2**53).any():
        return None  # not exact as a float: the row-wise reader rejects the row
    return table


def _read_json_lines(body: bytes) -> pa.Table | None:
    """pyarrow's read of JSON lines with the contract's types, or None where it refuses a value. A key column whose
    every value is a JSON integer (the ids of devices that send numbers) is read as integers and cast to their
    decimal text, the module's rule, so such files stay on the columnar path; a file mixing texts and numbers in a
    key, or with a float or boolean key, is left to the row-wise reader."""
    import pyarrow.compute as pc
    import pyarrow.json as pj

    schema = _ARROW_JSON_SCHEMA
    while True:
        options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        try:
            table = pj.read_json(pa.BufferReader(body), parse_options=options)
            break
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            numeric = [
                key
                for key in _KEYS
                if f"Column(/{key}) changed from string to number" in str(exc) and schema.field(key).type == pa.string()
            ]
            if not numeric:
                return None
            schema = schema.set(schema.get_field_index(numeric[0]), pa.field(numeric[0], pa.int64()))
    for key in _KEYS:
        if table.schema.field(key).type != pa.string():
            table = table.set_column(table.schema.get_field_index(key), key, pc.cast(table.column(key), pa.string()))
    return table


def _object_lines(body: bytes) -> int:
    """Lines holding anything but whitespace: the objects a JSON-lines file must hold, one per line."""
    end = len(body) - 1 if body.endswith(b"\n") else len(body)  # a final newline ends the last line
    if _BLANK_LINE.search(body, 0, end) is None:
        return body.count(b"\n") + (0 if body.endswith(b"\n") else 1)  # the usual file: counted, not split
    return sum(1 for line in body.splitlines() if line.strip())


def _table_windows(table: pa.Table, name: str | list[str] | pd.api.extensions.ExtensionArray) -> ParsedFile:
    """The typed windows and rejected rows of a table :func:`_json_lines_table` took; ``name`` the source file of
    every row, or one per row."""
    counts = table.column("reading_count").to_numpy(zero_copy_only=False).astype("float64")
    window_end, joined = _distinct_timestamps(table.column("window_end"))
    frame = pd.DataFrame(
        {
            # Arrow's strings stay Arrow's (the "string" dtype is Arrow-backed): no Python object per key
            "device_id": pd.array(table.column("device_id"), dtype="string"),
            "tag": pd.array(table.column("tag"), dtype="string"),
            "window_end": window_end,
            **{col: table.column(col).to_numpy(zero_copy_only=False).astype("float64") for col in _VALUES},
            "reading_count": counts,
        }
    )
    return _split(frame, joined, name)


def _distinct_timestamps(column: pa.ChunkedArray) -> tuple[pd.Series, np.ndarray]:
    """window_end of every row and its reader reasons, judged once per distinct text by :func:`_timestamps`.

    An hour holds about 60 distinct window ends among millions of rows; judging each text once (the rule judges
    a value alone) keeps no Python string and no reason set per row, which is what made reading an hour of 100k
    sensors peak at several GiB."""
    encoded = column.combine_chunks().dictionary_encode()
    values: list[object] = [*encoded.dictionary.to_pylist(), None]  # the last entry stands for a null
    reasons: list[set[str]] = [set() for _ in values]
    stamps = _timestamps(values, reasons)
    import pyarrow.compute as pc

    codes = pc.fill_null(encoded.indices, len(values) - 1).to_numpy(zero_copy_only=False).astype("int64")
    return pd.Series(stamps.array.take(codes)), _joined(reasons)[codes]


def _csv_columns(text: str) -> _Columns:
    """CSV with a header; a row with another number of fields than the header is a truncated file."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        return {}
    body = []
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"line {number} has {len(row)} field(s), the header has {len(header)} (truncated?)")
        body.append(row)
    columns: _Columns = {}
    for position, col in enumerate(header):
        cells = [row[position] for row in body]
        columns[col] = [_csv_cell(col, cell) for cell in cells]
    return columns


def _csv_cell(column: str, cell: str) -> object:
    """A CSV cell as the JSON value it stands for: empty is null; numbers in numeric columns are numbers
    (exactly when they are JSON number literals); anything else stays text, for the type check to judge."""
    if cell == "":
        return None
    if column in _VALUES or column == "reading_count":
        if _INTEGER.fullmatch(cell):
            return int(cell)
        if _NUMBER.fullmatch(cell):
            return float(cell)
    return cell


def _parquet_columns(data: bytes) -> _Columns:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    return {name: _arrow_values(table.column(name)) for name in table.column_names}


def _arrow_values(column: pa.ChunkedArray) -> Sequence[object]:
    """Python values of an Arrow column; timestamps as pandas Timestamps (to_pylist drops nanoseconds)."""

    if pa.types.is_timestamp(column.type):
        return _arrow_timestamps(column)
    values: list[object] = column.to_pylist()
    return values


def _arrow_timestamps(column: pa.ChunkedArray) -> list[object]:
    """Timestamps of any unit as tz-aware pandas Timestamps; one out of nanosecond range becomes a marker."""
    import pyarrow.compute as pc

    unit = column.type.unit
    scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    tz = column.type.tz or "UTC"
    ints = pc.cast(column, pa.int64()).to_pylist()
    out: list[object] = []
    for value in ints:
        if value is None:
            out.append(None)
            continue
        try:
            out.append(pd.Timestamp(value * scale, unit="ns", tz="UTC").tz_convert(tz))
        except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
            out.append(_OutOfRange(f"{value} {unit}"))
    return out


def _avro_columns(data: bytes) -> _Columns:
    import fastavro

    records: list[dict[str, Any]] = []
    for record in fastavro.reader(io.BytesIO(data)):
        if not isinstance(record, dict):
            raise ValueError("every Avro record must be a record of the window's fields")
        records.append(record)
    names = list(dict.fromkeys(k for r in records for k in r))
    return {col: [r.get(col) for r in records] for col in names}


_PARSERS: dict[str, Callable[[Any], _Columns]] = {
    "json": _json_columns,
    "csv": _csv_columns,
    "parquet": _parquet_columns,
    "avro": _avro_columns,
}


@dataclass(frozen=True)
class _OutOfRange:
    """A timestamp value outside pandas' nanosecond range."""

    text: str


def typed(columns: _Columns, name: str) -> ParsedFile:
    """Take each raw value as its contract type (the rules of the module docstring); a row with a value that
    cannot be taken is rejected with the reasons, the others are windows."""
    rows = _rows(columns)
    reasons: list[set[str]] = [set() for _ in range(rows)]
    out: dict[str, object] = {}
    for col in _KEYS:
        out[col] = _strings(columns.get(col, [None] * rows), reasons)
    out["window_end"] = _timestamps(columns.get("window_end", [None] * rows), reasons)
    for col in _VALUES:
        out[col] = _floats(columns.get(col, [None] * rows), reasons)
    out["reading_count"] = _counts(columns.get("reading_count", [None] * rows), reasons)
    frame = pd.DataFrame(
        {
            "device_id": pd.array(out["device_id"], dtype="string"),
            "tag": pd.array(out["tag"], dtype="string"),
            "window_end": out["window_end"],
            **{col: np.asarray(out[col], dtype="float64") for col in _VALUES},
            "reading_count": np.asarray(out["reading_count"], dtype="float64"),
        }
    )
    return _split(frame, _joined(reasons), name)


def _joined(reasons: list[set[str]]) -> np.ndarray:
    """Each row's reader reasons as one text in ``READER_ORDER`` ('' for none), an object array."""
    joined = np.empty(len(reasons), dtype=object)
    joined[:] = [";".join(r for r in READER_ORDER if r in found) for found in reasons]
    return joined


def _split(frame: pd.DataFrame, joined: np.ndarray, name: str | list[str]) -> ParsedFile:
    """The rows without a reason ('' in ``joined``) are windows (count int64 when all are whole), the others
    rejected rows. ``name`` is the source file of every row, or one per row."""
    rows = len(frame)
    frame[SOURCE_COLUMN] = pd.array([name] * rows if isinstance(name, str) else name, dtype="string")
    bad = (joined != "").astype(bool) if rows else np.zeros(0, dtype=bool)
    rejected = frame.loc[bad].reset_index(drop=True)
    # no rejected row (the usual hour): the frame itself, not a copy of it
    windows = frame.loc[~bad].reset_index(drop=True) if bad.any() else frame
    counts = windows["reading_count"]
    # a fractional or missing count stays float so that validation quarantines the row
    whole = bool(counts.notna().all() and (counts % 1 == 0).all())
    windows["reading_count"] = counts.astype("int64" if whole else "float64")
    # partitions hold microseconds: a rejected window ending within a microsecond keeps it floored (its reason,
    # window_not_on_minute, says it was off); a taken window is on the minute and never truncated
    rejected["window_end"] = rejected["window_end"].dt.floor("us")
    rejected[REASON_COLUMN] = list(joined[bad])
    return ParsedFile(windows, rejected)


#: The reader's reasons in the order they are joined for a row with several.
READER_ORDER = ("wrong_type", "bad_timestamp", "window_not_on_minute")


def _strings(values: Sequence[object], reasons: list[set[str]]) -> list[object]:
    """Keys as text: a string as it is, an integer (never a boolean) as its decimal text (the module's rule)."""
    out: list[object] = []
    for row, value in enumerate(values):
        if value is None or isinstance(value, str):
            out.append(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            out.append(str(value))
        else:
            reasons[row].add("wrong_type")
            out.append(None)
    return out


def _floats(values: Sequence[object], reasons: list[set[str]]) -> list[float]:
    out: list[float] = []
    for row, value in enumerate(values):
        if value is None:
            out.append(math.nan)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(float(value))
        else:
            reasons[row].add("wrong_type")
            out.append(math.nan)
    return out


def _counts(values: Sequence[object], reasons: list[set[str]]) -> list[float]:
    """Counts as floats here (NaN for missing); made int64 for the windows when every one is whole."""
    out: list[float] = []
    for row, value in enumerate(values):
        if value is None:
            out.append(math.nan)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > 2**53:
                reasons[row].add("wrong_type")  # not exactly representable: never rounded silently
                out.append(math.nan)
            else:
                out.append(float(value))
        else:
            reasons[row].add("wrong_type")
            out.append(math.nan)
    return out


def _timestamps(values: Sequence[object], reasons: list[set[str]]) -> pd.Series:
    """window_end as UTC nanoseconds; texts are parsed together (one vectorised call), checked first by a strict
    ISO 8601 pattern so that nothing is guessed."""
    nanos = np.full(len(values), np.iinfo(np.int64).min, dtype="int64")  # NaT until a value is taken
    texts: dict[int, str] = {}
    for row, value in enumerate(values):
        if value is None:
            continue
        if isinstance(value, str):
            if _ISO.fullmatch(value):
                texts[row] = value
            else:
                reasons[row].add("bad_timestamp")
        elif isinstance(value, _OutOfRange):
            reasons[row].add("bad_timestamp")
        elif isinstance(value, datetime):
            try:
                stamp = pd.Timestamp(value)
                stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
                nanos[row] = stamp.as_unit("ns").value
            except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
                reasons[row].add("bad_timestamp")
        else:
            reasons[row].add("wrong_type")
    if texts:
        parsed = pd.to_datetime(pd.Series(list(texts.values())), utc=True, format="ISO8601", errors="coerce")
        # pandas may parse beyond nanoseconds (another unit): outside 1677-2262 is refused, never wrapped
        lowest, highest = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
        taken = (parsed.notna() & (parsed >= lowest) & (parsed <= highest)).to_numpy()
        rows = np.fromiter(texts, dtype="int64", count=len(texts))
        in_ns = parsed[taken].astype("datetime64[ns, UTC]")
        nanos[rows[taken]] = in_ns.dt.tz_localize(None).to_numpy().view("int64")
        for row in rows[~taken].tolist():
            reasons[row].add("bad_timestamp")  # not a real date, or outside 1677-2262
    out = pd.Series(nanos.view("datetime64[ns]")).dt.tz_localize("UTC")
    off = out.notna() & (out != out.dt.floor("min"))
    for position in np.flatnonzero(off.to_numpy()).tolist():
        reasons[position].add("window_not_on_minute")
    return out


# --- folders: every blob listed, downloaded concurrently, read, empty or quarantined ----------------------------


@dataclass(frozen=True)
class UnreadableFile:
    """A landed file set aside whole because it cannot be read, with the reason (``contracts.FILE_REASONS``)."""

    file: str
    bytes: int
    sha256: str
    error: str
    reason: str = CORRUPT_FILE


@dataclass(frozen=True)
class BrokenFile:
    """A landed file whose structure breaks the contract (``WindowSchemaError``): its message names file and column."""

    file: str
    error: str


@dataclass
class LandedFiles:
    """What folders hold: the windows read, the rows rejected by the reader, and every file seen.

    ``files`` is every blob of the folders; each one is read (it held rows), ``empty``, ``corrupt`` or (only when
    the caller asked to keep them, ``read_landed_files(keep_broken=True)``) ``broken``.
    """

    folders: list[str]
    windows: pd.DataFrame
    files: list[str]
    corrupt: list[UnreadableFile]
    empty: list[str]
    rejected: pd.DataFrame = field(default_factory=lambda: empty_rejected())
    broken: list[BrokenFile] = field(default_factory=list)

    @property
    def read(self) -> list[str]:
        """The files that held rows."""
        skipped = set(self.empty) | {c.file for c in self.corrupt} | {b.file for b in self.broken}
        return [f for f in self.files if f not in skipped]

    def raise_broken(self, context: str = "") -> None:
        """``WindowSchemaError`` for the first broken file, as reading it alone raises."""
        if self.broken:
            raise WindowSchemaError(self.broken[0].error + context)


def list_folders(storage: Storage, container: str, folders: Sequence[str]) -> list[BlobInfo]:
    """Every blob in the folders, listed concurrently (one listing per folder), in folder order."""
    prefixes = [folder.rstrip("/") + "/" for folder in folders]
    if len(prefixes) <= 1:
        return [info for prefix in prefixes for info in storage.list(container, prefix)]
    with ThreadPoolExecutor(max_workers=min(DOWNLOAD_CONCURRENCY, len(prefixes))) as pool:
        listings = list(pool.map(lambda prefix: storage.list(container, prefix), prefixes))
    return [info for listing in listings for info in listing]


def read_landed_files(
    storage: Storage, container: str, folders: Iterable[str], *, keep_broken: bool = False
) -> LandedFiles:
    """Every blob in the folders, downloaded concurrently (bounded): read, listed as empty, or set aside whole
    with a reason. A file whose structure breaks the contract (``WindowSchemaError``) raises, or with
    ``keep_broken`` is listed in ``broken`` (its windows left out) for the caller to decide whose fault it is."""
    folders = list(folders)
    names = [info.name for info in list_folders(storage, container, folders)]
    return read_files(storage, container, names, folders=folders, keep_broken=keep_broken)


def read_files(
    storage: Storage,
    container: str,
    names: Sequence[str],
    *,
    folders: Sequence[str] = (),
    keep_broken: bool = False,
) -> LandedFiles:
    """``read_landed_files`` of the named blobs (listed already, e.g. a read task's group of an hour's files)."""
    frames, rejected, corrupt, empty, broken = [], [], [], [], []
    contents = storage.read_many(container, list(names), concurrency=DOWNLOAD_CONCURRENCY)
    files = list(names)
    tables: list[pa.Table] = []
    table_files: list[str] = []
    for index, name in enumerate(files):
        data, contents[index] = contents[index], b""  # a file's bytes are let go once it is read
        table = _clean_json_lines(data)
        if table is not None:  # the usual file: parsed columnar, framed with the others below
            tables.append(table)
            table_files.append(name)
            continue
        try:
            parsed = read_window_file(name, data)
        except CorruptFileError as exc:
            digest = hashlib.sha256(data).hexdigest()
            corrupt.append(UnreadableFile(name, len(data), digest, str(exc), exc.reason))
            continue
        except WindowSchemaError as exc:
            if not keep_broken:
                raise
            broken.append(BrokenFile(name, str(exc)))
            continue
        if not parsed.rows:
            empty.append(name)
            continue
        frames.append(parsed.windows)
        if len(parsed.rejected):
            rejected.append(parsed.rejected)
    if tables:
        # one frame for every columnar file: Stream Analytics may flush a file per window, and the per-file cost of
        # a frame is what made 5,000 small files slow; each row keeps its own file as its source
        sources = np.repeat(np.array(table_files, dtype=object), [t.num_rows for t in tables])
        together = _table_windows(pa.concat_tables(tables), pd.array(sources, dtype="string"))
        frames.append(together.windows)
        rejected.append(together.rejected)
    windows = _concat(frames, empty_windows())
    return LandedFiles(
        folders=list(folders),
        windows=windows,
        files=files,
        corrupt=corrupt,
        empty=empty,
        rejected=_concat(rejected, empty_rejected()),
        broken=broken,
    )


def _clean_json_lines(data: bytes) -> pa.Table | None:
    """The Arrow table of a JSON-lines file that is UTF-8 and that the columnar reader takes whole, else None (the
    file is then read alone by :func:`read_window_file`, which names what is wrong with it)."""
    if sniff(data) != "json":
        return None
    try:
        data.decode("utf-8-sig")  # what read_window_file checks first: a file that is not UTF-8 is quarantined
    except UnicodeDecodeError:
        return None
    return _json_lines_table(data)


def _concat(frames: list[pd.DataFrame], empty: pd.DataFrame) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty
    out = pd.concat(frames, ignore_index=True)
    if "reading_count" in out and out["reading_count"].dtype != "int64":
        counts = out["reading_count"].astype("float64")
        whole = bool(counts.notna().all() and (counts % 1 == 0).all())
        out["reading_count"] = counts.astype("int64" if whole else "float64")
    return out


def read_landed(storage: Storage, container: str, folders: Iterable[str]) -> tuple[pd.DataFrame, list[str]]:
    """All windows in the given folders and the files seen; the first corrupt file raises ``CorruptFileError``."""
    read = read_landed_files(storage, container, folders)
    if read.corrupt:
        raise CorruptFileError(read.corrupt[0].error, read.corrupt[0].reason)
    return read.windows, read.files


def empty_windows() -> pd.DataFrame:
    """No windows, in the contract's dtypes (with the source column)."""
    empty = pd.DataFrame({col: pd.Series(dtype=dtype) for col, dtype in WINDOW_DTYPES.items()})
    empty[SOURCE_COLUMN] = pd.Series(dtype="string")
    return empty


def empty_rejected() -> pd.DataFrame:
    """No rejected rows: the window columns (reading_count as float), the source file and the reason."""
    empty = empty_windows()
    empty["reading_count"] = empty["reading_count"].astype("float64")
    empty[REASON_COLUMN] = pd.Series(dtype="object")
    return empty
