"""Model input features: the named feature sets a model version is trained on, computed from landed windows only.

A feature set is a property of a model version (its manifest's ``features``): a version is scored with the set it
was trained on, whatever the default is today.

- ``window-v1``: the window's own aggregates (``contracts.FEATURES``), the first versions' input; manifests written
  before feature sets had names list these columns instead of naming the set, and read as ``window-v1``.
- ``context-v1``: the window's level (``value_avg``), the logarithms of its spread and reading count, and its
  deviation from the sensor's trailing level: ``value_avg`` minus the median ``value_avg`` of the same sensor's
  windows ending 1 to ``LOOKBACK_MINUTES`` minutes before it. The deviation sees what one window's aggregates
  cannot: a drift or level shift that stays inside the range the sensor's daily cycle covers anyway. Logarithms,
  because a spread of 0 (a stuck sensor) and a count of a sixth of the usual (a dropout) are ratios, and a raw count
  makes ordinary windows of a sparse sensor look far out.

:func:`add_features` computes every derived column, in one place for training, scoring and the benchmark, from the
windows given and ``context``: earlier windows used only to look back, never returned. The rule for a window
without an earlier window of its sensor in the lookback (a gap, the first hour of a new sensor, the start of a
training range): the trailing level is the window's own value, so its deviation is 0. The result depends only on
the windows' values and keys: not on the frame's order, nor on how the windows were split between hours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sensor_scoring.contracts import FEATURES
from sensor_scoring.layout import HOUR

if TYPE_CHECKING:
    from sensor_scoring.storage import Storage
    from sensor_scoring.validation.expectations import Bounds
    from sensor_scoring.windows import LandedFiles

log = logging.getLogger(__name__)

WINDOW_V1 = "window-v1"
CONTEXT_V1 = "context-v1"
#: What new versions are trained with unless a parameter says otherwise (the CLI's --features, the training DAG's
#: ``features`` param): chosen by leave-one-source-out (bench/bench_detection.py, docs/models.md), where context-v1
#: flagged more normal windows than its calibrated rate allows on a source with a wandering baseline. Versions keep
#: the set they were trained with.
DEFAULT_FEATURE_SET = WINDOW_V1
#: Minutes of earlier windows the trailing level looks back over; a scoring run needs this much of the previous hour.
LOOKBACK_MINUTES = 30
#: Added to ``value_std`` before its logarithm: an exactly constant window (std 0) stays finite and far out.
STD_FLOOR = 1e-9

#: The columns :func:`add_features` derives, beside the window's own.
DERIVED: tuple[str, ...] = ("log_value_std", "log_reading_count", "level_deviation")
#: Every known set and its model input columns, in order.
FEATURE_SETS: Mapping[str, tuple[str, ...]] = {
    WINDOW_V1: FEATURES,
    CONTEXT_V1: ("value_avg", "log_value_std", "log_reading_count", "level_deviation"),
}

_KEY = ["device_id", "tag"]
_MINUTE_NS = 60_000_000_000
#: Rows whose lookback is gathered at once: bounds the (rows x LOOKBACK_MINUTES) temporary to ~48 MB.
_CHUNK_ROWS = 200_000


def columns(feature_set: str) -> tuple[str, ...]:
    """The input columns of ``feature_set``; ``ValueError`` naming the known sets for any other name."""
    try:
        return FEATURE_SETS[feature_set]
    except KeyError:
        raise ValueError(f"unknown feature set {feature_set!r}; known: {', '.join(FEATURE_SETS)}") from None


def recorded_set(recorded: object) -> str:
    """The feature set a manifest or index records: a set's name, or (versions registered before sets had names)
    the list, or comma-joined text, of ``window-v1``'s columns."""
    if isinstance(recorded, str) and recorded in FEATURE_SETS:
        return recorded
    names = recorded.split(",") if isinstance(recorded, str) else recorded
    if isinstance(names, (list, tuple)) and tuple(names) == FEATURES:
        return WINDOW_V1
    raise ValueError(f"unknown feature set {recorded!r}; known: {', '.join(FEATURE_SETS)}")


def add_features(windows: pd.DataFrame, context: pd.DataFrame | None = None) -> pd.DataFrame:
    """``windows`` (same rows, same order, same index) with the ``DERIVED`` columns added.

    ``context``: earlier windows (any sensors, any order) that only serve as the lookback; a context window with
    the key of one of ``windows`` is ignored (the window itself counts). Windows must be unique per
    (device_id, tag, window_end) and on the minute, as validation leaves them.
    """
    parts = [windows[[*_KEY, "window_end", "value_avg"]]]
    if context is not None and len(context):
        parts.append(context[[*_KEY, "window_end", "value_avg"]])
    both = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    device = pd.factorize(both["device_id"])[0].astype(np.int64)
    tag = pd.factorize(both["tag"])[0].astype(np.int64)
    minute = both["window_end"].to_numpy(dtype="datetime64[ns]").astype(np.int64) // _MINUTE_NS
    # (sensor, minute) as one sortable integer: a sensor's windows are adjacent, a minute apart per unit of key
    key = (device * (int(tag.max(initial=0)) + 1) + tag) * (1 << 32) + (minute - int(minute.min(initial=0)))
    order = np.argsort(key, kind="stable")  # windows before context windows of the same key
    sorted_key = key[order]
    repeated = np.zeros(len(sorted_key), dtype=bool)
    repeated[1:] = sorted_key[1:] == sorted_key[:-1]
    n = len(windows)
    if (repeated & (order < n)).any():
        raise ValueError("add_features needs windows unique per (device_id, tag, window_end)")
    kept = order[~repeated]  # a context window with a window's key is dropped
    level = _trailing_median(key[kept], both["value_avg"].to_numpy(dtype=float)[kept])
    own_level = np.empty(n)
    own = kept < n
    own_level[kept[own]] = level[own]
    avg = windows["value_avg"].to_numpy(dtype=float)
    out = windows.copy()
    out["log_value_std"] = np.log(windows["value_std"].to_numpy(dtype=float) + STD_FLOOR)
    out["log_reading_count"] = np.log(windows["reading_count"].to_numpy(dtype=float))
    out["level_deviation"] = avg - own_level
    return out


