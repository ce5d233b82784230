"""Import raw readings in the original reference architecture's sample layout (``TS,Device,Tag,Value``).

Every data line is taken as a reading or rejected with its line number and a reason (``INGEST_REASONS``); none is
dropped unseen. A blank ``Value`` is a reading without a value, which Stream Analytics skips (``WHERE value IS NOT
NULL``), counted apart as ``null_values``. Rejected lines go to a report (a CSV: ``line,reason,error,text``) beside
the input unless told otherwise. By default the readings taken are aggregated and landed and the command succeeds
with the rejected lines counted (like an hour, where one bad row never fails the rest); ``strict`` lands nothing
when any line is rejected and fails (docs/faults.md, "Importing raw readings").
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sensor_scoring.contracts import DataError
from sensor_scoring.storage import Storage
from sensor_scoring.windows import aggregate_readings, land_windows

RAW_COLUMNS = {"TS": "ts", "Device": "device_id", "Tag": "tag", "Value": "value"}
#: Why a data line is not taken as a reading; the reasons of the rejected-lines report.
INGEST_REASONS: dict[str, str] = {
    "wrong_field_count": "the line has another number of fields than the header",
    "bad_timestamp": "TS is not an ISO 8601 date and time (a zone-less one is UTC), not a real date, or outside "
    "1677-2262",
    "missing_key": "Device or Tag is empty or blank",
    "bad_value": "Value is not a decimal number (a blank Value is a reading without a value, not an error)",
    "non_finite_value": "Value is NaN or infinite",
}
#: The report's columns: the 1-based line number in the file (the header is line 1), reason, detail, the line.
REPORT_COLUMNS = ("line", "reason", "error", "text")

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?")
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_NON_FINITE = re.compile(r"[+-]?(nan|inf|infinity)", re.IGNORECASE)


class IngestRejected(DataError):
    """``strict`` and some lines were rejected: nothing was landed."""


@dataclass(frozen=True)
class RejectedLine:
    """A data line that is not a reading: where it is, why, and its fields (joined by commas)."""

    line: int
    reason: str
    error: str
    text: str


@dataclass
class RawReadings:
    """A raw file read: the readings taken (``ts, device_id, tag, value``) and every line rejected."""

    readings: pd.DataFrame
    rejected: list[RejectedLine] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return len(self.readings) + len(self.rejected)

    @property
    def null_values(self) -> int:
        return int(self.readings["value"].isna().sum())

    def by_reason(self) -> dict[str, int]:
        counts = Counter(r.reason for r in self.rejected)
        return {reason: counts[reason] for reason in INGEST_REASONS if counts[reason]}


def read_raw_readings(path: str | os.PathLike[str]) -> RawReadings:
    """Readings from a CSV with header ``TS,Device,Tag,Value`` (any order, more columns ignored); TS like
    ``2018-08-28 23:00:05.000`` (UTC) or ISO 8601 with a zone. A line that cannot be taken is rejected with its
    number and reason; a header without those columns is a ``ValueError`` (the whole file is of another layout)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle)
        header = next(rows, None) or []
        missing = [col for col in RAW_COLUMNS if col not in header]
        if missing:
            raise ValueError(f"{path}: expected header TS,Device,Tag,Value; missing {', '.join(missing)}")
        where = [header.index(col) for col in RAW_COLUMNS]
        lines: list[int] = []
        cells: list[list[str]] = []
        texts: list[str] = []
        rejected: list[RejectedLine] = []
        for row in rows:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line holds no reading
            number, text = rows.line_num, ",".join(row)
            if len(row) != len(header):
                detail = f"{len(row)} field(s), the header has {len(header)}"
                rejected.append(RejectedLine(number, "wrong_field_count", detail, text))
                continue
            lines.append(number)
            cells.append([row[i] for i in where])
            texts.append(text)
    readings, more = _typed(lines, cells, texts)
    rejected = sorted([*rejected, *more], key=lambda r: r.line)
    return RawReadings(readings=readings, rejected=rejected)


