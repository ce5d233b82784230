"""Row checks on landed windows: what is scored, what is quarantined (with a reason), what is a duplicate.

Nothing is dropped silently: every selected row ends up in exactly one of ``valid``, ``quarantined`` or the
``duplicates`` count, so the hour's accounting closes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from scoring.config import FEATURES, WINDOW_KEY
from scoring.windows import WINDOW_COLUMNS

REASON_COLUMN = "reason"
#: Relative slack for ``min <= avg <= max``: an average of equal readings may differ from them by an ulp.
ORDER_TOLERANCE = 1e-9


@dataclass
class Checked:
    valid: pd.DataFrame
    quarantined: pd.DataFrame
    duplicates: int


def row_reasons(windows: pd.DataFrame) -> pd.Series:
    """The failed checks of each row joined by ``;`` (empty string where the row is fine)."""
    reasons = pd.Series("", index=windows.index, dtype="object")

    def flag(mask: pd.Series | np.ndarray, reason: str) -> None:
        mask = pd.Series(mask, index=windows.index).fillna(True).astype(bool)
        reasons[mask] = reasons[mask].map(lambda r: f"{r};{reason}" if r else reason)

    keys_missing = windows[list(WINDOW_KEY)].isna().any(axis=1)
    keys_missing |= windows["device_id"].astype("string").str.strip().eq("").fillna(True)
    keys_missing |= windows["tag"].astype("string").str.strip().eq("").fillna(True)
    flag(keys_missing, "null_key")
    count = pd.to_numeric(windows["reading_count"], errors="coerce")
    flag(count.isna() | (count % 1 != 0) | (count < 1), "reading_count_invalid")
    values = windows[[f for f in FEATURES if f != "reading_count"]].to_numpy(dtype=float, na_value=np.nan)
    flag(~np.isfinite(values).all(axis=1), "non_finite_value")
    lo, avg, hi = (windows[c].to_numpy(dtype=float, na_value=np.nan) for c in ("value_min", "value_avg", "value_max"))
    slack = ORDER_TOLERANCE * np.maximum(1.0, np.abs(hi))
    with np.errstate(invalid="ignore"):
        flag((lo > avg + slack) | (avg > hi + slack), "avg_outside_min_max")
        flag(windows["value_std"].to_numpy(dtype=float, na_value=np.nan) < 0, "negative_std")
    return reasons


def check_windows(windows: pd.DataFrame) -> Checked:
    """Split an interval's windows into valid (unique per key), quarantined (with reason) and duplicates.

    Exact copies of a window (same values, any file) collapse to one and are counted. Copies that disagree
    are all quarantined as ``conflicting_duplicate``: there is no way to tell which one is right.
    """
    reasons = row_reasons(windows)
    bad = windows.loc[reasons != ""].assign(**{REASON_COLUMN: reasons[reasons != ""]})
    good = windows.loc[reasons == ""]
    unique = good.drop_duplicates(subset=WINDOW_COLUMNS, keep="first")
    duplicates = len(good) - len(unique)
    clash = unique.duplicated(subset=list(WINDOW_KEY), keep=False)
    conflicting = unique.loc[clash].assign(**{REASON_COLUMN: "conflicting_duplicate"})
    valid = unique.loc[~clash].copy()
    valid["reading_count"] = valid["reading_count"].astype("int64")
    quarantined = pd.concat([bad, conflicting], ignore_index=True) if len(conflicting) else bad.reset_index(drop=True)
    return Checked(valid=valid.reset_index(drop=True), quarantined=quarantined, duplicates=duplicates)
