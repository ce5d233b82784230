"""Which windows an hour owns (selection by window_end, plus strays of its own folders), and its threshold param."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

import pandas as pd
import pytest

from sensor_scoring.steps.load import DEFAULT_MAX_QUARANTINE_SHARE
from sensor_scoring.windows import folder_hour, owned_windows, partition_hours

START, END = datetime(2026, 11, 25, 16, tzinfo=timezone.utc), datetime(2026, 11, 25, 17, tzinfo=timezone.utc)


def windows(*rows: tuple[str, str | None]) -> pd.DataFrame:
    """(source folder, window_end) pairs."""
    return pd.DataFrame(
        {
            "source_file": [f"{folder}/0_x_1.json" for folder, _ in rows],
            "window_end": pd.to_datetime([end for _, end in rows], utc=True),
        }
    )


def test_hour_owns_its_windows_from_any_folder_and_the_strays_of_its_own_folders():
    found = windows(
        ("2026/11/25/16", "2026-11-25T16:10Z"),  # its own window, own folder: owned
        ("2026/11/25/17", "2026-11-25T16:59Z"),  # its own window, late folder: owned
        ("2026/11/25/16", "2026-11-25T15:30Z"),  # previous hour's late window: that run reads this folder
        ("2026/11/25/16", "2026-11-25T13:30Z"),  # beyond LATE_HORIZON of its own hour: a stray, owned
        ("2026/11/25/16", "2026-11-25T17:00Z"),  # next hour's window in an earlier folder: a stray, owned
        ("2026/11/25/16", None),  # no window_end: a stray, owned
        ("2026/11/25/17", "2026-11-25T17:30Z"),  # next hour's, in its own folder: not this run's business
        ("2026/11/25/17", None),  # no window_end in the late folder: the next run's stray
    )
    owned = owned_windows(found, START, END, late_folders=1)
    assert [str(t) for t in owned["window_end"]] == [
        "2026-11-25 16:10:00+00:00",
        "2026-11-25 16:59:00+00:00",
        "2026-11-25 13:30:00+00:00",
        "2026-11-25 17:00:00+00:00",
        "NaT",
    ]
    assert len(owned_windows(found, START, END, late_folders=3)) == 5  # no parameter changes an owner


def test_partition_hour_is_the_window_end_hour_inside_the_interval_else_the_folder_hour():
    found = windows(
        ("2026/11/25/17", "2026-11-25T16:59Z"), ("2026/11/25/16", "2026-11-24T02:00Z"), ("2026/11/25/16", None)
    )
    assert [str(h) for h in partition_hours(found, START, END)] == ["2026-11-25 16:00:00+00:00"] * 3
    assert folder_hour("not/a/folder.json") is None


def test_max_quarantine_share_param_is_documented_and_bounded(sensor_dag):
    from airflow.sdk.exceptions import ParamValidationError

    param = sensor_dag.params.get_param("max_quarantine_share")
    assert param.value == DEFAULT_MAX_QUARANTINE_SHARE
    assert param.schema["title"] == "Max quarantine share" and "fails" in param.description
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(ParamValidationError):
            params = copy.deepcopy(sensor_dag.params)
            params["max_quarantine_share"] = bad
            params.validate()
