"""Aggregation (the Stream Analytics twin), landing layout and the parsers of every serialisation."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sensor_scoring.storage import LocalStorage
from sensor_scoring.windows import (
    SOURCE_COLUMN,
    WINDOW_COLUMNS,
    CorruptFileError,
    LandingPlan,
    WindowFileError,
    aggregate_readings,
    folders_for_interval,
    land_windows,
    owned_windows,
    parse_window_file,
    read_landed,
    read_landed_files,
    read_owned,
    read_owned_with_lookback,
    read_window_file,
    set_aside_strays,
    sniff,
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
    land("2026/11/25/18", "2026-11-25T16:58Z")  # beyond LATE_HORIZON (1): a stray of the 18:00 folder
    start, end = datetime(2026, 11, 25, 16, tzinfo=UTC), datetime(2026, 11, 25, 17, tzinfo=UTC)
    read = read_owned(storage, "windows", start, end, late_folders=1)
    assert read.folders == ["2026/11/25/16", "2026/11/25/17"] and len(read.files) == 2
    assert sorted(str(t) for t in read.windows["window_end"]) == [
        "2026-11-25 12:00:00+00:00",
        "2026-11-25 16:10:00+00:00",
        "2026-11-25 16:59:00+00:00",
    ]
    wider = read_owned(storage, "windows", start, end, late_folders=2)
    assert len(wider.files) == 3 and len(wider.windows) == 3  # more folders read, no owner changed
    narrower = read_owned(storage, "windows", start, end, late_folders=0)
    assert narrower.folders == read.folders and len(narrower.windows) == 3  # never fewer than LATE_HORIZON
    eighteen = read_owned(storage, "windows", end + timedelta(hours=1), end + timedelta(hours=2), late_folders=0)
    assert list(eighteen.windows["window_end"].astype(str)) == ["2026-11-25 16:58:00+00:00"]  # its owner


def test_every_landed_window_has_one_owner_whatever_late_folders_and_run_order():
    """Property over seeded random landings and run sequences (hours run, re-run and backfilled in any order,
    each with its own late_folders 0-3): after every hour has run at least once, each landed window is in
    exactly one hour's last result."""
    rng = np.random.default_rng(20261202)
    base = datetime(2026, 11, 25, 0, tzinfo=UTC)
    hours = [base + timedelta(hours=h) for h in range(8)]
    for trial in range(12):
        n = 200
        own = rng.integers(0, 8, n)
        lateness = rng.choice([-2, -1, 0, 0, 0, 1, 1, 2, 3, 30], n)  # early, on time, late, very late, strays
        folder = np.clip(own + lateness, 0, 7)
        ends = [base + timedelta(hours=int(h), minutes=int(m)) for h, m in zip(own, rng.integers(0, 60, n))]
        windows = pd.DataFrame(
            {
                "window_id": range(n),
                "window_end": pd.to_datetime(ends, utc=True),
                SOURCE_COLUMN: [
                    f"{base + timedelta(hours=int(f)):%Y/%m/%d/%H}/0_{i}_1.json" for i, f in enumerate(folder)
                ],
            }
        )
        windows.loc[rng.random(n) < 0.05, "window_end"] = pd.NaT  # no window_end: a stray of its folder
        last: dict[datetime, set[int]] = {}
        order = list(rng.permutation(8)) + list(rng.integers(0, 8, 12))  # every hour once, then re-runs
        for h in order:
            start, late = hours[int(h)], int(rng.integers(0, 4))
            folders = folders_for_interval(start, start + timedelta(hours=1), late_folders=max(late, 1))
            seen = windows[windows[SOURCE_COLUMN].str[:13].isin(folders)]  # what this run reads
            last[start] = set(owned_windows(seen, start, start + timedelta(hours=1), late)["window_id"])
        owners = [h for h, ids in last.items() for _ in ids]
        everything = [i for ids in last.values() for i in ids]
        assert sorted(everything) == list(range(n)), f"trial {trial}: a window in no or in two hours"
        assert len(owners) == n


def test_a_stray_ahead_of_its_folder_landed_early_and_one_far_behind_is_outside_the_interval():
    """The window ending exactly at 17:00 found in folder 16 came early (its hour's runs never read folder 16 as
    their own): quarantined by 16:00 as ``window_landed_early``; a window two folders late is
    ``window_outside_interval``; both are owned by their folder's hour."""
    from sensor_scoring.windows import empty_rejected, owner_hours

    frame = _hour_of_windows(sensors=1).head(3).copy()
    frame["window_end"] = pd.to_datetime(["2026-11-25T17:00Z", "2026-11-25T14:30Z", "2026-11-25T16:30Z"], utc=True)
    frame[SOURCE_COLUMN] = pd.array(["2026/11/25/16/a.json"] * 3, dtype="string")
    assert list(owner_hours(frame)) == [pd.Timestamp("2026-11-25T16:00Z")] * 3
    kept, moved = set_aside_strays(frame, empty_rejected())
    assert list(kept["window_end"]) == [pd.Timestamp("2026-11-25T16:30Z")]
    assert list(moved["reason"]) == ["window_landed_early", "window_outside_interval"]