def _typed(lines: list[int], cells: list[list[str]], texts: list[str]) -> tuple[pd.DataFrame, list[RejectedLine]]:
    """Each line's cells as a reading, by one rule per column (no coercion), or the first reason it fails."""
    rejected: list[RejectedLine] = []
    stamps = pd.to_datetime(
        pd.Series([c[0] if _TIMESTAMP.fullmatch(c[0]) else None for c in cells], dtype="object"),
        utc=True,
        format="ISO8601",
        errors="coerce",
    )
    lowest, highest = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
    keep, values = [], []
    for position, (number, (ts, device, tag, value), text) in enumerate(zip(lines, cells, texts)):
        stamp = stamps.iloc[position]
        if pd.isna(stamp) or not lowest <= stamp <= highest:
            rejected.append(RejectedLine(number, "bad_timestamp", f"TS {ts!r}", text))
        elif not device.strip() or not tag.strip():
            rejected.append(RejectedLine(number, "missing_key", f"Device {device!r}, Tag {tag!r}", text))
        elif value.strip() == "":
            keep.append(position)
            values.append(math.nan)
        elif _NON_FINITE.fullmatch(value.strip()):
            rejected.append(RejectedLine(number, "non_finite_value", f"Value {value!r}", text))
        elif not _DECIMAL.fullmatch(value.strip()):
            rejected.append(RejectedLine(number, "bad_value", f"Value {value!r}", text))
        else:
            keep.append(position)
            values.append(float(value))
    readings = pd.DataFrame(
        {
            "ts": stamps.iloc[keep].astype("datetime64[ns, UTC]").reset_index(drop=True),
            "device_id": pd.array([cells[i][1] for i in keep], dtype="string"),
            "tag": pd.array([cells[i][2] for i in keep], dtype="string"),
            "value": pd.array(values, dtype="float64"),
        }
    )
    return readings, rejected


def default_report_path(path: str | os.PathLike[str]) -> Path:
    """Where the rejected lines go unless told: beside the input, ``readings.csv`` -> ``readings.rejected.csv``."""
    source = Path(path)
    return source.with_name(f"{source.stem}.rejected.csv")


def write_report(rejected: list[RejectedLine], report: str | os.PathLike[str]) -> None:
    """The rejected lines as CSV (``REPORT_COLUMNS``), one row per line, in file order."""
    with open(report, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(REPORT_COLUMNS)
        out.writerows((r.line, r.reason, r.error, r.text) for r in rejected)


def ingest_readings_csv(
    storage: Storage,
    container: str,
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    report: str | os.PathLike[str] | None = None,
) -> dict[str, object]:
    """Aggregate a raw CSV into windows exactly as the Stream Analytics job would, and land them.

    Rejected lines are written to ``report`` (default :func:`default_report_path`) when there are any; with none,
    a report already there (of an earlier import of the file) is emptied to its header, never left stale, and no
    new file is made. ``strict``: any rejected line lands nothing and raises ``IngestRejected`` naming the counts
    and the report."""
    raw = read_raw_readings(path)
    report_path = Path(report) if report is not None else default_report_path(path)
    if raw.rejected or report_path.exists():
        write_report(raw.rejected, report_path)
    facts: dict[str, object] = {
        "lines": raw.lines,
        "readings": len(raw.readings),
        "null_values": raw.null_values,
        "rejected": len(raw.rejected),
        "rejected_by_reason": raw.by_reason(),
        "rejected_report": str(report_path) if raw.rejected else None,
    }
    if raw.rejected and strict:
        first = raw.rejected[0]
        raise IngestRejected(
            f"{path}: {len(raw.rejected)} of {raw.lines} line(s) rejected "
            f"({', '.join(f'{k} {v}' for k, v in raw.by_reason().items())}; first: line {first.line}, {first.reason}, "
            f"{first.error}); nothing was landed (strict). Rejected lines: {report_path}"
        )
    windows = aggregate_readings(raw.readings)
    files = land_windows(storage, container, windows)
    return facts | {
        "windows": len(windows),
        "files": len(files),
        "first_window_end": str(windows["window_end"].min()),
        "last_window_end": str(windows["window_end"].max()),
    }
