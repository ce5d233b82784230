"""Which hour owns a landed window: the one rule that training and scoring both read windows by.

Stream Analytics batches its output, so a folder ``YYYY/MM/DD/HH`` may hold windows of neighbouring hours and
an hour's windows may land a folder or so later. The owner of a window is decided by the window alone (its
``window_end`` and the folder it landed in), never by which run read which folders with which parameter:

- a window whose folder is its own hour's or at most ``LATE_HORIZON`` folders later belongs to the hour of
  its ``window_end``;
- any other window (``window_end`` missing or unreadable, later than its folder's hour, or landed more than
  ``LATE_HORIZON`` folders late) is a **stray** of the folder it landed in: that folder's hour owns it and
  quarantines it (``window_landed_early`` if its window_end is in an hour after its folder's,
  ``window_outside_interval`` otherwise, or the reader's reason), so nothing landed is skipped. An early window (the
  one ending exactly at the next hour's start, found in the folder before) stays the folder's: the runs of its own
  hour read their folder and later ones, never an earlier folder as their own, so owning it there would need every
  reader of an hour (scoring, training, the lookback) to read one folder more, and a producer writing ahead of its
  hour is a fault to see, not a batching delay to absorb.
- a corrupt file, whose windows cannot be placed, is owned by its folder's hour (``corrupt_owner``): only that
  hour's run lists and copies it, though the run of the hour before reads the folder for its late windows.

Every run reads its interval's folders and at least ``LATE_HORIZON`` more (a larger ``late_folders`` reads more
folders but changes no owner), so whatever ``late_folders`` each run used and in whatever order hours are run,
re-run or backfilled, a landed window ends in exactly one hour's partition. A window's partition is its owner.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from sensor_scoring import layout
from sensor_scoring.contracts import REASON_COLUMN, SOURCE_COLUMN
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


#: Folders after its own hour's in which a window still belongs to its hour (the default ``late_folders`` of
#: the DAG); one constant for every run, so that no parameter of a run changes an owner.
LATE_HORIZON = 1


def _folder_hours(files: pd.Series) -> pd.Series:
    """``folder_hour`` of each row's source file, computed once per distinct file (an hour has few files)."""
    hours = {name: folder_hour(str(name)) for name in pd.unique(files.dropna())}
    return pd.to_datetime(files.map(hours), utc=True)


def owner_hours(windows: pd.DataFrame) -> pd.Series:
    """The hour that owns each row (see the module): its window_end's hour if it landed in that hour's folder
    or up to ``LATE_HORIZON`` folders later, else the hour of the folder it landed in. A row whose file is in no
    hour folder is owned by its window_end's hour."""
    own_hour = windows["window_end"].dt.floor("h")
    folder = _folder_hours(windows[SOURCE_COLUMN])
    lateness = folder - own_hour
    in_horizon = ((lateness >= pd.Timedelta(0)) & (lateness <= LATE_HORIZON * pd.Timedelta(hours=1))).fillna(False)
    owner = own_hour.where(in_horizon.astype(bool) | folder.isna(), folder)
    return owner.astype("datetime64[ns, UTC]")


def _inside(hours: pd.Series, start: datetime, end: datetime) -> pd.Series:
    """hour in [start, end); a missing one is not inside."""
    return ((hours >= pd.Timestamp(start)) & (hours < pd.Timestamp(end))).fillna(False).astype(bool)


def owned_windows(windows: pd.DataFrame, start: datetime, end: datetime, late_folders: int = 0) -> pd.DataFrame:
    """The rows of ``windows`` that the run of [start, end) owns (see the module). ``late_folders`` is accepted
    for the callers that pass it: it changes which folders are read, never who owns a window."""
    del late_folders
    return windows.loc[_inside(owner_hours(windows), start, end)].reset_index(drop=True)


def strays(windows: pd.DataFrame) -> pd.Series:
    """Rows owned by their folder's hour rather than their window_end's (a missing window_end included)."""
    own_hour = windows["window_end"].dt.floor("h")
    return (owner_hours(windows) != own_hour).fillna(True).astype(bool) | own_hour.isna()