def test_a_broken_file_read_only_for_the_lookback_is_kept_aside_and_one_of_the_interval_fails(tmp_path):
    """read_owned_with_lookback: a file without a contract column in the hour before's own folder is in the
    lookback's ``broken`` (its windows left out); the same file in a folder the interval reads fails it."""
    storage = LocalStorage(tmp_path)
    start = datetime(2026, 11, 25, 16, tzinfo=UTC)
    land_windows(storage, "windows", _hour_of_windows(sensors=1), LandingPlan(late_share=0.0))
    broken = b'{"device_id": "d", "tag": "t", "window_end": "2026-11-25T15:10:00Z"}\n'
    storage.write_bytes("windows", "2026/11/25/15/0_x_1.json", broken)
    storage.write_bytes("windows", "2026/11/25/15/0_t_1.json", b'{"device_id": "d')
    own, before = read_owned_with_lookback(storage, "windows", start, start + timedelta(hours=1))
    assert len(own.windows) == 60 and not own.broken and not own.corrupt
    [skipped] = before.broken
    assert skipped.file == "2026/11/25/15/0_x_1.json" and "missing required column(s) value_avg" in skipped.error
    assert [c.file for c in before.corrupt] == ["2026/11/25/15/0_t_1.json"]
    assert skipped.file not in before.read
    storage.write_bytes("windows", "2026/11/25/17/0_x_1.json", broken)  # the interval's late folder
    with pytest.raises(WindowFileError, match=r"17/0_x_1\.json: missing required column"):
        read_owned_with_lookback(storage, "windows", start, start + timedelta(hours=1))


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


def test_bad_type_is_a_rejected_row_and_garbage_a_corrupt_file():
    windows = _hour_of_windows(sensors=1).head(2)
    windows["value_avg"] = windows["value_avg"].astype(object)
    windows.loc[0, "value_avg"] = "warm"
    parsed = read_window_file("f.csv", windows.to_csv(index=False).encode())
    assert len(parsed.windows) == 1 and list(parsed.rejected["reason"]) == ["wrong_type"]
    with pytest.raises(CorruptFileError, match="g.parquet: cannot be parsed as parquet") as caught:
        read_window_file("g.parquet", b"PAR1 not really")
    assert caught.value.reason == "corrupt_file"
    with pytest.raises(CorruptFileError, match="h.avro: unsupported format") as caught:
        read_window_file("h.avro", b"just some words\n")
    assert caught.value.reason == "unsupported_format"
    with pytest.raises(CorruptFileError, match="i.json: not UTF-8") as caught:
        read_window_file("i.json", b"{\xff\xfe}")
    assert caught.value.reason == "not_utf8"


def _asa_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "device_id": "dev-1",
        "tag": "temperature",
        "window_end": "2026-11-25T16:10:00.0000000Z",
        "value_avg": 0.30000000000000004,
        "value_min": 0.1,
        "value_max": 1.7976931348623157e308,
        "value_std": 5e-324,
        "reading_count": 60,
    }
    return {**row, **changes}


