"""Aggregation (the Stream Analytics twin), landing layout and the parsers of every serialisation."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sensor_scoring.storage import LocalStorage
from sensor_scoring.windows import (
    SOURCE_COLUMN,
    WINDOW_COLUMNS,
    LandingPlan,
    WindowFileError,
    aggregate_readings,
    folders_for_interval,
    land_windows,
    owned_windows,
    parse_window_file,
    read_landed,
    read_owned,
    to_asa_json_lines,
)

UTC = timezone.utc


def readings(rows: list[tuple[str, str, str, float | None]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ts", "device_id", "tag", "value"])


def test_aggregate_matches_hand_computed_window():
    frame = aggregate_readings(
        readings(
            [
                ("2026-11-25T16:00:10Z", "d1", "t", 1.0),
                ("2026-11-25T16:00:30Z", "d1", "t", 2.0),
                ("2026-11-25T16:00:50Z", "d1", "t", 6.0),
            ]
        )
    )
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["window_end"] == pd.Timestamp("2026-11-25T16:01:00Z")
    assert (row["value_avg"], row["value_min"], row["value_max"], row["reading_count"]) == (3.0, 1.0, 6.0, 3)
    assert row["value_std"] == pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1))  # STDEV is the sample std


def test_window_is_open_at_start_and_closed_at_end():
    frame = aggregate_readings(
        readings(
            [
                ("2026-11-25T16:01:00Z", "d1", "t", 1.0),  # exactly on the boundary: closes the window ending 16:01
                ("2026-11-25T16:01:00.001Z", "d1", "t", 5.0),  # just after: next window
            ]
        )
    )
    assert list(frame["window_end"]) == [pd.Timestamp("2026-11-25T16:01Z"), pd.Timestamp("2026-11-25T16:02Z")]


def test_single_reading_has_zero_std_and_nulls_are_ignored():
    frame = aggregate_readings(
        readings([("2026-11-25T16:00:10Z", "d1", "t", 4.0), ("2026-11-25T16:00:20Z", "d1", "t", None)])
    )
    assert frame.iloc[0]["value_std"] == 0.0
    assert frame.iloc[0]["reading_count"] == 1


def test_aggregate_groups_by_device_and_tag():
    frame = aggregate_readings(
        readings(
            [
                ("2026-11-25T16:00:10Z", "d1", "a", 1.0),
                ("2026-11-25T16:00:10Z", "d1", "b", 2.0),
                ("2026-11-25T16:00:10Z", "d2", "a", 3.0),
            ]
        )
    )
    assert sorted(zip(frame["device_id"], frame["tag"])) == [("d1", "a"), ("d1", "b"), ("d2", "a")]


def test_aggregate_refuses_missing_columns():
    with pytest.raises(ValueError, match="missing"):
        aggregate_readings(pd.DataFrame({"ts": [], "value": []}))


def test_folders_include_late_ones_and_refuse_empty_interval():
    start = datetime(2026, 11, 25, 23, tzinfo=UTC)
    assert folders_for_interval(start, datetime(2026, 11, 26, 0, tzinfo=UTC)) == ["2026/11/25/23", "2026/11/26/00"]
    assert folders_for_interval(start, datetime(2026, 11, 26, 1, tzinfo=UTC), late_folders=0) == [
        "2026/11/25/23",
        "2026/11/26/00",
    ]
    with pytest.raises(ValueError):
        folders_for_interval(start, start)


def _hour_of_windows(hour: str = "2026-11-25T16:00Z", sensors: int = 2) -> pd.DataFrame:
    ends = pd.date_range(hour, periods=60, freq="min", tz="UTC")
    frame = pd.DataFrame(
        [
            {
                "device_id": f"d{s}",
                "tag": "t",
                "window_end": end,
                "value_avg": 1.0,
                "value_min": 0.5,
                "value_max": 1.5,
                "value_std": 0.2,
                "reading_count": 6,
            }
            for s in range(sensors)
            for end in ends
        ]
    )
    return frame


def test_landing_follows_stream_analytics_layout_and_is_idempotent(tmp_path):
    storage = LocalStorage(tmp_path)
    windows = _hour_of_windows()
    plan = LandingPlan(files_per_hour=3, late_minutes=2, late_share=1.0, seed=1)
    names = land_windows(storage, "windows", windows, plan)
    assert {n.rsplit("/", 1)[0] for n in names} == {"2026/11/25/16", "2026/11/25/17"}  # late windows in the next folder
    assert all(n.endswith(".json") and n.count("_") == 2 for n in names)
    assert land_windows(storage, "windows", windows, plan) == names  # same names: overwritten, not doubled
    landed, files = read_landed(storage, "windows", ["2026/11/25/16", "2026/11/25/17"])
    assert sorted(files) == sorted(names)
    assert len(landed) == len(windows)
    late = landed[landed[SOURCE_COLUMN].str.startswith("2026/11/25/17")]
    assert (late["window_end"] >= pd.Timestamp("2026-11-25T16:58Z")).all()


def test_selection_is_by_window_end_not_folder():
    windows = pd.concat([_hour_of_windows("2026-11-25T15:00Z"), _hour_of_windows("2026-11-25T16:00Z")])
    windows[SOURCE_COLUMN] = "2026/11/25/16/0_x_1.json"  # both hours in the folder of 16:00 (15:00's landed late)
    chosen = owned_windows(windows, datetime(2026, 11, 25, 16, tzinfo=UTC), datetime(2026, 11, 25, 17, tzinfo=UTC), 1)
    assert len(chosen) == 120
    assert chosen["window_end"].min() == pd.Timestamp("2026-11-25T16:00Z")
    assert chosen["window_end"].max() == pd.Timestamp("2026-11-25T16:59Z")


def test_read_owned_reads_own_and_late_folders_and_keeps_the_strays_of_its_own(tmp_path):
    """The one ownership rule, on landed files: own windows from any folder read, strays of its own folders."""
    storage = LocalStorage(tmp_path)
    one = _hour_of_windows(sensors=1).head(1).drop(columns="window_end")

    def land(folder: str, *ends: str) -> None:
        rows = pd.concat([one.assign(window_end=pd.Timestamp(end)) for end in ends], ignore_index=True)
        storage.write_bytes("windows", f"{folder}/0_{len(ends)}_{ends[0][11:13]}.json", to_asa_json_lines(rows))

    land("2026/11/25/16", "2026-11-25T16:10Z", "2026-11-25T15:59Z", "2026-11-25T12:00Z")  # own, previous', a stray
    land("2026/11/25/17", "2026-11-25T16:59Z", "2026-11-25T17:10Z")  # own (late), the next hour's
    land("2026/11/25/18", "2026-11-25T16:58Z")  # too late for late_folders=1: never read
    start, end = datetime(2026, 11, 25, 16, tzinfo=UTC), datetime(2026, 11, 25, 17, tzinfo=UTC)
    read = read_owned(storage, "windows", start, end, late_folders=1)
    assert read.folders == ["2026/11/25/16", "2026/11/25/17"] and len(read.files) == 2
    assert sorted(str(t) for t in read.windows["window_end"]) == [
        "2026-11-25 12:00:00+00:00",
        "2026-11-25 16:10:00+00:00",
        "2026-11-25 16:59:00+00:00",
    ]
    wider = read_owned(storage, "windows", start, end, late_folders=2)
    assert len(wider.windows) == 4  # the 18:00 folder's window joins; the stray stays a stray


def _serialised(windows: pd.DataFrame) -> dict[str, bytes]:
    lines = to_asa_json_lines(windows)
    array = json.dumps([json.loads(line) for line in lines.decode().splitlines()]).encode()
    csv = windows.to_csv(index=False).encode()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(windows, preserve_index=False), sink)
    return {"a.json": lines, "b.json": array, "c.csv": csv, "d.parquet": sink.getvalue()}


def test_every_stream_analytics_serialisation_parses_to_the_same_windows():
    windows = _hour_of_windows(sensors=1).head(5)
    parsed = [parse_window_file(name, data) for name, data in _serialised(windows).items()]
    for frame in parsed:
        pd.testing.assert_frame_equal(
            frame[WINDOW_COLUMNS].reset_index(drop=True), parsed[0][WINDOW_COLUMNS].reset_index(drop=True)
        )
    assert parsed[0]["window_end"].iloc[0] == pd.Timestamp("2026-11-25T16:00Z")


def test_asa_timestamps_have_seven_fraction_digits():
    line = to_asa_json_lines(_hour_of_windows(sensors=1).head(1)).decode().strip()
    assert json.loads(line)["window_end"] == "2026-11-25T16:00:00.0000000Z"


def test_missing_column_error_names_file_and_column():
    data = b'{"device_id": "d", "tag": "t", "window_end": "2026-11-25T16:00:00Z", "value_avg": 1}\n'
    with pytest.raises(WindowFileError, match=r"2026/11/25/16/x\.json: missing required column\(s\) value_min"):
        parse_window_file("2026/11/25/16/x.json", data)


def test_bad_type_and_garbage_are_named():
    windows = _hour_of_windows(sensors=1).head(1).assign(value_avg="warm")
    with pytest.raises(WindowFileError, match="f.csv: column value_avg"):
        parse_window_file("f.csv", windows.to_csv(index=False).encode())
    with pytest.raises(WindowFileError, match="g.parquet: cannot be parsed"):
        parse_window_file("g.parquet", b"PAR1 not really")
    with pytest.raises(WindowFileError, match="unknown serialisation"):
        parse_window_file("h.avro", b"")


def test_empty_file_is_no_windows():
    frame = parse_window_file("empty.json", b"")
    assert frame.empty and set(WINDOW_COLUMNS) <= set(frame.columns)


def test_a_growing_named_batch_replaces_itself_and_other_batches_never_collide(tmp_path):
    storage = LocalStorage(tmp_path)
    hour = _hour_of_windows(sensors=1)
    first = land_windows(storage, "windows", hour.head(30), batch="live/16")
    second = land_windows(storage, "windows", hour, batch="live/16")
    assert set(first) <= set(second)  # same names: the partial landing was replaced, not duplicated
    landed, _ = read_landed(storage, "windows", ["2026/11/25/16", "2026/11/25/17"])
    assert len(landed) == 60
    other = land_windows(storage, "windows", _hour_of_windows("2026-11-25T17:00Z", sensors=1))
    assert not set(other) & set(second)
