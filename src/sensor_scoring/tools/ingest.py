"""Import raw readings in the original reference architecture's sample layout (``TS,Device,Tag,Value``)."""

from __future__ import annotations

import os

import pandas as pd

from sensor_scoring.storage import Storage
from sensor_scoring.windows import aggregate_readings, land_windows

RAW_COLUMNS = {"TS": "ts", "Device": "device_id", "Tag": "tag", "Value": "value"}


def read_raw_readings(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Readings from a CSV with header ``TS,Device,Tag,Value``; TS like ``2018-08-28 23:00:05.000``, UTC."""
    frame = pd.read_csv(path, dtype={"Device": "string", "Tag": "string"})
    missing = [col for col in RAW_COLUMNS if col not in frame.columns]
    if missing:
        raise ValueError(f"{path}: expected header TS,Device,Tag,Value; missing {', '.join(missing)}")
    frame = frame.rename(columns=RAW_COLUMNS)[list(RAW_COLUMNS.values())]
    try:
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: column TS holds a value that is not a timestamp: {exc}") from exc
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame


def ingest_readings_csv(storage: Storage, container: str, path: str | os.PathLike[str]) -> dict[str, object]:
    """Aggregate a raw CSV into windows exactly as the Stream Analytics job would, and land them."""
    readings = read_raw_readings(path)
    windows = aggregate_readings(readings)
    files = land_windows(storage, container, windows)
    return {
        "readings": len(readings),
        "windows": len(windows),
        "files": len(files),
        "first_window_end": str(windows["window_end"].min()),
        "last_window_end": str(windows["window_end"].max()),
    }
