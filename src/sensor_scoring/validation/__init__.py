"""Row checks on landed windows: what is scored, what is quarantined (with a reason), what is a duplicate.

The rules themselves live in one place, the great-expectations suite of ``sensor_scoring.validation.expectations``;
this module collapses exact duplicates, runs the suite and splits the rows by its results. great-expectations is
imported here lazily, inside the functions, so importing ``sensor_scoring.validation`` (and
``sensor_scoring.steps``) stays cheap for the tasks and shard processes that never validate.

Nothing is dropped silently: every row ends up in exactly one of ``valid``, ``quarantined`` or the
``duplicates`` count, so the hour's accounting closes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sensor_scoring.contracts import REASON_COLUMN, WINDOW_COLUMNS

if TYPE_CHECKING:
    from sensor_scoring.validation.expectations import Bounds, SuiteResult

#: Rows the suite validates at once. A larger hour is validated in chunks of whole sensors (every copy of a
#: window key in one chunk, so the uniqueness rule sees them together), bounding what great-expectations holds
#: in memory at a time; the chunks' results merge into one result, the same as one run would give.
SUITE_CHUNK_ROWS = 1_000_000


@dataclass
class Checked:
    valid: pd.DataFrame
    quarantined: pd.DataFrame
    duplicates: int
    #: Index labels (of the input) of the rows collapsed as exact duplicates, for per-hour counting.
    duplicate_index: pd.Index = field(default_factory=lambda: pd.Index([]))
    #: One summary per expectation of the suite (type, reason, success, unexpected count).
    expectations: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def row_reasons(
    windows: pd.DataFrame, start: datetime | None = None, end: datetime | None = None, bounds: Bounds | None = None
) -> pd.Series:
    """The failed expectations of each row as reasons joined by ``;`` (empty string where the row is fine)."""
    return run_suite_in_chunks(windows, start, end, bounds).reasons


def check_windows(
    windows: pd.DataFrame, start: datetime | None = None, end: datetime | None = None, bounds: Bounds | None = None
) -> Checked:
    """Split an interval's windows into valid (unique per key), quarantined (with reason) and duplicates.

    Exact copies of a window (same values, any file) collapse to one first and are counted. Copies that
    disagree then fail the suite's uniqueness expectation and are all quarantined as
    ``conflicting_duplicate``: there is no way to tell which one is right.
    """
    copies = windows.duplicated(subset=WINDOW_COLUMNS, keep="first")
    unique = windows.loc[~copies]
    result = run_suite_in_chunks(unique, start, end, bounds)
    reasons = result.reasons
    bad = reasons != ""
    quarantined = unique.loc[bad].assign(**{REASON_COLUMN: reasons[bad]}).reset_index(drop=True)
    valid = unique.loc[~bad].copy()
    valid["reading_count"] = valid["reading_count"].astype("int64")
    return Checked(
        valid=valid.reset_index(drop=True),
        quarantined=quarantined,
        duplicates=int(copies.sum()),
        duplicate_index=windows.index[copies],
        expectations=result.expectations,
        seconds=result.seconds,
    )


def run_suite_in_chunks(
    windows: pd.DataFrame, start: datetime | None, end: datetime | None, bounds: Bounds | None
) -> SuiteResult:
    """The suite over ``windows``, run on chunks of at most about ``SUITE_CHUNK_ROWS`` rows of whole sensors.

    Rows with a null device or tag all go to one chunk, so rules across rows treat them as one run would.
    """
    from sensor_scoring.validation.expectations import SuiteResult, run_suite

    chunks = -(-len(windows) // SUITE_CHUNK_ROWS)
    if chunks <= 1:
        return run_suite(windows, start, end, bounds)
    codes, uniques = pd.MultiIndex.from_frame(windows[["device_id", "tag"]].astype(object)).factorize()
    chunk_of = np.where(codes < 0, 0, codes * chunks // max(1, len(uniques)))
    reasons = pd.Series("", index=windows.index, dtype="object")
    results = []
    for c in range(chunks):
        positions = np.flatnonzero(chunk_of == c)
        if len(positions):
            result = run_suite(windows.iloc[positions], start, end, bounds)
            reasons.iloc[positions] = result.reasons.to_numpy()
            results.append(result)
    merged = []
    for parts in zip(*(r.expectations for r in results), strict=True):
        counts = [p["unexpected_count"] for p in parts]
        elements = [p["element_count"] for p in parts]
        merged.append(
            {
                **parts[0],
                "success": all(p["success"] for p in parts),
                "element_count": None if None in elements else sum(elements),
                "unexpected_count": None if None in counts else sum(counts),
            }
        )
    return SuiteResult(
        reasons=reasons,
        expectations=merged,
        success=all(r.success for r in results),
        seconds=sum(r.seconds for r in results),
    )
