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

import pandas as pd

from sensor_scoring.contracts import REASON_COLUMN, WINDOW_COLUMNS

if TYPE_CHECKING:
    from sensor_scoring.validation.expectations import Bounds


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
    from sensor_scoring.validation.expectations import run_suite

    return run_suite(windows, start, end, bounds).reasons


def check_windows(
    windows: pd.DataFrame, start: datetime | None = None, end: datetime | None = None, bounds: Bounds | None = None
) -> Checked:
    """Split an interval's windows into valid (unique per key), quarantined (with reason) and duplicates.

    Exact copies of a window (same values, any file) collapse to one first and are counted. Copies that
    disagree then fail the suite's uniqueness expectation and are all quarantined as
    ``conflicting_duplicate``: there is no way to tell which one is right.
    """
    from sensor_scoring.validation.expectations import run_suite

    copies = windows.duplicated(subset=WINDOW_COLUMNS, keep="first")
    unique = windows.loc[~copies]
    result = run_suite(unique, start, end, bounds)
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
