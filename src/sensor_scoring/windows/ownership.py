"""Which hour owns a landed window: the one rule that training and scoring both read windows by.

Stream Analytics batches its output, so a folder ``YYYY/MM/DD/HH`` may hold windows of neighbouring hours and
an hour's windows may land up to ``late_folders`` folders later. A run of [start, end) reads its own folders
and ``late_folders`` more, and owns:

- every window whose ``window_end`` lies in [start, end), from whichever folder it was read; and
- the *strays* of its own folders: windows that no run will ever read where they are, because their
  ``window_end`` is missing or their own hour's run (which reads that hour's folder and ``late_folders``
  more) does not reach this folder. Strays are validated, and so quarantined as ``window_outside_interval``
  or ``null_key``, by the run that found them: nothing landed is silently skipped by every hour.

The rule assumes every run uses the same ``late_folders``. A window's partition (the hour it is committed
under) is its window_end's hour when inside the interval, else the hour of the folder it was found in.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from sensor_scoring import layout
from sensor_scoring.contracts import SOURCE_COLUMN
from sensor_scoring.storage import Storage
from sensor_scoring.windows.formats import LandedFiles, read_landed_files

HOUR = layout.HOUR
folder_for = layout.window_folder
folder_hour = layout.window_folder_hour


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


def _folder_hours(files: pd.Series) -> pd.Series:
    """``folder_hour`` of each row's source file, computed once per distinct file (an hour has few files)."""
    hours = {name: folder_hour(str(name)) for name in pd.unique(files.dropna())}
    return pd.to_datetime(files.map(hours), utc=True)


def _inside(ends: pd.Series, start: datetime, end: datetime) -> pd.Series:
    """window_end in [start, end); a missing window_end is not inside."""
    return ((ends >= pd.Timestamp(start)) & (ends < pd.Timestamp(end))).fillna(False).astype(bool)


def owned_windows(windows: pd.DataFrame, start: datetime, end: datetime, late_folders: int) -> pd.DataFrame:
    """The rows of ``windows`` (read from the run's folders) that the run of [start, end) owns: see the module."""
    ends = windows["window_end"]
    inside = _inside(ends, start, end)
    folder = _folder_hours(windows[SOURCE_COLUMN])
    own_folder = ((folder >= pd.Timestamp(start)) & (folder < pd.Timestamp(end))).fillna(False).astype(bool)
    own_hour = ends.dt.floor("h")
    claimed = ((folder >= own_hour) & (folder <= own_hour + pd.Timedelta(hours=late_folders))).fillna(False)
    stray = own_folder & ~inside & ~claimed.astype(bool)
    return windows.loc[inside | stray].reset_index(drop=True)


def partition_hours(frame: pd.DataFrame, start: datetime, end: datetime) -> pd.Series:
    """The hour partition each row belongs to: its window_end's hour inside [start, end), else the hour of
    the folder it landed in (a stray, or a window without window_end, is kept where it was found)."""
    ends = frame["window_end"]
    by_window = ends.dt.floor("h")
    by_folder = _folder_hours(frame[SOURCE_COLUMN])
    return by_window.where(_inside(ends, start, end), by_folder).astype("datetime64[ns, UTC]")


def read_owned(storage: Storage, container: str, start: datetime, end: datetime, late_folders: int) -> LandedFiles:
    """Read the folders of [start, end) and ``late_folders`` more, keeping the windows the interval owns."""
    read = read_landed_files(storage, container, folders_for_interval(start, end, late_folders=late_folders))
    read.windows = owned_windows(read.windows, start, end, late_folders)
    read.rejected = owned_windows(read.rejected, start, end, late_folders)
    return read