STRICT = [
    pytest.param({}, None, id="as-stream-analytics-writes-it"),
    pytest.param({"reading_count": 60.0}, None, id="whole-float-count-is-that-integer"),
    pytest.param({"window_end": "2026-11-25T17:10:00+01:00"}, None, id="offset-is-converted-to-utc"),
    pytest.param({"window_end": "2026-11-25 16:10:00Z"}, None, id="space-separator"),
    pytest.param({"device_id": 123}, None, id="integer-device-id-is-its-decimal-text"),
    pytest.param({"device_id": 123.0}, "wrong_type", id="float-device-id"),
    pytest.param({"device_id": 1e3}, "wrong_type", id="exponent-device-id"),
    pytest.param({"device_id": {"id": 1}}, "wrong_type", id="object-device-id"),
    pytest.param({"tag": [1]}, "wrong_type", id="array-tag"),
    pytest.param({"tag": True}, "wrong_type", id="boolean-tag"),
    pytest.param({"value_avg": "NaN"}, "wrong_type", id="nan-string"),
    pytest.param({"value_min": "3"}, "wrong_type", id="number-in-a-string"),
    pytest.param({"value_std": False}, "wrong_type", id="boolean-value"),
    pytest.param({"reading_count": True}, "wrong_type", id="boolean-count"),
    pytest.param({"reading_count": "3"}, "wrong_type", id="count-in-a-string"),
    pytest.param({"reading_count": 2**60}, "wrong_type", id="count-beyond-2-53"),
    pytest.param({"window_end": 1764087000}, "wrong_type", id="epoch-number-window-end"),
    pytest.param({"window_end": "2500-01-01T00:00:00.0000000Z"}, "bad_timestamp", id="year-2500"),
    pytest.param({"window_end": "2026-11-25T16:10:00"}, "bad_timestamp", id="no-time-zone"),
    pytest.param({"window_end": "2026-13-25T16:10:00Z"}, "bad_timestamp", id="month-13"),
    pytest.param({"window_end": "yesterday"}, "bad_timestamp", id="not-a-timestamp"),
    pytest.param({"window_end": "2026-11-25T16:10:00.0000001Z"}, "window_not_on_minute", id="seventh-digit"),
    pytest.param({"window_end": "2026-11-25T16:05:30.0000000Z"}, "window_not_on_minute", id="off-the-minute"),
    pytest.param({"device_id": 7.5, "window_end": "2500-01-01T00:00:00Z"}, "wrong_type;bad_timestamp", id="two"),
]


@pytest.mark.parametrize("changes,reason", STRICT)
def test_each_value_is_taken_by_its_stated_rule_or_rejected_with_a_reason(changes, reason):
    good = _asa_row(window_end="2026-11-25T16:11:00Z")
    parsed = read_window_file("w.json", (json.dumps(_asa_row(**changes)) + "\n" + json.dumps(good)).encode())
    assert parsed.rows == 2 and len(parsed.windows) == (2 if reason is None else 1)  # the good row always stays
    if reason is None:
        row = parsed.windows.iloc[0]
        assert row["window_end"] == pd.Timestamp("2026-11-25T16:10Z") and row["reading_count"] == 60
        assert parsed.windows["reading_count"].dtype == "int64"
    else:
        assert list(parsed.rejected["reason"]) == [reason] and list(parsed.rejected[SOURCE_COLUMN]) == ["w.json"]


INTEGER_KEYS = [
    pytest.param(123, "123", id="integer"),
    pytest.param(-7, "-7", id="negative"),
    pytest.param(0, "0", id="zero"),
    pytest.param(2**70, str(2**70), id="beyond-int64"),
]


@pytest.mark.parametrize("value,text", INTEGER_KEYS)
def test_integer_keys_are_their_decimal_text_in_every_serialisation(value, text):
    """One rule for every format: an integer key is its decimal text; a float or boolean key is ``wrong_type``."""
    rows = [_asa_row(device_id=value, tag=value), _asa_row(device_id=1.0, window_end="2026-11-25T16:11:00Z")]
    as_array = read_window_file("a.json", json.dumps(rows).encode())
    as_lines = read_window_file("l.json", "\n".join(json.dumps(r) for r in rows).encode())
    for parsed in (as_array, as_lines):
        assert list(parsed.windows["device_id"]) == [text] and list(parsed.windows["tag"]) == [text]
        assert list(parsed.rejected["reason"]) == ["wrong_type"]  # the float id
    if abs(value) < 2**63:  # Parquet and Avro integer columns hold int64
        frame = pd.DataFrame([_asa_row(device_id=value)]).assign(window_end=pd.Timestamp("2026-11-25T16:10Z"))
        frame["device_id"] = frame["device_id"].astype("int64")
        sink = io.BytesIO()
        frame.to_parquet(sink, index=False)
        assert list(read_window_file("p.parquet", sink.getvalue()).windows["device_id"]) == [text]
        import fastavro

        fields = [{"name": "device_id", "type": "long"}, {"name": "tag", "type": "string"}]
        fields += [{"name": "window_end", "type": "string"}]
        fields += [{"name": c, "type": "double"} for c in ("value_avg", "value_min", "value_max", "value_std")]
        fields += [{"name": "reading_count", "type": "long"}]
        avro = io.BytesIO()
        schema = fastavro.parse_schema({"type": "record", "name": "w", "fields": fields})
        fastavro.writer(avro, schema, [_asa_row(device_id=value)])
        assert list(read_window_file("v.avro", avro.getvalue()).windows["device_id"]) == [text]
    csv_text = pd.DataFrame([_asa_row(device_id=f"{value}.0")]).to_csv(index=False).encode()
    assert list(read_window_file("c.csv", csv_text).windows["device_id"]) == [f"{value}.0"]  # CSV text, as written


