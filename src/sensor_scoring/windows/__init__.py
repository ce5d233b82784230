"""Landed windows: the Stream Analytics contract, its aggregation, its blob layout and its parsers.

``aggregate_readings`` is the Python twin of ``infra/stream_analytics/windows.asaql``; the simulator and the
raw-readings import both go through it, so what they land is what the real job would land.
"""
from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from sensor_scoring.storage import Storage, parquet_frame

WINDOW = pd.Timedelta(minutes=1)
HOUR = timedelta(hours=1)

#: Column -> dtype of a landed window, the contract of DESIGN.md.
WINDOW_SCHEMA: dict[str, str] = {
    "device_id": "string",
    "tag": "string",
    "window_end": "datetime64[ns, UTC]",
    "value_avg": "float64",
    "value_min": "float64",
    "value_max": "float64",
    "value_std": "float64",
    "reading_count": "int64",
}
WINDOW_COLUMNS = list(WINDOW_SCHEMA)
#: Where a parsed row came from; kept through quarantine so a bad row can be traced to its file.
SOURCE_COLUMN = "source_file"
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


def aggregate_readings(readings: pd.DataFrame) -> pd.DataFrame:
    """1-minute tumbling windows per (device_id, tag), as the Stream Analytics query computes them.

    A window is (window_end - 1 min, window_end]: a reading at exactly 16:01:00 closes the window ending
    16:01. Null values are dropped first (``WHERE value IS NOT NULL``), so ``reading_count`` is at least 1.
    STDEV is the sample standard deviation; a single reading gives 0 (``COALESCE(STDEV(value), 0)``).
    """
    missing = {"ts", "device_id", "tag", "value"} - set(readings.columns)
    if missing:
        raise ValueError(f"readings need columns ts, device_id, tag, value; missing {sorted(missing)}")
    frame = readings.loc[readings["value"].notna(), ["ts", "device_id", "tag", "value"]].copy()
    frame["window_end"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601").dt.ceil("min")
    grouped = frame.groupby(["device_id", "tag", "window_end"], sort=True, observed=True)["value"]
    windows = grouped.agg(
        value_avg="mean", value_min="min", value_max="max", value_std="std", reading_count="count"
    ).reset_index()
    windows["value_std"] = windows["value_std"].fillna(0.0)
    return conform(windows)


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Cast to the contract's dtypes (window_end in UTC nanoseconds); columns beyond it are kept."""
    out = frame.copy()
    for column, dtype in WINDOW_SCHEMA.items():
        if column == "window_end":
            out[column] = pd.to_datetime(out[column], utc=True).astype(dtype)
        else:
            out[column] = out[column].astype(dtype)
    return out


def folder_for(moment: datetime) -> str:
    """Stream Analytics ``{date}/{time}`` folder (``YYYY/MM/DD/HH``) of a UTC moment."""
    return moment.astimezone(timezone.utc).strftime("%Y/%m/%d/%H")


def hour_floor(moment: datetime) -> datetime:
    """The UTC hour a moment falls in."""
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def folders_for_interval(start: datetime, end: datetime, late_folders: int = 1) -> list[str]:
    """Folders that can hold windows ending in [start, end): the interval's own hours plus late ones.

    Output is batched, so a window can land in a later hour's folder; ``late_folders`` says how many
    folders after the interval to look in.
    """
    if end <= start:
        raise ValueError(f"empty interval [{start}, {end})")
    folders, moment = [], hour_floor(start)
    last = hour_floor(end - timedelta(microseconds=1)) + HOUR * late_folders
    while moment <= last:
        folders.append(folder_for(moment))
        moment += HOUR
    return folders


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


@dataclass(frozen=True)
class LandingPlan:
    """How windows are spread over files: several per folder, some late into the next folder."""

    files_per_hour: int = 3
    late_minutes: int = 2
    late_share: float = 0.5
    seed: int = 0


def land_windows(
    storage: Storage, container: str, windows: pd.DataFrame, plan: LandingPlan = LandingPlan(), *, batch: str | None = None
) -> list[str]:
    """Write windows into ``container`` as Stream Analytics would, returning the blob names written.

    File names derive from the batch, the folder and the part. The batch defaults to a hash of the content,
    so landing the same windows twice overwrites the same blobs instead of doubling them, and another batch
    writing late windows into the same folder never overwrites this one. A caller that re-lands a growing
    batch (the simulator's current hour) names it, so each landing replaces the previous one.
    """
    if windows.empty:
        return []
    rng = np.random.default_rng(plan.seed)
    frame = conform(windows)
    batch = batch or hashlib.sha256(to_asa_json_lines(frame)).hexdigest()[:16]
    folder_time = frame["window_end"].dt.floor("h")
    near_end = frame["window_end"] >= folder_time + pd.Timedelta(minutes=60 - plan.late_minutes)
    late = near_end & (rng.random(len(frame)) < plan.late_share)
    frame["_folder"] = folder_time.where(~late, folder_time + pd.Timedelta(hours=1)).dt.strftime("%Y/%m/%d/%H")
    written = []
    for folder, rows in frame.groupby("_folder", sort=True):
        rows = rows.sort_values(["window_end", "device_id", "tag"])
        parts = np.array_split(np.arange(len(rows)), min(plan.files_per_hour, len(rows)))
        for number, index in enumerate(parts):
            guid = uuid.uuid5(uuid.NAMESPACE_URL, f"{batch}/{folder}/{number}")
            name = f"{folder}/{SCHEMA_HASH}_{guid}_{number + 1}.json"
            storage.write_bytes(container, name, to_asa_json_lines(rows.iloc[index]))
            written.append(name)
    return written


def parse_window_file(name: str, data: bytes) -> pd.DataFrame:
    """Read one landed file in any Stream Analytics serialisation into the contract's columns.

    Line-separated JSON, a JSON array, CSV (with header) and Parquet are understood. A missing column or
    a value that cannot be cast raises ``WindowFileError`` naming the file and the column.
    """
    lower = name.lower()
    if not lower.endswith(READABLE_SUFFIXES):
        raise WindowFileError(f"{name}: unknown serialisation (expected {', '.join(READABLE_SUFFIXES)})")
    if not data.strip():  # a blob created before its first write: no windows, not an error
        frame = pd.DataFrame(columns=WINDOW_COLUMNS)
        data = b""
    try:
        if not data:
            pass
        elif lower.endswith(".parquet"):
            frame = parquet_frame(data)
        elif lower.endswith(".csv"):
            _check_csv_rows(data)
            frame = pd.read_csv(io.BytesIO(data), dtype={"device_id": "string", "tag": "string"})
        elif lower.endswith(".json"):
            text = data.decode("utf-8").strip()
            if not text:
                frame = pd.DataFrame(columns=WINDOW_COLUMNS)
            elif text.startswith("["):
                frame = pd.DataFrame(json.loads(text))
            else:
                # pandas' C JSON reader: about twice as fast as json.loads per line on a 600k-window hour
                frame = pd.read_json(io.StringIO(text), lines=True, dtype=False)
    except Exception as exc:  # every parser has its own error types; the file name is what matters
        raise CorruptFileError(f"{name}: cannot be parsed: {type(exc).__name__}: {exc}") from exc
    if frame.empty and not len(frame.columns):
        frame = pd.DataFrame(columns=WINDOW_COLUMNS)
    missing = [col for col in WINDOW_COLUMNS if col not in frame.columns]
    if missing:
        raise WindowSchemaError(f"{name}: missing required column(s) {', '.join(missing)}")
    frame = frame[WINDOW_COLUMNS].copy()
    for column, dtype in WINDOW_SCHEMA.items():
        try:
            if column == "window_end":
                frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601").astype(dtype)
            elif column == "reading_count":
                numbers = pd.to_numeric(frame[column], errors="raise")
                # A missing or fractional count is kept as float so that validation quarantines the row.
                whole = bool(numbers.notna().all() and (numbers % 1 == 0).all())
                frame[column] = numbers.astype("int64" if whole else "float64")
            elif dtype == "float64":
                frame[column] = pd.to_numeric(frame[column], errors="raise").astype(dtype)
            else:
                frame[column] = frame[column].astype(dtype)
        except Exception as exc:
            raise WindowSchemaError(f"{name}: column {column} cannot be read as {dtype}: {exc}") from exc
    frame[SOURCE_COLUMN] = name
    return frame


def _check_csv_rows(data: bytes) -> None:
    """A truncated CSV still parses (the cut row gets nulls); a row with fewer fields than the header gives it away."""
    import csv

    rows = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(rows, None)
    if header is None:
        return
    for number, row in enumerate(rows, start=2):
        if row and len(row) != len(header):
            raise ValueError(f"line {number} has {len(row)} field(s), the header has {len(header)} (truncated?)")


@dataclass
class LandedFiles:
    """What the interval's folders hold: the windows read, the files read, and the files quarantined whole."""

    windows: pd.DataFrame
    files: list[str]
    corrupt: list[dict[str, object]]
    empty: list[str]


def read_landed_files(storage: Storage, container: str, folders: Iterable[str]) -> LandedFiles:
    """Like ``read_landed``, but a corrupt file is set aside (name, size, error) instead of stopping the hour.

    A file whose structure breaks the contract (``WindowSchemaError``) still raises: the run must fail.
    """
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
                corrupt.append({"file": info.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                "error": str(exc)})
                continue
            if frame.empty:
                empty.append(info.name)
            frames.append(frame)
    windows = pd.concat(frames, ignore_index=True) if frames else _empty_windows()
    return LandedFiles(windows=windows, files=files, corrupt=corrupt, empty=empty)


def _empty_windows() -> pd.DataFrame:
    empty = pd.DataFrame({col: pd.Series(dtype=dtype) for col, dtype in WINDOW_SCHEMA.items()})
    empty[SOURCE_COLUMN] = pd.Series(dtype="string")
    return empty


def read_landed(storage: Storage, container: str, folders: Iterable[str]) -> tuple[pd.DataFrame, list[str]]:
    """All windows in the given folders, with their source file, and the list of files read."""
    frames, files = [], []
    for folder in folders:
        for info in storage.list(container, folder.rstrip("/") + "/"):
            if not info.name.lower().endswith(READABLE_SUFFIXES):
                continue
            frames.append(parse_window_file(info.name, storage.read_bytes(container, info.name)))
            files.append(info.name)
    if not frames:
        empty = pd.DataFrame({col: pd.Series(dtype=dtype) for col, dtype in WINDOW_SCHEMA.items()})
        empty[SOURCE_COLUMN] = pd.Series(dtype="string")
        return empty, files
    return pd.concat(frames, ignore_index=True), files


def select_interval(windows: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    """Windows whose ``window_end`` lies in [start, end): how an hour owns its windows, whatever the folder."""
    ends = windows["window_end"]
    return windows.loc[(ends >= pd.Timestamp(start)) & (ends < pd.Timestamp(end))].reset_index(drop=True)