def partition_hours(frame: pd.DataFrame, start: datetime, end: datetime) -> pd.Series:
    """The hour partition each row belongs to: its owner (``start``/``end`` kept for the callers' signature)."""
    del start, end
    return owner_hours(frame)


def read_owned(
    storage: Storage,
    container: str,
    start: datetime,
    end: datetime,
    late_folders: int = LATE_HORIZON,
    *,
    keep_broken: bool = False,
) -> LandedFiles:
    """Read the folders of [start, end) and ``max(late_folders, LATE_HORIZON)`` more (fewer would miss windows
    the interval owns), keeping the windows the interval owns. ``keep_broken``: see ``read_landed_files``."""
    later = max(late_folders, LATE_HORIZON)
    folders = folders_for_interval(start, end, late_folders=later)
    read = read_landed_files(storage, container, folders, keep_broken=keep_broken)
    read.windows = owned_windows(read.windows, start, end, late_folders)
    read.rejected = owned_windows(read.rejected, start, end, late_folders)
    return read


def read_owned_with_lookback(
    storage: Storage, container: str, start: datetime, end: datetime, late_folders: int = LATE_HORIZON
) -> tuple[LandedFiles, LandedFiles]:
    """``read_owned`` of [start, end) and of the hour before it (what a lookback reads), from one read: the folder
    they share (``start``'s, where the hour before's late windows land) is listed, downloaded and parsed once. Each
    result names only its own folders' files, so the interval's file accounting is what ``read_owned`` gives.

    A file whose structure breaks the contract fails the interval only if it is in the interval's folders (as
    ``read_owned`` fails); one in the hour before's own folder, read only for the lookback, is in the second
    result's ``broken``, its windows left out: the hour before fails on it, this interval does not."""
    before = start - HOUR
    own = folders_for_interval(start, end, late_folders=max(late_folders, LATE_HORIZON))
    previous = folders_for_interval(before, start, late_folders=LATE_HORIZON)
    read = read_landed_files(storage, container, list(dict.fromkeys(previous + own)), keep_broken=True)
    mine = restricted(read, own, start, end)
    mine.raise_broken()
    return mine, restricted(read, previous, before, start)


def restricted(read: LandedFiles, folders: list[str], start: datetime, end: datetime) -> LandedFiles:
    """What reading only ``folders`` would have given, keeping the windows [start, end) owns."""
    prefixes = tuple(f.rstrip("/") + "/" for f in folders)
    return LandedFiles(
        folders=folders,
        windows=owned_windows(read.windows, start, end),
        files=[f for f in read.files if f.startswith(prefixes)],
        corrupt=[c for c in read.corrupt if c.file.startswith(prefixes)],
        empty=[f for f in read.empty if f.startswith(prefixes)],
        rejected=owned_windows(read.rejected, start, end),
        broken=[b for b in read.broken if b.file.startswith(prefixes)],
    )


def corrupt_owner(name: str) -> datetime | None:
    """The hour that owns a corrupt file (its windows cannot be placed): its folder's, like any window the folder's
    hour cannot place elsewhere (see the module); None for a file in no hour folder."""
    return folder_hour(name)


def set_aside_strays(landed: pd.DataFrame, rejected: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Strays (owned by the folder they landed in, not by their window_end's hour: see the module) are
    quarantined whatever else they are, also when their window_end lies inside a multi-hour interval:
    ``window_landed_early`` when their window_end's hour is after their folder's, else ``window_outside_interval``;
    a missing window_end is left to the suite (``null_key``)."""
    stray = (strays(landed) & landed["window_end"].notna()).to_numpy()
    if not stray.any():
        return landed, rejected
    moved = landed.loc[stray]
    early = (moved["window_end"].dt.floor("h") > _folder_hours(moved[SOURCE_COLUMN])).fillna(False).to_numpy(bool)
    moved = moved.assign(**{REASON_COLUMN: np.where(early, "window_landed_early", "window_outside_interval")})
    moved["reading_count"] = moved["reading_count"].astype("float64")
    kept = landed.loc[~stray].reset_index(drop=True)
    return kept, pd.concat([rejected, moved], ignore_index=True)