def _avro(rows: list[dict[str, object]], timestamp: bool) -> bytes:
    import fastavro

    stamp = {"type": "long", "logicalType": "timestamp-micros"} if timestamp else "string"
    fields = [
        {"name": "device_id", "type": "string"},
        {"name": "tag", "type": "string"},
        {"name": "window_end", "type": stamp},
        *({"name": c, "type": "double"} for c in ("value_avg", "value_min", "value_max", "value_std")),
        {"name": "reading_count", "type": "long"},
    ]
    schema = fastavro.parse_schema({"type": "record", "name": "window", "fields": fields})
    records = [
        {**r, "window_end": pd.Timestamp(str(r["window_end"])).to_pydatetime()} if timestamp else r for r in rows
    ]
    sink = io.BytesIO()
    fastavro.writer(sink, schema, records)
    return sink.getvalue()


def _all_serialisations(rows: list[dict[str, object]]) -> dict[str, bytes]:
    lines = "\n".join(json.dumps(r) for r in rows).encode()
    frame = pd.DataFrame(rows)
    typed_frame = frame.assign(window_end=pd.to_datetime(frame["window_end"], utc=True))
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(typed_frame, preserve_index=False), sink)
    return {
        "lines.json": lines,
        "bom.jsonl": b"\xef\xbb\xbf" + lines,
        "array.json": json.dumps(rows).encode(),
        "table.csv": frame.to_csv(index=False).encode(),
        "bom.csv": b"\xef\xbb\xbf" + frame.to_csv(index=False).encode(),
        "table.parquet": sink.getvalue(),
        "strings.avro": _avro(rows, timestamp=False),
        "micros.avro": _avro(rows, timestamp=True),
        "no-extension": lines,
        "2026/11/25/16/.upload-tmp": frame.to_csv(index=False).encode(),
    }


def test_numbers_round_trip_bit_exactly_in_every_serialisation():
    """Floats that a sloppy parser rounds (the last bit, the largest double, a subnormal) read back exactly."""
    rng = np.random.default_rng(7)
    rows = [
        _asa_row(
            window_end=f"2026-11-25T16:{m:02d}:00.0000000Z",
            value_avg=float(rng.normal() * 10.0 ** int(rng.integers(-300, 300))),
            value_min=float(np.nextafter(0.1, 1.0)),
        )
        for m in range(20)
    ]
    expected = np.array([[r[c] for c in ("value_avg", "value_min", "value_max", "value_std")] for r in rows])
    for name, data in _all_serialisations(rows).items():
        parsed = read_window_file(name, data)
        assert len(parsed.windows) == 20 and parsed.rejected.empty, name
        got = parsed.windows[["value_avg", "value_min", "value_max", "value_std"]].to_numpy()
        assert (got.view(np.int64) == expected.view(np.int64)).all(), name  # the same bits, not merely close
        assert list(parsed.windows["reading_count"]) == [60] * 20, name
        assert parsed.windows["window_end"].iloc[3] == pd.Timestamp("2026-11-25T16:03Z"), name


def test_format_is_recognised_by_content_not_name():
    assert sniff(b"PAR1...") == "parquet" and sniff(b"Obj\x01...") == "avro" and sniff(b" \n") == "empty"
    assert sniff(b'\xef\xbb\xbf{"a": 1}') == "json" and sniff(b"device_id,tag,window_end\n") == "csv"
    assert sniff(b"hello") == ""


