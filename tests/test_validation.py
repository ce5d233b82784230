"""Row checks: each bad row gets a reason, duplicates collapse, conflicts are quarantined, nothing is lost."""
from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.validation import check_windows, row_reasons


def frame(**overrides) -> pd.DataFrame:
    base = {"device_id": ["d1", "d1"], "tag": ["t", "t"],
            "window_end": pd.to_datetime(["2026-11-25T16:01Z", "2026-11-25T16:02Z"], utc=True),
            "value_avg": [1.0, 2.0], "value_min": [0.5, 1.0], "value_max": [1.5, 3.0], "value_std": [0.1, 0.2],
            "reading_count": [6, 6]}
    base.update(overrides)
    return pd.DataFrame(base)


def test_clean_rows_pass():
    checked = check_windows(frame())
    assert len(checked.valid) == 2 and checked.quarantined.empty and checked.duplicates == 0


def test_each_rule_names_its_reason():
    bad = frame(
        device_id=[None, "d1"], value_avg=[1.0, 9.0], value_std=[0.1, -1.0], reading_count=[6, 0],
    )
    reasons = row_reasons(bad)
    assert reasons.iloc[0] == "null_key"
    assert set(reasons.iloc[1].split(";")) == {"reading_count_invalid", "avg_outside_min_max", "negative_std"}
    assert row_reasons(frame(value_max=[np.inf, 3.0])).iloc[0] == "non_finite_value"
    assert row_reasons(frame(reading_count=[2.5, 6])).iloc[0] == "reading_count_invalid"


def test_average_of_equal_readings_may_differ_by_an_ulp():
    value = 0.1 + 0.2
    assert row_reasons(frame(value_min=[value, 1.0], value_avg=[value * (1 + 1e-15), 2.0], value_max=[value, 3.0])).iloc[0] == ""


def test_exact_duplicates_collapse_and_conflicts_are_quarantined():
    data = frame()
    doubled = pd.concat([data, data.iloc[[0]], data.iloc[[1]].assign(value_avg=2.5)], ignore_index=True)
    checked = check_windows(doubled)
    assert checked.duplicates == 1
    assert list(checked.valid["window_end"]) == [data["window_end"].iloc[0]]
    assert list(checked.quarantined["reason"]) == ["conflicting_duplicate", "conflicting_duplicate"]
    assert len(checked.valid) + len(checked.quarantined) + checked.duplicates == len(doubled)
