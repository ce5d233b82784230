"""Derived features: one function for training, scoring and the benchmark, depending only on the windows given."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from sensor_scoring import features
from sensor_scoring.contracts import FEATURES
from tests.support.helpers import START, fleet_windows

KEY = ["device_id", "tag", "window_end"]


@pytest.fixture(scope="module")
def windows() -> pd.DataFrame:
    """Two hours of 6 sensors with holes: single missing minutes, a 40-minute gap, a sensor starting late."""
    frame = fleet_windows(devices=2, tags=3, hours=2, seed=5)
    rng = np.random.default_rng(0)
    minute = (frame["window_end"] - pd.Timestamp(START)) // pd.Timedelta(minutes=1)
    holes = rng.random(len(frame)) < 0.15
    gap = (frame["device_id"] == "dev-0001") & (frame["tag"] == "pressure") & minute.between(30, 70)
    late = (frame["device_id"] == "dev-0000") & (frame["tag"] == "vibration") & (minute < 50)
    return frame.loc[~(holes | gap | late).to_numpy()].reset_index(drop=True)


def plain_rolling(windows: pd.DataFrame) -> pd.DataFrame:
    """The trailing level the plain pandas way, sensor by sensor: a time-based rolling median over the previous
    LOOKBACK_MINUTES (closed on the left: the window itself is not in it), the window's own value where empty."""
    parts = []
    for _, rows in windows.groupby(["device_id", "tag"]):
        series = rows.set_index("window_end")["value_avg"].sort_index()
        level = series.rolling(f"{features.LOOKBACK_MINUTES}min", closed="left").median().fillna(series)
        parts.append(rows.sort_values("window_end").assign(expected=(series - level).to_numpy()))
    return pd.concat(parts)


def test_trailing_level_equals_a_plain_per_sensor_rolling_median(windows):
    out = features.add_features(windows).merge(plain_rolling(windows)[[*KEY, "expected"]], on=KEY)
    assert len(out) == len(windows)
    np.testing.assert_allclose(out["level_deviation"], out["expected"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["log_value_std"], np.log(out["value_std"] + features.STD_FLOOR))
    np.testing.assert_array_equal(out["log_reading_count"], np.log(out["reading_count"]))


def test_rows_keep_their_order_and_index_and_order_does_not_matter(windows):
    shuffled = windows.sample(frac=1.0, random_state=3)
    out = features.add_features(shuffled)
    assert out.index.equals(shuffled.index) and out[list(windows.columns)].equals(shuffled)
    again = features.add_features(windows)
    pd.testing.assert_frame_equal(out.sort_index(), again)


def test_gap_rule_no_earlier_window_in_the_lookback_means_deviation_zero(windows):
    out = features.add_features(windows)
    first = out.sort_values("window_end").groupby(["device_id", "tag"]).head(1)
    assert (first["level_deviation"] == 0.0).all()  # the first window of every sensor (and the late starter)
    sensor = out[(out["device_id"] == "dev-0001") & (out["tag"] == "pressure")].sort_values("window_end")
    after_gap = sensor[sensor["window_end"] > pd.Timestamp(START + timedelta(minutes=70))].iloc[0]
    before = sensor[sensor["window_end"] < after_gap["window_end"]]["window_end"].max()
    assert after_gap["window_end"] - before > timedelta(minutes=features.LOOKBACK_MINUTES)
    assert after_gap["level_deviation"] == 0.0


def test_context_is_lookback_only_and_gives_what_the_whole_range_gives(windows):
    cut = pd.Timestamp(START + timedelta(hours=1))
    first, second = windows[windows["window_end"] <= cut], windows[windows["window_end"] > cut]
    together = features.add_features(windows)
    alone = features.add_features(second, context=first)
    assert alone.index.equals(second.index)  # context windows are never returned
    pd.testing.assert_frame_equal(alone, together.loc[second.index])
    # a context window with a window's key is ignored: the window itself counts
    doubled = pd.concat([first, second.head(5).assign(value_avg=1e6)])
    pd.testing.assert_frame_equal(features.add_features(second, context=doubled), alone)


def test_duplicate_windows_are_refused(windows):
    with pytest.raises(ValueError, match="unique"):
        features.add_features(pd.concat([windows, windows.head(1)]))


def test_feature_sets_and_what_old_versions_recorded():
    assert features.columns("window-v1") == FEATURES
    assert features.recorded_set(list(FEATURES)) == "window-v1"  # manifests before sets had names
    assert features.recorded_set(",".join(FEATURES)) == "window-v1"  # their index column
    assert features.recorded_set("context-v1") == "context-v1"
    for bad in (["value_avg"], "context-v9", None):
        with pytest.raises(ValueError, match="unknown feature set"):
            features.recorded_set(bad)
    with pytest.raises(ValueError, match="known: window-v1, context-v1"):
        features.columns("nope")


def test_derived_columns_are_never_made_up_where_the_context_is_unknown(windows):
    with pytest.raises(KeyError, match="add_features"):
        features.feature_matrix(windows, "context-v1")
    assert features.feature_matrix(windows).shape == (len(windows), len(FEATURES))


def test_no_windows_or_no_context(windows):
    empty = features.add_features(windows.iloc[:0], context=windows)
    assert empty.empty and set(features.DERIVED) <= set(empty.columns)
    assert len(features.add_features(windows, context=windows.iloc[:0])) == len(windows)


def test_a_broken_file_in_the_hour_before_is_left_out_of_the_lookback_with_a_warning(tmp_path, caplog):
    """A failure stays the size of its cause: the hour before fails on its broken file, the lookback leaves it out."""
    from sensor_scoring.storage import LocalStorage
    from sensor_scoring.windows import land_windows

    storage = LocalStorage(tmp_path)
    windows = fleet_windows(devices=1, tags=1, hours=2)
    land_windows(storage, "windows", windows)
    assert len(features.read_context(storage, "windows", START + timedelta(hours=1))) == 30  # its last 30 minutes
    assert features.read_context(storage, "windows", START).empty  # nothing landed before: the gap rule
    storage.write_bytes("windows", f"{START:%Y/%m/%d/%H}/0_broken_1.json", b'{"device_id": "d", "tag": "t"}\n')
    with caplog.at_level("WARNING", logger="sensor_scoring.features"):
        assert len(features.read_context(storage, "windows", START + timedelta(hours=1))) == 30
    assert "Lookback left out" in caplog.text and "0_broken_1.json: missing required column" in caplog.text