def test_parquet_timestamp_beyond_nanoseconds_is_a_rejected_row():
    table = pa.table(
        {
            **{c: pa.array(["d", "d"]) for c in ("device_id", "tag")},
            "window_end": pa.array([datetime(2500, 1, 1, tzinfo=UTC), datetime(2026, 11, 25, 16, tzinfo=UTC)]),
            **{c: pa.array([1.0, 1.0]) for c in ("value_avg", "value_min", "value_max", "value_std")},
            "reading_count": pa.array([3, 3]),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    parsed = read_window_file("p.parquet", sink.getvalue())
    assert len(parsed.windows) == 1 and list(parsed.rejected["reason"]) == ["bad_timestamp"]


def test_every_blob_of_a_folder_is_read_empty_or_quarantined(tmp_path):
    storage = LocalStorage(tmp_path)
    rows = [_asa_row(window_end=f"2026-11-25T16:{m:02d}:00Z") for m in range(3)]
    for name, data in _all_serialisations(rows).items():
        storage.write_bytes("windows", f"2026/11/25/16/{name.rsplit('/', 1)[-1]}", data)
    storage.write_bytes("windows", "2026/11/25/16/zero.avro", b"")
    storage.write_bytes("windows", "2026/11/25/16/notes.txt", b"not windows at all")
    storage.write_bytes("windows", "2026/11/25/16/latin1.json", '{"tag": "caf\xe9"}'.encode("latin-1"))
    read = read_landed_files(storage, "windows", ["2026/11/25/16"])
    assert len(read.files) == 13 == len(read.read) + len(read.empty) + len(read.corrupt)
    assert read.empty == ["2026/11/25/16/zero.avro"]
    assert sorted(c.reason for c in read.corrupt) == ["not_utf8", "unsupported_format"]
    assert len(read.windows) == 10 * 3 and read.rejected.empty


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


def test_columnar_json_reader_and_row_wise_reader_agree():
    """Clean JSON lines take pyarrow's columnar path; the row-wise reader (used when a value is off) gives the
    same frame, bit for bit."""
    from sensor_scoring.windows import formats

    rows = [_asa_row(window_end=f"2026-11-25T16:{m:02d}:00+00:00", value_avg=m / 7) for m in range(30)]
    text = "\n".join(json.dumps(r) for r in rows)
    fast = formats._json_lines_columnar(text, "x.json")
    assert fast is not None and fast.rejected.empty
    slow = formats.typed(formats._json_columns(text), "x.json")
    pd.testing.assert_frame_equal(fast.windows, slow.windows)
    assert formats._json_lines_columnar(text.replace('"reading_count": 60', '"reading_count": "60"'), "x") is None
    # integer ids stay columnar, read as their decimal text exactly as row by row; a float id leaves it to the rows
    numbered = "\n".join(json.dumps({**r, "device_id": -i * 10**12, "tag": i}) for i, r in enumerate(rows))
    fast = formats._json_lines_columnar(numbered, "n.json")
    assert fast is not None and fast.rejected.empty and fast.windows["device_id"].iloc[1] == "-1000000000000"
    pd.testing.assert_frame_equal(fast.windows, formats.typed(formats._json_columns(numbered), "n.json").windows)
    assert formats._json_lines_columnar(numbered.replace('"tag": 3,', '"tag": 3.0,'), "n.json") is None
    assert formats._json_lines_columnar(numbered.replace('"tag": 3,', '"tag": "3",'), "n.json") is None


def test_many_small_json_lines_files_are_read_together_exactly_as_each_alone(tmp_path):
    """The one-parse read of many clean files gives what reading each file gives; one dirty file makes every
    file be read alone, so its rows are judged row by row and the others are unchanged."""
    storage = LocalStorage(tmp_path)
    rows = [_asa_row(window_end=f"2026-11-25T16:{m:02d}:00Z", value_avg=m / 3) for m in range(12)]
    for m, row in enumerate(rows):
        storage.write_bytes("windows", f"2026/11/25/16/0_{m:02d}_1.json", (json.dumps(row) + "\n").encode())
    together = read_landed_files(storage, "windows", ["2026/11/25/16"])
    alone = pd.concat(
        [parse_window_file(b.name, storage.read_bytes("windows", b.name)) for b in storage.list("windows")],
        ignore_index=True,
    )
    key = ["window_end"]
    pd.testing.assert_frame_equal(
        together.windows.sort_values(key).reset_index(drop=True), alone.sort_values(key).reset_index(drop=True)
    )
    numeric = _asa_row(device_id=42, window_end="2026-11-25T16:30:00Z")  # an integer id, read with the others
    storage.write_bytes("windows", "2026/11/25/16/0_42_1.json", (json.dumps(numeric) + "\n").encode())
    mixed = read_landed_files(storage, "windows", ["2026/11/25/16"])
    assert len(mixed.windows) == 13 and "42" in set(mixed.windows["device_id"]) and mixed.rejected.empty
    storage.delete_prefix("windows", "2026/11/25/16/0_42_1.json")
    storage.write_bytes("windows", "2026/11/25/16/0_99_1.json", (json.dumps(_asa_row(value_avg="3")) + "\n").encode())
    dirty = read_landed_files(storage, "windows", ["2026/11/25/16"])
    assert len(dirty.windows) == 12 and list(dirty.rejected["reason"]) == ["wrong_type"]
    storage.write_bytes("windows", "2026/11/25/16/0_98_1.json", b'{"device_id": "d", "tag": "t"}\n')
    with pytest.raises(WindowFileError, match="0_98_1.json: missing required column"):
        read_landed_files(storage, "windows", ["2026/11/25/16"])
