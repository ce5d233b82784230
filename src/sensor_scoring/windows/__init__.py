"""Landed windows: the Stream Analytics contract, its aggregation, its blob layout and its parsers.

``aggregate_readings`` is the Python twin of ``infra/stream_analytics/windows.asaql``; the simulator and the
raw-readings import both go through it, so what they land is what the real job would land. Reading files is
``windows.formats``; which hour owns a window, for training and scoring alike, is ``windows.ownership``.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sensor_scoring import layout
from sensor_scoring.contracts import SOURCE_COLUMN, WINDOW_COLUMNS
from sensor_scoring.storage import Storage
from sensor_scoring.windows.formats import (
    READABLE_SUFFIXES,
    SCHEMA_HASH,
    WINDOW_DTYPES,
    BrokenFile,
    CorruptFileError,
    LandedFiles,
    ParsedFile,
    UnreadableFile,
    WindowFileError,
    WindowSchemaError,
    conform,
    empty_rejected,
    empty_windows,
    list_folders,
    parse_window_file,
    read_files,
    read_landed,
    read_landed_files,
    read_window_file,
    sniff,
    to_asa_json_lines,
)
from sensor_scoring.windows.ownership import (
    HOUR,
    LATE_HORIZON,
    corrupt_owner,
    folder_for,
    folder_hour,
    folders_for_interval,
    hour_floor,
    owned_windows,
    owner_hours,
    partition_hours,
    read_owned,
    read_owned_with_lookback,
    restricted,
    set_aside_strays,
    strays,
)

__all__ = [
    "HOUR",
    "LATE_HORIZON",
    "READABLE_SUFFIXES",
    "SCHEMA_HASH",
    "SOURCE_COLUMN",
    "WINDOW",
    "WINDOW_COLUMNS",
    "WINDOW_DTYPES",
    "BrokenFile",
    "CorruptFileError",
    "LandedFiles",
    "LandingPlan",
    "ParsedFile",
    "UnreadableFile",
    "WindowFileError",
    "WindowSchemaError",
    "aggregate_readings",
    "conform",
    "corrupt_owner",
    "empty_rejected",
    "empty_windows",
    "list_folders",
    "folder_for",
    "folder_hour",
    "folders_for_interval",
    "hour_floor",
    "land_windows",
    "owned_windows",
    "owner_hours",
    "parse_window_file",
    "partition_hours",
    "read_landed",
    "read_files",
    "read_landed_files",
    "read_owned",
    "read_owned_with_lookback",
    "restricted",
    "read_window_file",
    "set_aside_strays",
    "sniff",
    "strays",
    "to_asa_json_lines",
]

#: A window is (window_end - WINDOW, window_end].
WINDOW = pd.Timedelta(minutes=1)


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


@dataclass(frozen=True)
class LandingPlan:
    """How windows are spread over files: several per folder, some late into the next folder."""

    files_per_hour: int = 3
    late_minutes: int = 2
    late_share: float = 0.5
    seed: int = 0


def land_windows(
    storage: Storage,
    container: str,
    windows: pd.DataFrame,
    plan: LandingPlan = LandingPlan(),
    *,
    batch: str | None = None,
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
    folder = folder_time.where(~late, folder_time + pd.Timedelta(hours=1))
    frame["_folder"] = folder.dt.strftime(layout.WINDOW_FOLDER_FORMAT)
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
