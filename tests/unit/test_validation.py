"""The great-expectations suite: each rule names its reason, duplicates collapse, conflicts are quarantined."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sensor_scoring.validation import check_windows, row_reasons

START, END = pd.Timestamp("2026-11-25T16:00Z"), pd.Timestamp("2026-11-25T17:00Z")


def frame(**overrides) -> pd.DataFrame:
    base = {
        "device_id": ["d1", "d1"],
        "tag": ["t", "t"],
        "window_end": pd.to_datetime(["2026-11-25T16:01Z", "2026-11-25T16:02Z"], utc=True),
        "value_avg": [1.0, 2.0],
        "value_min": [0.5, 1.0],
        "value_max": [1.5, 3.0],
        "value_std": [0.1, 0.2],
        "reading_count": [6, 6],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def test_clean_rows_pass():
    checked = check_windows(frame(), START, END)
    assert len(checked.valid) == 2 and checked.quarantined.empty and checked.duplicates == 0
    assert checked.expectations and all(e["success"] for e in checked.expectations)


def test_each_rule_names_its_reason():
    bad = frame(device_id=[None, "d1"], value_avg=[1.0, 9.0], value_std=[0.1, -1.0], reading_count=[6, 0])
    reasons = row_reasons(bad)
    assert reasons.iloc[0] == "null_key"
    assert reasons.iloc[1] == "reading_count_invalid;avg_outside_min_max;negative_std"
    assert row_reasons(frame(value_std=[np.nan, 0.2])).iloc[0] == "non_finite_value"
    assert row_reasons(frame(value_max=[np.inf, 3.0])).iloc[0] == "non_finite_value;value_out_of_bounds"
    assert row_reasons(frame(reading_count=[2.5, 6])).iloc[0] == "reading_count_invalid"
    assert row_reasons(frame(tag=["  ", "t"])).iloc[0] == "null_key"
    late = frame(window_end=pd.to_datetime(["2026-11-25T17:00Z", "2026-11-25T16:59Z"], utc=True))
    assert list(row_reasons(late, START, END)) == ["window_outside_interval", ""]


def test_average_of_equal_readings_may_differ_by_an_ulp():
    value = 0.1 + 0.2  # equal readings: no spread either (std 0)
    assert (
        row_reasons(
            frame(
                value_min=[value, 1.0],
                value_avg=[value * (1 + 1e-15), 2.0],
                value_max=[value, 3.0],
                value_std=[0.0, 0.2],
            )
        ).iloc[0]
        == ""
    )
    assert (
        row_reasons(
            frame(
                value_min=[value, 1.0],
                value_avg=[value * (1 + 1e-6), 2.0],
                value_max=[value, 3.0],
                value_std=[0.0, 0.2],
            )
        ).iloc[0]
        == "avg_outside_min_max"
    )


def test_physical_bounds_per_tag_from_the_packaged_file_and_the_environment(monkeypatch):
    from sensor_scoring.validation.expectations import load_bounds

    cold = frame(tag=["temperature", "humidity"], value_min=[-300.0, -300.0], value_avg=[1.0, 1.0])
    assert list(row_reasons(cold)) == ["value_out_of_bounds", ""]  # packaged: temperature >= -273.15
    monkeypatch.setenv(
        "SCORING_PHYSICAL_BOUNDS",
        json.dumps({"default": {"min": 0, "max": None}, "tags": {"temperature": {"min": -400, "max": 50}}}),
    )
    assert list(row_reasons(cold)) == ["", "value_out_of_bounds"]
    with pytest.raises(ValueError, match="min 5.0 above max 1.0"):
        load_bounds(json.dumps({"default": {"min": 5, "max": 1}}))


IMPOSSIBLE = [
    pytest.param(
        {"reading_count": [1, 6], "value_std": [0.0, 0.2]}, "single_reading_spread", id="one-reading-min-below-max"
    ),
    pytest.param(
        {"reading_count": [1, 6], "value_min": [1.0, 1.0], "value_max": [1.0, 3.0], "value_std": [1e-12, 0.2]},
        "single_reading_spread",
        id="one-reading-with-a-std",
    ),
    pytest.param({"value_std": [0.6, 0.2]}, "std_exceeds_range", id="std-above-half-the-range-for-6"),
    pytest.param(
        {"reading_count": [2, 6], "value_std": [np.sqrt(0.5) + 1e-5, 0.2]},
        "std_exceeds_range",
        id="two-readings-above-range-over-sqrt-2",
    ),
    pytest.param(
        {"value_min": [1.0, 1.0], "value_max": [1.0, 3.0], "value_avg": [1.0, 2.0], "value_std": [0.01, 0.2]},
        "std_exceeds_range",
        id="equal-readings-with-a-spread",
    ),
    pytest.param({"reading_count": [1e18, 6]}, "reading_count_implausible", id="count-1e18"),
    pytest.param({"reading_count": [1_200_001, 6]}, "reading_count_implausible", id="one-above-the-standard-maximum"),
]


@pytest.mark.parametrize("changes,reason", IMPOSSIBLE)
def test_impossible_aggregates_are_quarantined_with_their_reason(changes, reason):
    assert list(row_reasons(frame(**changes))) == [reason, ""]


POSSIBLE = [
    pytest.param(
        {"reading_count": [1, 6], "value_min": [1.0, 1.0], "value_max": [1.0, 3.0], "value_std": [0.0, 0.2]},
        id="one-reading",
    ),
    pytest.param({"reading_count": [2, 6], "value_std": [np.sqrt(0.5), 0.2]}, id="two-readings-at-the-bound"),
    pytest.param({"reading_count": [1_200_000, 6]}, id="the-standard-maximum"),
    pytest.param(
        {"value_min": [1e3, 1.0], "value_max": [1e3, 3.0], "value_avg": [1e3, 2.0], "value_std": [3e-5, 0.2]},
        id="equal-readings-with-one-pass-rounding",
    ),
]


@pytest.mark.parametrize("changes", POSSIBLE)
def test_possible_aggregates_pass(changes):
    assert list(row_reasons(frame(**changes))) == ["", ""]


def test_max_sample_std_is_the_sample_std_of_half_the_readings_at_each_end_and_bounds_any_readings():
    """The bound of std_exceeds_range is exact (reached) and holds for aggregate_readings' windows (STDEV, n - 1)."""
    from sensor_scoring.validation.expectations import max_sample_std
    from sensor_scoring.windows import aggregate_readings

    for n in (2, 3, 4, 7, 60):
        extreme = np.array([0.0] * (n // 2) + [5.0] * (n - n // 2))
        bound = max_sample_std(np.array([n]), np.array([0.0]), np.array([5.0]))[0]
        assert extreme.std(ddof=1) <= bound * (1 + 1e-12)
        if n % 2 == 0:
            assert extreme.std(ddof=1) == pytest.approx(bound, rel=1e-12)  # reached: the bound is the least one
    rng = np.random.default_rng(3)
    draws = []
    for draw in range(300):  # spreads of 1e-3 to 1e3, and two-valued readings (the extreme case), n of 1 to 40
        n = int(rng.integers(1, 40))
        values = rng.normal(size=n) * 10.0 ** rng.integers(-3, 4) if draw % 2 else rng.integers(0, 2, n) * 7.3 + 100
        draws.append(
            pd.DataFrame(
                {
                    "ts": pd.Timestamp("2026-11-25T16:00:01Z") + pd.to_timedelta(np.arange(n), unit="s"),
                    "device_id": f"d{draw}",
                    "tag": "t",
                    "value": values,
                }
            )
        )
    windows = aggregate_readings(pd.concat(draws, ignore_index=True))
    assert len(windows) == 300 and (row_reasons(windows) == "").all()


def test_max_readings_per_minute_comes_from_the_bounds(monkeypatch):
    from sensor_scoring.validation.expectations import load_bounds

    huge = frame(reading_count=[5_000_000, 6])
    assert list(row_reasons(huge)) == ["reading_count_implausible", ""]
    monkeypatch.setenv("SCORING_PHYSICAL_BOUNDS", json.dumps({"max_readings_per_minute": 6_000_000}))
    assert list(row_reasons(huge)) == ["", ""]
    monkeypatch.setenv("SCORING_PHYSICAL_BOUNDS", json.dumps({"max_readings_per_minute": None}))
    assert list(row_reasons(frame(reading_count=[1e15, 6]))) == ["", ""]
    for wrong in (0, "many", True):
        with pytest.raises(ValueError, match="max_readings_per_minute"):
            load_bounds(json.dumps({"max_readings_per_minute": wrong}))


def test_exact_duplicates_collapse_and_conflicts_are_quarantined():
    data = frame()
    doubled = pd.concat([data, data.iloc[[0]], data.iloc[[1]].assign(value_avg=2.5)], ignore_index=True)
    checked = check_windows(doubled)
    assert checked.duplicates == 1 and list(checked.duplicate_index) == [2]
    assert list(checked.valid["window_end"]) == [data["window_end"].iloc[0]]
    assert list(checked.quarantined["reason"]) == ["conflicting_duplicate", "conflicting_duplicate"]
    assert len(checked.valid) + len(checked.quarantined) + checked.duplicates == len(doubled)


def test_a_wrong_column_type_is_a_schema_violation_naming_the_column():
    from sensor_scoring.validation.expectations import SchemaViolation

    with pytest.raises(SchemaViolation, match="column value_avg"):
        check_windows(frame(value_avg=["1.0", "2.0"]))


def test_great_expectations_is_loaded_only_by_validation():
    """Every task and shard process imports the steps without it: it loads where the suite runs (a shard's
    ``check_shard`` in score_shard, training's ``read_range``) or its bounds are read (commit's report)."""
    steps = ", ".join(f"sensor_scoring.steps.{name}" for name in ("landed", "load", "plan", "score", "commit"))
    probe = (
        f"import sys, {steps}, sensor_scoring.cli, sensor_scoring_airflow.context; "
        "print('gx' if 'great_expectations' in sys.modules else 'none')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "none", done.stderr[-2000:]