def _trailing_median(sorted_key: np.ndarray, sorted_avg: np.ndarray) -> np.ndarray:
    """Per row in key order, the median ``value_avg`` of its sensor's windows ending 1 to LOOKBACK_MINUTES minutes
    before it; its own value where there is none.

    Keys are unique and sorted, so those windows are among the LOOKBACK_MINUTES rows before it: the ones whose key is
    at most LOOKBACK_MINUTES smaller (another sensor's key is ``1 << 32`` away). Rows go in chunks of _CHUNK_ROWS.
    """
    out = np.empty(len(sorted_key))
    lagged = np.empty((LOOKBACK_MINUTES, min(_CHUNK_ROWS, len(sorted_key))))  # one lag per (contiguous) row
    for start in range(0, len(sorted_key), _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, len(sorted_key))
        chunk = lagged[:, : stop - start]
        chunk.fill(np.nan)
        for back in range(1, LOOKBACK_MINUTES + 1):
            first = max(start, back)  # rows with a row ``back`` before them
            if first >= stop:
                continue
            near = sorted_key[first:stop] - sorted_key[first - back : stop - back] <= LOOKBACK_MINUTES
            chunk[back - 1, first - start :] = np.where(near, sorted_avg[first - back : stop - back], np.nan)
        present = LOOKBACK_MINUTES - np.isnan(chunk).sum(axis=0)
        ranked = np.sort(chunk.T, axis=1)  # NaN sorts last: the first ``present`` values of a row are its lookback
        rows = np.arange(stop - start)
        low, high = np.maximum(present - 1, 0) // 2, np.minimum(present // 2, LOOKBACK_MINUTES - 1)
        median = (ranked[rows, low] + ranked[rows, high]) / 2
        out[start:stop] = np.where(present > 0, median, sorted_avg[start:stop])
    return out


def feature_matrix(windows: pd.DataFrame, feature_set: str = WINDOW_V1) -> np.ndarray:
    """The model input of each window for ``feature_set``, in its column order, as float64.

    A set with derived columns needs them in the frame (:func:`add_features`, with the context it needs): they are
    never computed here, where the earlier windows are not known.
    """
    wanted = columns(feature_set)
    missing = [c for c in wanted if c not in windows.columns]
    if missing:
        raise KeyError(f"feature set {feature_set!r} needs column(s) {missing}: derive them with features.add_features")
    return windows[list(wanted)].to_numpy(dtype=float)


def read_context(
    storage: Storage,
    container: str,
    start: datetime,
    *,
    late_folders: int = 1,
    bounds: Bounds | None = None,
    read: LandedFiles | None = None,
) -> pd.DataFrame:
    """The lookback of a run (scoring or training) whose first hour starts at ``start``: the valid windows the hour
    before owns (``windows.ownership``: its folder and the late ones, as that hour's own run reads them), ending in
    its last ``LOOKBACK_MINUTES`` (from ``start - LOOKBACK_MINUTES`` on: the lookback of the window ending at
    ``start``), validated by the same suite.

    They are context only: never scored, quarantined or counted by the run that reads them; a window the suite
    rejects is simply not looked back at (that hour's own run quarantines it). So a window's features depend only on
    what landed, never on which hours were scored, or in which order. A file the hour before cannot read (a broken
    structure, which fails that hour, or a corrupt file, which that hour quarantines) is left out of the lookback
    with a warning, never failing this run: a failure stays the size of its cause. Its windows are then not looked
    back at, as after a gap; the scoring run names such files in its manifest (``validation.lookback_skipped_files``),
    and a re-run once the file is repaired computes the features with it. ``read``: what the hour before owns,
    when the caller read it with its own folders (``windows.read_owned_with_lookback``).
    """
    from sensor_scoring.validation import check_windows
    from sensor_scoring.validation.expectations import SchemaViolation
    from sensor_scoring.windows import WindowSchemaError, read_owned

    before = start - HOUR
    lookback = f"(read as the lookback of the windows from {start.isoformat()} on)"
    if read is None:  # not read with the run's own windows (``windows.read_owned_with_lookback``): read here
        read = read_owned(storage, container, before, start, late_folders, keep_broken=True)
    for broken in read.broken:
        log.warning("Lookback left out %s: %s %s", broken.file, broken.error, lookback)
    ends = read.windows["window_end"]
    recent = read.windows.loc[(ends >= pd.Timestamp(start - timedelta(minutes=LOOKBACK_MINUTES))).to_numpy()]
    if recent.empty:  # nothing landed before (a new fleet, a gap): no suite run on nothing
        return recent
    try:
        return check_windows(recent.reset_index(drop=True), before, start, bounds).valid
    except SchemaViolation as exc:
        raise WindowSchemaError(f"{exc} in the windows of the hour before {lookback}") from exc
