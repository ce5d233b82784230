"""Fault injection against a real Azurite: every case asserts its exact outcome and that nothing is lost or doubled.

Each case lands one simulated hour (2 devices x 2 sensors x 60 windows = 240 windows in 3 line-separated JSON
files, as Stream Analytics writes them), injects one fault, runs the hour's steps (``sensor_scoring.steps``, the
functions the DAG tasks call) and checks the outcome: the clear error, or the quarantine reason, and the
accounting ``landed = scored + quarantined + duplicates`` in the manifest and in the partition files.
The table of cases is in docs/faults.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dev.azurite import Azurite
from sensor_scoring import layout, settings as config, storage as st
from sensor_scoring.backends import ShardFailed, shard_command
from sensor_scoring.backends.local import LocalBackend
from sensor_scoring.contracts import (
    SHARD_FAILED,
    SOURCE_COLUMN as SOURCE,
    AccountingError,
    DataError,
    InvalidName,
    RegistryError,
    ShardPlan,
    ShardResult,
    ShardSpec,
    StorageUnavailable,
    SupersededError,
    ValidationThresholdError,
)
from sensor_scoring.models import fitting, pack, registry
from sensor_scoring.runs.rescoring import CommittedRowsMissing, SubsetMatchesNothing
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps.commit import commit
from sensor_scoring.steps.plan import plan_shards
from sensor_scoring.steps.score import score_shard
from sensor_scoring.storage import BlobStorage
from sensor_scoring.windows import (
    WINDOW_COLUMNS,
    LandingPlan,
    WindowSchemaError,
    land_windows,
    parse_window_file,
    to_asa_json_lines,
)
from tests.support.helpers import START, fleet_windows, read_and_plan, run_steps

pytestmark = [pytest.mark.azurite]
H = timedelta(hours=1)
HOUR = START + 3 * H  # the scored hour [HOUR, HOUR + 1h)
FOLDER = f"{HOUR:%Y/%m/%d/%H}/"
NEXT_FOLDER = f"{HOUR + H:%Y/%m/%d/%H}/"
KEY = ["device_id", "tag", "window_end"]
BASE = 240  # windows landed by the fixture


@dataclass
class Env:
    blob: BlobStorage
    containers: config.Containers
    windows: pd.DataFrame  # what the fixture landed for HOUR

    def hour(self, run_id: str = "run-1", start=HOUR, hours: int = 1) -> Scope:
        return Scope(self.blob, self.containers, run_id, start, start + hours * H)

    def land(self, name: str, data: bytes, folder: str = FOLDER) -> str:
        self.blob.write_bytes(self.containers.windows, folder + name, data)
        return folder + name


@pytest.fixture(scope="module")
def trained() -> list[fitting.TrainedModel]:
    # a third device has models but lands no windows in the fixture: the spare keys extra windows take
    return fitting.train_models(fleet_windows(devices=3, tags=2, hours=3))


@pytest.fixture(scope="module")
def hour_windows() -> pd.DataFrame:
    return fleet_windows(devices=2, tags=2, hours=1, start=HOUR)


@pytest.fixture
def env(blob, containers, trained, hour_windows, monkeypatch) -> Env:
    """Models for the 4 sensors (in 2 packs of 2, so a pack's fault spares the other pack), one landed hour."""
    monkeypatch.setattr(pack, "PACK_SIZE", 2)
    registry.register(blob, containers.models, trained, version="v1", params={}, promote=True)
    land_windows(blob, containers.windows, hour_windows, LandingPlan(late_share=0.0))
    return Env(blob, containers, hour_windows)


def run_hour(
    env: Env, run_id: str = "run-1", *, late_folders: int = 1, max_share: float = 0.5, shard_size: int = 2, start=HOUR
) -> dict:
    """The DAG's steps for one hour, in-process (``run_steps``): plan_shards -> read_windows* -> score_shard* ->
    commit. Returns the manifest as its blob holds it."""
    hour = env.hour(run_id, start)
    [manifest] = run_steps(
        hour, sensors_per_shard=shard_size, late_folders=late_folders, commit_params={"max_quarantine_share": max_share}
    )
    return manifest.to_dict()


def partition(env: Env, container: str, hour=HOUR) -> tuple[pd.DataFrame, dict]:
    part = layout.Partition(hour)
    frame = pd.read_parquet(io.BytesIO(env.blob.read_bytes(container, part.data)))
    return frame, json.loads(env.blob.read_bytes(container, part.manifest))


def assert_accounting(env: Env, manifest: dict, *, landed: int, hour=HOUR) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Nothing lost, nothing doubled: the manifest's sum closes and the partition files hold exactly its rows."""
    counts = manifest["counts"]
    assert counts["landed"] == landed
    assert counts["landed"] == counts["scored"] + counts["quarantined"] + counts["duplicates"]
    predictions, p_manifest = partition(env, env.containers.predictions, hour)
    quarantine, q_manifest = partition(env, env.containers.quarantine, hour)
    assert p_manifest == q_manifest == manifest
    assert len(predictions) == counts["scored"] and len(quarantine) == counts["quarantined"]
    assert not predictions.duplicated(KEY).any()
    assert dict(quarantine["reason"].value_counts()) == manifest["quarantine_reasons"]
    return predictions, quarantine


SPARE_DEVICE = "dev-0002"  # has models, lands nothing in the fixture


def window_row(env: Env, minute: int = 10, new_key: bool = True, **changes) -> dict:
    """A landed window as Stream Analytics writes it: a copy of dev-0000/temperature's window at ``minute``,
    under the spare device (a new key, on the minute, with a model) unless ``new_key`` is False, with ``changes``."""
    rows = env.windows[(env.windows["device_id"] == "dev-0000") & (env.windows["tag"] == "temperature")]
    row = rows[rows["window_end"] == pd.Timestamp(HOUR + timedelta(minutes=minute))].iloc[0]
    record = {c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in WINDOW_COLUMNS}
    record["window_end"] = row["window_end"].strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
    record["device_id"], record["tag"] = SPARE_DEVICE if new_key else str(row["device_id"]), str(row["tag"])
    record.update(changes)
    return record


def jsonl(*records: dict) -> bytes:
    return ("\n".join(json.dumps(r) for r in records) + "\n").encode()


def at(moment) -> str:
    return pd.Timestamp(moment).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


# --- 1. Bad rows: each is quarantined with its reason, the other 240 windows are scored. ---

BAD_ROWS = [
    pytest.param({"value_std": -0.5}, "negative_std", id="negative-std"),
    pytest.param({"value_avg": 1e3}, "avg_outside_min_max", id="avg-above-max"),
    pytest.param({"value_std": None}, "non_finite_value", id="missing-value"),
    pytest.param({"value_max": float("inf")}, "non_finite_value;value_out_of_bounds", id="infinite-value"),
    pytest.param({"reading_count": 0}, "reading_count_invalid", id="zero-readings"),
    pytest.param({"reading_count": 2.5}, "reading_count_invalid", id="fractional-readings"),
    pytest.param({"device_id": None}, "null_key", id="null-device"),
    pytest.param({"tag": ""}, "null_key", id="blank-tag"),
    pytest.param({"value_min": -300.0}, "value_out_of_bounds", id="below-absolute-zero"),
    pytest.param({"window_end": None}, "null_key", id="missing-window-end"),
    pytest.param({"window_end": at(HOUR - 48 * H)}, "window_outside_interval", id="stray-from-two-days-ago"),
    # the window ending exactly at the next hour, written into this hour's folder: it came early (windows.ownership)
    pytest.param({"window_end": at(HOUR + H)}, "window_landed_early", id="next-hour-window-in-this-folder"),
    # aggregates no readings can have
    pytest.param({"reading_count": 1}, "single_reading_spread", id="one-reading-with-a-spread"),
    pytest.param({"value_std": 1e3}, "std_exceeds_range", id="spread-beyond-max-minus-min"),
    pytest.param({"reading_count": 1e18}, "reading_count_implausible", id="count-1e18"),
    pytest.param({"device_id": "dev-9999"}, "no_model", id="unknown-sensor"),
    # values the reader cannot take as their contract type (windows.formats): the row, not the hour, fails
    pytest.param({"value_avg": "abc"}, "wrong_type", id="text-value"),
    pytest.param({"value_std": "NaN"}, "wrong_type", id="nan-string"),
    pytest.param({"value_min": "3"}, "wrong_type", id="number-in-a-string"),
    pytest.param({"reading_count": True}, "wrong_type", id="boolean-count"),
    pytest.param({"device_id": 123.0}, "wrong_type", id="float-device-id"),
    pytest.param({"device_id": True}, "wrong_type", id="boolean-device-id"),
    pytest.param({"tag": {"name": "temperature"}}, "wrong_type", id="object-tag"),
    pytest.param({"window_end": "2500-01-01T00:00:00.0000000Z"}, "bad_timestamp", id="year-2500"),
    pytest.param({"window_end": "2026-01-01T03:10:00"}, "bad_timestamp", id="timestamp-without-zone"),
    pytest.param({"window_end": at(HOUR + timedelta(minutes=5, seconds=30))}, "window_not_on_minute", id="off-minute"),
    pytest.param(
        {"window_end": f"{HOUR + timedelta(minutes=5):%Y-%m-%dT%H:%M:%S}.0000001Z"},
        "window_not_on_minute",
        id="seventh-fraction-digit",
    ),
]


@pytest.mark.parametrize("changes,reason", BAD_ROWS)
def test_bad_row_is_quarantined_with_its_reason(env, changes, reason):
    name = env.land("0_bad_1.json", jsonl(window_row(env, **changes)))
    manifest = run_hour(env)
    predictions, quarantine = assert_accounting(env, manifest, landed=BASE + 1)
    assert manifest["counts"]["scored"] == BASE and manifest["counts"]["quarantined"] == 1
    assert list(quarantine["reason"]) == [reason] and list(quarantine["source_file"]) == [name]
    assert manifest["status"] == "scored"
    if reason != "no_model":
        assert manifest["validation"]["failing_rows"] == 1
        assert manifest["validation"]["failing_rows_by_reason"] == {r: 1 for r in reason.split(";")}


def test_integer_device_ids_are_read_as_their_decimal_text(env):
    """``"device_id": 123`` is the id "123" (a JSON integer's text is one unambiguous id): the row is read and
    reaches the model lookup (no model for "123" here), never ``wrong_type``; a float id (123.0) still is."""
    name = env.land("0_int_1.json", jsonl(window_row(env, device_id=123), window_row(env, minute=11, device_id=-7)))
    env.land("0_float_1.json", jsonl(window_row(env, minute=12, device_id=123.0)))
    manifest = run_hour(env)
    _, quarantine = assert_accounting(env, manifest, landed=BASE + 3)
    assert manifest["counts"]["scored"] == BASE and manifest["validation"]["failing_rows_by_reason"] == {
        "wrong_type": 1
    }
    read = quarantine[quarantine["source_file"] == name].sort_values("device_id")
    assert list(read["device_id"]) == ["-7", "123"] and set(read["reason"]) == {"no_model"}


def test_exact_duplicate_is_collapsed_and_counted(env):
    env.land("0_copy_1.json", jsonl(window_row(env, new_key=False)))
    manifest = run_hour(env)
    assert_accounting(env, manifest, landed=BASE + 1)
    assert manifest["counts"]["duplicates"] == 1 and manifest["counts"]["scored"] == BASE


def test_conflicting_copies_are_all_quarantined(env):
    original = window_row(env, new_key=False)
    env.land("0_conflict_1.json", jsonl({**original, "value_std": original["value_std"] + 0.01}))
    manifest = run_hour(env)
    _, quarantine = assert_accounting(env, manifest, landed=BASE + 1)
    assert manifest["counts"]["scored"] == BASE - 1 and manifest["quarantine_reasons"] == {"conflicting_duplicate": 2}
    assert quarantine["source_file"].nunique() == 2  # both copies kept, each with its file


def test_previous_hours_late_window_in_this_folder_is_left_to_that_hour(env):
    """A window of the hour before, landed late in this hour's folder, is read by the previous hour's run."""
    env.land("0_prev_1.json", jsonl(window_row(env, window_end=at(HOUR - timedelta(minutes=30)))))
    manifest = run_hour(env)
    assert_accounting(env, manifest, landed=BASE)
    assert manifest["quarantine_reasons"] == {}


# --- 2. Structurally wrong input: the run fails, naming the file and the column; nothing is committed. ---


def _csv(records: list[dict], drop: str | None = None) -> bytes:
    frame = pd.DataFrame(records)
    return frame.drop(columns=[drop] if drop else []).to_csv(index=False).encode()


def _parquet(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


@pytest.mark.parametrize(
    "name,make,message",
    [
        pytest.param(
            "0_x_1.csv",
            lambda e: _csv([window_row(e)], drop="value_std"),
            r"0_x_1\.csv: missing required column\(s\) value_std",
            id="missing-column-csv",
        ),
        pytest.param(
            "0_x_1.json",
            lambda e: jsonl({k: v for k, v in window_row(e).items() if k != "value_avg"}),
            r"0_x_1\.json: missing required column\(s\) value_avg",
            id="missing-column-json",
        ),
        pytest.param(
            "0_x_1.parquet",
            lambda e: _parquet(pd.DataFrame([window_row(e)]).drop(columns="reading_count")),
            r"0_x_1\.parquet: missing required column\(s\) reading_count",
            id="missing-column-parquet",
        ),
    ],
)
def test_structurally_wrong_file_fails_naming_file_and_column(env, name, make, message):
    env.land(name, make(env))
    with pytest.raises(WindowSchemaError, match=message):
        run_hour(env)
    assert not env.blob.list(env.containers.predictions) and not env.blob.list(env.containers.quarantine)


def test_broken_file_of_the_hour_before_read_only_as_lookback_never_fails_this_hour(env):
    """A CSV without value_std in the previous hour's folder fails that hour, and only that hour: this hour reads the
    folder for its lookback, leaves the file out of it, scores all its windows and names the file in its manifest
    (so do a corrupt file there)."""
    before = f"{HOUR - H:%Y/%m/%d/%H}/"
    early = window_row(env, minute=10, window_end=at(HOUR - H + timedelta(minutes=5)))  # not even in the lookback
    broken = env.land("0_x_1.csv", _csv([early], drop="value_std"), folder=before)
    corrupt = env.land("0_t_1.json", b'{"device_id": "dev', folder=before)
    manifest = run_hour(env)
    assert_accounting(env, manifest, landed=BASE)
    assert manifest["counts"]["scored"] == BASE and manifest["quarantined_files"] == []
    skipped = {f["file"]: (f["reason"], f["error"]) for f in manifest["validation"]["lookback_skipped_files"]}
    assert skipped[broken] == ("missing_column", f"{broken}: missing required column(s) value_std")
    assert skipped[corrupt][0] == "corrupt_file" and len(skipped) == 2
    with pytest.raises(WindowSchemaError, match=r"0_x_1\.csv: missing required column\(s\) value_std"):
        run_hour(env, "run-before", start=HOUR - H)  # its own hour still fails on it, naming file and column
    # a broken file in a folder this hour reads as its own still fails it (the input of this hour is wrong)
    env.land("0_x_1.csv", _csv([window_row(env)], drop="value_std"))
    with pytest.raises(WindowSchemaError, match=r"0_x_1\.csv: missing required column"):
        run_hour(env, "run-2")


def test_ingest_reports_every_unparseable_reading_and_strict_lands_nothing(env, tmp_path):
    """ingest-readings on a file with 4 unparseable readings of 18: each is in the report with its line and reason,
    counted apart from the readings; strict lands nothing; the default lands the windows of the readings taken."""
    from sensor_scoring.tools.ingest import IngestRejected, ingest_readings_csv
    from tests.unit.test_ingest import EXPECTED, RAW

    path = tmp_path / "readings.csv"
    path.write_text(RAW)
    before = {b.name for b in env.blob.list(env.containers.windows)}
    with pytest.raises(IngestRejected, match=r"4 of 18 line\(s\) rejected"):
        ingest_readings_csv(env.blob, env.containers.windows, path, strict=True)
    assert {b.name for b in env.blob.list(env.containers.windows)} == before
    facts = ingest_readings_csv(env.blob, env.containers.windows, path)
    assert (facts["lines"], facts["readings"], facts["rejected"], facts["windows"]) == (18, 14, 4, 3)
    report = pd.read_csv(facts["rejected_report"])
    assert list(zip(report["line"], report["reason"])) == EXPECTED
    landed = {b.name for b in env.blob.list(env.containers.windows)} - before
    assert landed and all(name.startswith("2018/08/28/23/") for name in landed)


# --- 3. Corrupt, truncated and empty files of each serialisation. ---


def _extra_rows(env: Env) -> list[dict]:
    return [window_row(env, minute=m) for m in range(20, 26)]


def _truncated_csv(env: Env) -> bytes:
    data = _csv(_extra_rows(env))
    return data[: data.rfind(b",", 0, len(data) // 2) + 1]  # cut after a comma: the last row is short


def _avro(records: list[dict]) -> bytes:
    import fastavro

    fields = [
        {"name": "device_id", "type": "string"},
        {"name": "tag", "type": "string"},
        {"name": "window_end", "type": "string"},  # Stream Analytics writes datetime as ISO text in Avro
        *({"name": c, "type": "double"} for c in ("value_avg", "value_min", "value_max", "value_std")),
        {"name": "reading_count", "type": "long"},
    ]
    sink = io.BytesIO()
    fastavro.writer(sink, fastavro.parse_schema({"type": "record", "name": "w", "fields": fields}), records)
    return sink.getvalue()


CORRUPT = [
    pytest.param("0_t_1.json", lambda e: jsonl(*_extra_rows(e))[:-40], "corrupt_file", id="truncated-json-lines"),
    pytest.param(
        "0_t_1.json", lambda e: json.dumps(_extra_rows(e)).encode()[:-40], "corrupt_file", id="truncated-json-array"
    ),
    pytest.param("0_t_1.csv", _truncated_csv, "corrupt_file", id="truncated-csv"),
    pytest.param(
        "0_t_1.parquet", lambda e: _parquet(pd.DataFrame(_extra_rows(e)))[:-100], "corrupt_file", id="truncated-parquet"
    ),
    pytest.param("0_t_1.avro", lambda e: _avro(_extra_rows(e))[:-30], "corrupt_file", id="truncated-avro"),
    pytest.param("0_t_1.json", lambda e: bytes(range(256)) * 4, "not_utf8", id="binary-garbage-json"),
    pytest.param("0_t_1.json", lambda e: '{"tag": "caf\xe9"}'.encode("latin-1"), "not_utf8", id="latin-1-json"),
    pytest.param("0_t_1.txt", lambda e: b"hello, these are not windows\n", "unsupported_format", id="plain-text"),
]
ERRORS = {"corrupt_file": "cannot be parsed", "not_utf8": "not UTF-8", "unsupported_format": "unsupported format"}


@pytest.mark.parametrize("name,make,reason", CORRUPT)
def test_corrupt_file_is_quarantined_whole_and_the_rest_scored(env, name, make, reason):
    data = make(env)
    path = env.land(name, data)
    manifest = run_hour(env)
    assert_accounting(env, manifest, landed=BASE)  # its rows cannot be counted: listed by file instead
    assert manifest["counts"]["scored"] == BASE
    [entry] = manifest["quarantined_files"]
    assert entry["file"] == path and entry["reason"] == reason and entry["bytes"] == len(data)
    assert entry["error"].startswith(f"{path}: {ERRORS[reason]}")
    container, copy = st.parse_uri(entry["copy"])
    assert env.blob.read_bytes(container, copy) == data  # kept byte for byte beside the quarantine partition
    assert manifest["source_files"] == {"seen": 4, "read": 3, "empty": 0, "quarantined": 1, "other_hours": 0}


def test_corrupt_file_in_the_next_hours_folder_is_owned_by_that_hour_alone(env):
    """The hour reads the next folder for its late windows, but a corrupt file there cannot be placed: its
    folder's hour owns it (windows.ownership), so exactly one manifest lists it and one copy is kept."""
    data = jsonl(*_extra_rows(env))[:-40]
    path = env.land("0_t_1.json", data, folder=NEXT_FOLDER)
    first = run_hour(env)
    assert_accounting(env, first, landed=BASE)
    assert first["quarantined_files"] == [] and first["validation"]["lookback_skipped_files"] == []
    assert first["source_files"] == {"seen": 4, "read": 3, "empty": 0, "quarantined": 0, "other_hours": 1}
    second = run_hour(env, "run-2", start=HOUR + H, max_share=1.0)
    [entry] = second["quarantined_files"]
    assert entry["file"] == path and entry["reason"] == "corrupt_file" and second["status"] == "empty"
    assert second["source_files"]["quarantined"] == 1
    assert env.blob.list(env.containers.quarantine, layout.Partition(HOUR).quarantined_files) == []


def test_every_blob_in_the_folders_is_read_empty_or_quarantined(env):
    """Any name, any serialisation: nothing in a folder the hour reads is skipped without a trace."""
    rows = [window_row(env, minute=m) for m in range(12)]
    frame = pd.DataFrame(rows[8:10]).assign(window_end=lambda f: pd.to_datetime(f["window_end"], utc=True))
    planted = {
        "0_a_1.avro": _avro(rows[0:2]),
        "0_b_1.jsonl": jsonl(*rows[2:4]),
        "0_c_1.ndjson": b"\xef\xbb\xbf" + jsonl(*rows[4:6]),  # with a byte-order mark
        "0_d_1.txt": _csv(rows[6:8]),
        ".0_e_1.tmp": _parquet(frame),  # a temporary upload name: still read
        "0_f_1": json.dumps(rows[10:12]).encode(),  # no extension at all
        "0_g_1.avro": b"",
        "0_h_1.bin": b"\x00\x01 not a known serialisation",
        "0_i_1.json": b'{"device_id": "dev',
        "0_j_1.json": '{"tag": "caf\xe9"}'.encode("latin-1"),
    }
    for name, data in planted.items():
        env.land(name, data)
    manifest = run_hour(env)
    assert_accounting(env, manifest, landed=BASE + 12)
    assert manifest["counts"]["scored"] == BASE + 12
    seen = manifest["source_files"]
    assert seen == {"seen": 3 + 10, "read": 3 + 6, "empty": 1, "quarantined": 3, "other_hours": 0}
    assert seen["seen"] == seen["read"] + seen["empty"] + seen["quarantined"]
    assert manifest["empty_files"] == [FOLDER + "0_g_1.avro"]
    assert {f["file"]: f["reason"] for f in manifest["quarantined_files"]} == {
        FOLDER + "0_h_1.bin": "unsupported_format",
        FOLDER + "0_i_1.json": "corrupt_file",
        FOLDER + "0_j_1.json": "not_utf8",
    }


@pytest.mark.parametrize("serialise", ["csv", "parquet", "avro", "json-array"])
def test_a_window_landed_in_two_serialisations_is_one_duplicate(env, serialise):
    """Exact parsing: the same window as JSON lines and as another serialisation is equal, bit for bit."""
    row = window_row(env, minute=33, value_avg=0.1 + 0.2, value_min=0.1, value_max=0.30000000000000004 * 3)
    frame = pd.DataFrame([row]).assign(window_end=lambda f: pd.to_datetime(f["window_end"], utc=True))
    other = {
        "csv": lambda: _csv([row]),
        "parquet": lambda: _parquet(frame),
        "avro": lambda: _avro([row]),
        "json-array": lambda: json.dumps([row]).encode(),
    }[serialise]()
    env.land("0_one_1.json", jsonl(row))
    env.land("0_two_1.dat", other)
    manifest = run_hour(env)
    assert_accounting(env, manifest, landed=BASE + 2)
    assert manifest["counts"]["duplicates"] == 1 and manifest["counts"]["scored"] == BASE + 1


EMPTY = [
    pytest.param("0_e_1.json", b"", id="zero-byte-json"),
    pytest.param("0_e_1.json", b"[]", id="empty-json-array"),
    pytest.param("0_e_1.csv", b"", id="zero-byte-csv"),
    pytest.param("0_e_1.csv", ",".join(WINDOW_COLUMNS).encode() + b"\n", id="header-only-csv"),
    pytest.param("0_e_1.parquet", b"", id="zero-byte-parquet"),
    pytest.param("0_e_1.parquet", None, id="zero-row-parquet"),
]


@pytest.mark.parametrize("name,data", EMPTY)
def test_empty_file_is_no_windows_and_no_error(env, name, data):
    if data is None:
        data = _parquet(pd.DataFrame([window_row(env)]).iloc[:0])
    path = env.land(name, data)
    manifest = run_hour(env)
    assert_accounting(env, manifest, landed=BASE)
    assert manifest["empty_files"] == [path] and manifest["quarantined_files"] == []


def test_hour_without_windows_commits_an_empty_partition_with_status_empty(env, caplog):
    empty_hour = HOUR + 5 * H
    env.land("0_t_1.json", b'{"device_id": "dev-0000", "ta', folder=f"{empty_hour:%Y/%m/%d/%H}/")
    with caplog.at_level("WARNING"):
        manifest = run_hour(env, start=empty_hour)
    assert_accounting(env, manifest, landed=0, hour=empty_hour)
    assert manifest["status"] == "empty" and manifest["counts"]["scored"] == 0
    assert [f["reason"] for f in manifest["quarantined_files"]] == ["corrupt_file"]
    assert "EMPTY hour" in caplog.text and "no windows landed" in caplog.text


# --- 4. The threshold on the share of failing windows. ---


def _bad_batch(env: Env, n: int) -> bytes:
    assert n <= 60  # one new key per minute
    return jsonl(*(window_row(env, minute=m, value_std=-1.0) for m in range(n)))


def test_share_above_threshold_fails_and_keeps_the_report(env):
    env.land("0_bad_1.json", _bad_batch(env, 30))  # 30 of 270 windows = 11.1%
    with pytest.raises(ValidationThresholdError) as caught:
        run_hour(env, max_share=0.1)
    message = str(caught.value)
    assert message.startswith(
        f"hour {HOUR.isoformat()}: 30 of 270 windows (11.1%) failed validation (negative_std 30); "
        "above max_quarantine_share 10.0%. Nothing was committed."
    )
    report_uri = message.split("Validation report: ")[1].split(";")[0]
    report = json.loads(env.blob.read_bytes(*st.parse_uri(report_uri)))
    hour_report = report["hours"][HOUR.isoformat()]
    assert hour_report["threshold_exceeded"] and hour_report["failing_rows_by_reason"] == {"negative_std": 30}
    assert hour_report["landed"] == hour_report["failing_rows"] + BASE + hour_report["duplicates"]
    rejected = st.read_parquet(env.blob, *st.parse_uri(message.split("failing rows: ")[1].split(". ")[0]))
    assert len(rejected) == 30 and set(rejected["reason"]) == {"negative_std"}
    assert not env.blob.list(env.containers.predictions)  # failed before anything was committed


def test_share_below_threshold_commits_and_says_what_was_quarantined(env):
    env.land("0_bad_1.json", _bad_batch(env, 20))  # 20 of 260 = 7.7%
    manifest = run_hour(env, max_share=0.1)
    assert_accounting(env, manifest, landed=BASE + 20)
    assert manifest["validation"]["failing_rows"] == 20 and manifest["validation"]["max_quarantine_share"] == 0.1
    report = json.loads(env.blob.read_bytes(*st.parse_uri(manifest["validation"]["report"])))
    assert report["hours"][HOUR.isoformat()]["failing_share"] == round(20 / 260, 6)
    assert {e["reason"] for e in report["expectations"] if not e["success"]} == {"negative_std"}


# --- 5. Late data and re-runs. ---


def test_rerun_replaces_the_partition_with_one_row_per_window(env):
    first = run_hour(env, "run-1", shard_size=4)
    second = run_hour(env, "run-2", shard_size=1)
    predictions, _ = assert_accounting(env, second, landed=BASE)
    assert first["counts"] == second["counts"] and set(predictions["run_id"]) == {"run-2"}


# --- 5b. Committed rows are never replaced by nothing; partial hours keep their way back; subsets that miss. ---
# Windows are commonly deleted by a blob lifecycle rule after some days: a re-run or rescoring of such an hour
# finds fewer windows than the hour committed. Every case checks the accounting and the rows kept, row by row.


def _rescore(
    env: Env, run_id: str, *, devices=None, tags=None, policy: str = "keep", start=HOUR, hours: int = 1
) -> list[dict]:
    """A rescoring (or full re-run) through the steps, with ``purged_windows`` = ``policy``."""
    hour = env.hour(run_id, start, hours)
    reads, shards = read_and_plan(hour, sensors_per_shard=2, devices=devices, tags=tags)
    results = [score_shard(env.blob, s.spec_uri) for s in shards]
    return [m.to_dict() for m in commit(hour, reads, results, purged_windows=policy, max_quarantine_share=0.5)]


def _purge(env: Env, keep=lambda frame: frame.iloc[0:0], folder: str = FOLDER) -> pd.DataFrame:
    """What a lifecycle rule (or a producer's deletion) does to the hour's window files: each file is rewritten
    holding only ``keep(rows)`` (deleted when nothing is left). Returns the windows purged."""
    purged = []
    for blob in env.blob.list(env.containers.windows, folder):
        frame = parse_window_file(blob.name, env.blob.read_bytes(env.containers.windows, blob.name))
        kept = keep(frame)
        purged.append(frame.drop(kept.index))
        env.blob.delete_prefix(env.containers.windows, blob.name)
        if len(kept):
            env.blob.write_bytes(env.containers.windows, blob.name, to_asa_json_lines(kept))
    return pd.concat(purged, ignore_index=True)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEY).reset_index(drop=True)


def test_purged_hour_rerun_keeps_every_committed_prediction(env, caplog):
    """The hour's windows were all purged, then the hour is re-run: the 240 predictions stay as committed (not an
    empty partition), the manifest's ``purged`` says how many and why, the accounting closes."""
    run_hour(env, "run-1")
    before, _ = partition(env, env.containers.predictions)
    _purge(env)
    with caplog.at_level("WARNING"):
        [manifest] = _rescore(env, "run-2")
    predictions, _ = assert_accounting(env, manifest, landed=BASE)
    pd.testing.assert_frame_equal(_sorted(before), _sorted(predictions))  # identical rows, run-1's
    assert manifest["status"] == "scored" and manifest["run_id"] == "run-2"
    assert {k: manifest["purged"][k] for k in ("action", "scored", "quarantined", "sensors", "runs")} == {
        "action": "kept",
        "scored": BASE,
        "quarantined": 0,
        "sensors": 4,
        "runs": ["run-1"],
    }
    assert "240 committed prediction(s)" in caplog.text and "purged_windows=keep" in caplog.text


def test_partly_purged_hour_rerun_rescores_what_landed_and_keeps_the_rest(env):
    """One of the hour's three files purged: its windows' rows stay run-1's, the rest are re-scored by run-2."""
    run_hour(env, "run-1")
    first = env.blob.list(env.containers.windows, FOLDER)[0].name
    gone = _purge(env, keep=lambda f: f if f[SOURCE].iloc[0] != first else f.iloc[0:0])
    assert 0 < len(gone) < BASE
    [manifest] = _rescore(env, "run-2")
    predictions, _ = assert_accounting(env, manifest, landed=BASE)
    by_run = predictions["run_id"].value_counts().to_dict()
    assert by_run == {"run-1": len(gone), "run-2": BASE - len(gone)}
    kept = predictions[predictions["run_id"] == "run-1"]
    assert set(map(tuple, kept[KEY].astype(str).values)) == set(map(tuple, gone[KEY].astype(str).values))
    assert manifest["purged"]["action"] == "kept" and manifest["purged"]["scored"] == len(gone)


def test_purged_sensor_subset_rescoring_keeps_its_committed_rows(env):
    """A subset rescoring of one device whose windows were purged but for 3: its 120 rows are not cut to 3."""
    run_hour(env, "run-1")
    before, _ = partition(env, env.containers.predictions)
    device = "dev-0000"
    mine = env.windows[(env.windows["device_id"] == device) & (env.windows["tag"] == "temperature")]
    ends = set(mine.sort_values("window_end").head(3)["window_end"])
    _purge(
        env, keep=lambda f: f[(f["device_id"] != device) | ((f["tag"] == "temperature") & f["window_end"].isin(ends))]
    )
    [manifest] = _rescore(env, "run-2", devices=[device])
    predictions, _ = assert_accounting(env, manifest, landed=BASE)
    mine = predictions[predictions["device_id"] == device]
    assert len(mine) == 120 and (mine["run_id"] == "run-2").sum() == 3  # 3 rescored, 117 kept
    others = predictions[predictions["device_id"] != device]
    pd.testing.assert_frame_equal(_sorted(before[before["device_id"] != device]), _sorted(others))
    assert manifest["purged"]["scored"] == 117 and manifest["purged"]["sensors"] == 2
    [entry] = manifest["rescored"]  # this run's own rows only; the kept ones are counted in purged
    assert entry["counts"]["scored"] == 3 and entry["not_found"] is None


def test_purged_windows_fail_commits_nothing_and_names_the_hour_and_counts(env):
    run_hour(env, "run-1")
    _, committed = partition(env, env.containers.predictions)
    _purge(env)
    with pytest.raises(CommittedRowsMissing, match=rf"hour {re.escape(HOUR.isoformat())}: 240 committed .* 4 sensor"):
        _rescore(env, "run-2", policy="fail")
    predictions, manifest = partition(env, env.containers.predictions)
    assert manifest == committed and len(predictions) == BASE  # as it was


def test_purged_windows_drop_shrinks_the_hour_only_on_request(env):
    run_hour(env, "run-1")
    first = env.blob.list(env.containers.windows, FOLDER)[0].name
    gone = _purge(env, keep=lambda f: f if f[SOURCE].iloc[0] != first else f.iloc[0:0])
    [manifest] = _rescore(env, "run-2", policy="drop")
    predictions, _ = assert_accounting(env, manifest, landed=BASE - len(gone))
    assert set(predictions["run_id"]) == {"run-2"}
    assert manifest["purged"]["action"] == "dropped" and manifest["purged"]["scored"] == len(gone)


def test_purged_quarantined_rows_are_kept_too(env):
    """A committed quarantine row whose window is purged stays in the quarantine partition (with its reason)."""
    env.land("0_bad_1.json", jsonl(window_row(env, minute=20, value_std=-1.0)))
    run_hour(env, "run-1")
    env.blob.delete_prefix(env.containers.windows, FOLDER + "0_bad_1.json")
    [manifest] = _rescore(env, "run-2")
    _, quarantine = assert_accounting(env, manifest, landed=BASE + 1)
    assert list(quarantine["reason"]) == ["negative_std"] and list(quarantine["run_id"]) == ["run-1"]
    assert manifest["purged"]["quarantined"] == 1 and manifest["purged"]["scored"] == 0


@pytest.mark.parametrize(
    ("devices", "tags", "message"),
    [
        pytest.param(
            ["dev-9999"],
            None,
            r"'dev-9999' is no landed device \(nothing close; landed: dev-0000, dev-0001\)",
            id="unknown-device",
        ),
        pytest.param(None, ["Temperature"], r"'Temperature' is no landed tag \(closest: temperature", id="tag-case"),
        pytest.param(["dev-0001"], ["temperatur"], r"'temperatur' is no landed tag \(closest: temperature", id="typo"),
    ],
)
def test_subset_matching_no_landed_sensor_fails_naming_the_closest(env, devices, tags, message):
    run_hour(env, "run-1")
    _, committed = partition(env, env.containers.predictions)
    with pytest.raises(SubsetMatchesNothing, match=message):
        _rescore(env, "run-2", devices=devices, tags=tags)
    assert partition(env, env.containers.predictions)[1] == committed  # nothing committed


def test_subset_partly_not_found_warns_and_names_it_in_the_manifest(env, caplog):
    run_hour(env, "run-1")
    with caplog.at_level("WARNING"):
        [manifest] = _rescore(env, "run-2", devices=["dev-0000", "dev-9999"])
    assert_accounting(env, manifest, landed=BASE)
    [entry] = manifest["rescored"]
    assert entry["not_found"] == {"devices": ["dev-9999"], "tags": []} and entry["counts"]["scored"] == 120
    assert "'dev-9999' is no landed device" in caplog.text and manifest["purged"] is None


def _partial_run(env: Env, run_id: str, *, hours: int, size: int, victim: int):
    """A run whose shard ``victim`` fails after its last retry, committed partial. Returns what a retry needs."""
    hour = env.hour(run_id, HOUR, hours)
    summary, shards = read_and_plan(hour, sensors_per_shard=size)  # the read results, as commit takes them
    failed = shards[victim]
    results = [score_shard(env.blob, s.spec_uri) for s in shards if s is not failed]
    manifests = commit(hour, summary, results, failed_shards=[failed], max_quarantine_share=0.5)
    assert {m.status for m in manifests} == {"partial"}
    return hour, summary, results, failed


def test_rerunning_one_hour_of_a_partial_two_hour_run_keeps_the_other_hours_way_back(env):
    """Run R commits two hours partial; the first hour alone is re-run (S): R's staging stays (the second hour's
    manifest names its spec), and retrying R's failed shard fills the second hour in, leaving S's first hour."""
    land_windows(
        env.blob,
        env.containers.windows,
        fleet_windows(devices=2, tags=2, hours=1, start=HOUR + H),
        LandingPlan(late_share=0.0),
    )
    hour_r, summary_r, results_r, failed = _partial_run(env, "run-R", hours=2, size=2, victim=1)
    [by_s] = _rescore(env, "run-S")
    assert by_s["status"] == "scored" and by_s["failed_shards"] == []
    _, second = partition(env, env.containers.predictions, HOUR + H)
    assert second["run_id"] == "run-R" and [f["spec"] for f in second["failed_shards"]] == [failed.spec_uri]
    assert env.blob.exists(*st.parse_uri(failed.spec_uri))  # still retrievable

    retried = score_shard(env.blob, failed.spec_uri)  # what clearing the failed score_shard runs
    [filled] = commit(hour_r, summary_r, [*results_r, retried])
    assert filled.hour == HOUR + H and filled.status == "scored"
    assert_accounting(env, filled.to_dict(), landed=BASE, hour=HOUR + H)
    _, first = partition(env, env.containers.predictions, HOUR)
    assert first == by_s  # left as run-S committed it
    assert not env.blob.list(env.containers.staging, layout.Run(hour_r.run_key).prefix)  # nothing points at it


def test_subset_rescoring_of_another_sensor_keeps_a_partial_hours_failed_shard_named(env):
    """A partial hour (shard 1 of 4 failed), then a subset rescoring of a sensor in another shard: the manifest
    still names shard 1 and its spec; a rescoring of shard 1's sensor fills it in and frees the staging."""
    hour_r, _, _, failed = _partial_run(env, "run-R", hours=1, size=1, victim=1)
    spec = ShardSpec.from_json(env.blob.read_bytes(*st.parse_uri(failed.spec_uri)), source="test")
    [(device, tag)] = [(m.device_id, m.tag) for m in spec.models]
    other = next(
        m
        for m in env.windows[["device_id", "tag"]].drop_duplicates().itertuples()
        if (m.device_id, m.tag) != (device, tag)
    )
    [manifest] = _rescore(env, "run-T", devices=[other.device_id], tags=[other.tag])
    _, quarantine = assert_accounting(env, manifest, landed=BASE)
    assert manifest["status"] == "partial" and list(quarantine["reason"]) == [SHARD_FAILED] * 60
    assert [f["spec"] for f in manifest["failed_shards"]] == [failed.spec_uri]
    assert env.blob.exists(*st.parse_uri(failed.spec_uri))

    [filled] = _rescore(env, "run-U", devices=[device], tags=[tag])
    predictions, quarantine = assert_accounting(env, filled, landed=BASE)
    assert filled["status"] == "scored" and filled["failed_shards"] == [] and quarantine.empty
    assert len(predictions) == BASE
    assert not env.blob.list(env.containers.staging, layout.Run(hour_r.run_key).prefix)


def test_late_windows_are_picked_up_by_a_rerun(env):
    first = run_hour(env, "run-1")
    assert first["counts"]["landed"] == BASE
    late = [window_row(env, minute=m) for m in (57, 58)]
    env.land("0_late_1.json", jsonl(*late), folder=NEXT_FOLDER)  # arrived after the commit, in the next folder
    second = run_hour(env, "run-2")
    predictions, _ = assert_accounting(env, second, landed=BASE + 2)
    assert second["counts"]["scored"] == BASE + 2 and set(predictions["run_id"]) == {"run-2"}


def test_window_beyond_the_late_horizon_is_owned_by_the_hour_that_found_it_whatever_late_folders(env):
    """Ownership by the window alone: a window two folders late (LATE_HORIZON is 1) belongs to the folder's hour,
    quarantined there, and a re-run of its own hour with a larger late_folders does not take it a second time."""
    far = f"{HOUR + 2 * H:%Y/%m/%d/%H}/"
    env.land("0_late_1.json", jsonl(window_row(env, minute=40)), folder=far)
    assert run_hour(env, "run-1", late_folders=1)["counts"]["landed"] == BASE
    found = run_hour(env, "run-2", late_folders=0, start=HOUR + 2 * H, max_share=1.0)
    _, quarantine = assert_accounting(env, found, landed=1, hour=HOUR + 2 * H)
    assert list(quarantine["reason"]) == ["window_outside_interval"]  # quarantined, not lost
    wider = run_hour(env, "run-3", late_folders=3)  # reads the far folder too: changes no owner
    assert wider["counts"]["landed"] == BASE and len(wider["source_folders"]) == 4


def test_late_windows_of_an_hour_run_with_late_folders_0_are_still_its_own(env):
    """late_folders 0 on one hour and the default on the next: the first hour's late windows are in its own
    partition, and not in the next hour's."""
    env.land("0_late_1.json", jsonl(*(window_row(env, minute=m) for m in (57, 58))), folder=NEXT_FOLDER)
    first = run_hour(env, "run-1", late_folders=0)
    assert first["counts"]["scored"] == BASE + 2  # every run reads LATE_HORIZON folders at least
    nxt = run_hour(env, "run-2", start=HOUR + H, max_share=1.0)
    assert nxt["counts"]["landed"] == 0


def test_stale_run_cannot_overwrite_a_newer_commit_superseded_by_the_other_run(env):
    """Run A reads the hour; late windows land; run B reads, scores and commits; then A commits: A fails with
    "superseded by run run-B" and B's partition, with the late windows, stays."""
    hour_a = env.hour("run-A")
    summary_a, shards_a = read_and_plan(hour_a, sensors_per_shard=2)
    results_a = [score_shard(env.blob, s.spec_uri) for s in shards_a]
    env.land("0_late_1.json", jsonl(*(window_row(env, minute=m) for m in (57, 58))), folder=NEXT_FOLDER)
    manifest_b = run_hour(env, "run-B")
    assert manifest_b["counts"]["landed"] == BASE + 2
    with pytest.raises(SupersededError, match=r"superseded by run run-B \(committed at .*\), which committed it"):
        commit(hour_a, summary_a, results_a)
    predictions, _ = assert_accounting(env, manifest_b, landed=BASE + 2)  # B's partition, whole and untouched
    assert set(predictions["run_id"]) == {"run-B"}
    rerun = run_hour(env, "run-C")  # nothing lost: a re-run scores everything that landed
    assert rerun["counts"]["scored"] == BASE + 2


def test_retried_commit_of_the_same_run_is_not_a_conflict(env):
    hour = env.hour("run-1")
    summary, shards = read_and_plan(hour, sensors_per_shard=2)
    results = [score_shard(env.blob, s.spec_uri) for s in shards]
    first = commit(hour, summary, results)
    # a retry after the first try committed (the staging is gone, so re-stage the same run's outputs)
    summary, shards = read_and_plan(hour, sensors_per_shard=2)
    results = [score_shard(env.blob, s.spec_uri) for s in shards]
    run = layout.Run(hour.run_key)  # as the first try planned it: before any manifest of the hour
    plan = ShardPlan.from_json(env.blob.read_bytes(env.containers.staging, run.plan), source="plan")
    env.blob.write_bytes(env.containers.staging, run.plan, dataclasses.replace(plan, generations={}).to_json())
    assert commit(hour, summary, results)[0].counts == first[0].counts


def test_two_runs_racing_on_one_hour_leave_the_winner_whole(env):
    """Both runs read the same generation and commit at the same moment: the manifest write is conditional, so
    exactly one wins and the other fails superseded; the partition is the winner's."""
    staged = []
    for run_id in ("run-X", "run-Y"):
        hour = env.hour(run_id)
        summary, shards = read_and_plan(hour, sensors_per_shard=2)
        staged.append((hour, summary, [score_shard(env.blob, s.spec_uri) for s in shards]))
    outcomes: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def race(hour, summary, results) -> None:
        barrier.wait()
        try:
            commit(hour, summary, results)
            outcomes[hour.run_id] = "committed"
        except SupersededError as exc:
            outcomes[hour.run_id] = str(exc)

    threads = [threading.Thread(target=race, args=args) for args in staged]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [r for r, o in outcomes.items() if o == "committed"]
    assert len(winners) == 1 and len(outcomes) == 2
    [loser] = set(outcomes) - set(winners)
    assert f"superseded by run {winners[0]}" in outcomes[loser]
    _, manifest = partition(env, env.containers.predictions)
    assert manifest["run_id"] == winners[0]
    assert_accounting(env, manifest, landed=BASE)


def _staged_runs(env: Env, *run_ids: str) -> list[tuple[Scope, object, list]]:
    """Each run loaded, planned and scored, ready to commit (all read the same manifest generation)."""
    staged = []
    for run_id in run_ids:
        hour = env.hour(run_id)
        summary, shards = read_and_plan(hour, sensors_per_shard=2)
        staged.append((hour, summary, [score_shard(env.blob, s.spec_uri) for s in shards]))
    return staged


def test_the_run_that_claimed_a_commit_first_is_the_only_one_writing_the_hour(env, monkeypatch):
    """Run X claims the commit and is held while it uploads; run Y, from the same state, stops at its claim with
    nothing of the hour written, and X's commit completes whole: the partition file is X's, never Y's."""
    (x, x_summary, x_results), (y, y_summary, y_results) = _staged_runs(env, "run-X", "run-Y")
    claimed, release = threading.Event(), threading.Event()
    upload = BlobStorage.upload_file

    def held_upload(self, container, path, local):
        if threading.current_thread().name == "commit-X":
            claimed.set()
            assert release.wait(60)
        return upload(self, container, path, local)

    monkeypatch.setattr(BlobStorage, "upload_file", held_upload)
    errors: list[BaseException] = []
    thread = threading.Thread(
        target=lambda: _record_errors(errors, commit, x, x_summary, x_results), name="commit-X", daemon=True
    )
    thread.start()
    assert claimed.wait(60)
    part = layout.Partition(HOUR)
    with pytest.raises(SupersededError, match="superseded by run run-X, which claimed its commit from the same state"):
        commit(y, y_summary, y_results)
    assert env.blob.generation(env.containers.predictions, part.data) is None  # Y wrote nothing of the hour
    release.set()
    thread.join(60)
    assert not errors and not thread.is_alive()
    _, manifest = partition(env, env.containers.predictions)
    predictions, _ = assert_accounting(env, manifest, landed=BASE)
    assert manifest["run_id"] == "run-X" and set(predictions["run_id"]) == {"run-X"}
    data = env.blob.read_bytes(env.containers.predictions, part.data)
    assert manifest["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()


def _record_errors(errors: list[BaseException], call, *args) -> None:
    try:
        call(*args)
    except BaseException as exc:  # the test thread's failure, reported by the test
        errors.append(exc)


def test_a_claim_left_by_a_dead_commit_blocks_other_runs_until_it_expires(env):
    """A commit that died after its claim leaves the hour claimed: another run fails, naming it and when the claim
    expires; once expired, the next run takes it over and commits. The claiming run's own retry never waits."""
    from datetime import datetime, timezone

    from sensor_scoring.runs import fence

    [(hour, summary, results)] = _staged_runs(env, "run-2")
    path = layout.commit_claim(HOUR, "")  # the hour was never committed: generation ""
    now = datetime.now(timezone.utc)
    dead = {"run_id": "run-dead", "hour": HOUR.isoformat(), "claimed_at": now.isoformat()}
    env.blob.write_bytes(env.containers.staging, path, json.dumps(dead).encode())
    with pytest.raises(SupersededError, match="superseded by run run-dead.*clear it, or wait until"):
        commit(hour, summary, results)
    assert env.blob.generation(env.containers.predictions, layout.Partition(HOUR).data) is None
    fence.claim_commit(env.hour("run-dead"), HOUR, "")  # the dead run's own retry goes on

    dead["claimed_at"] = (now - fence.CLAIM_TTL - timedelta(minutes=1)).isoformat()
    env.blob.write_bytes(env.containers.staging, path, json.dumps(dead).encode())
    commit(hour, summary, results)
    _, manifest = partition(env, env.containers.predictions)
    assert manifest["run_id"] == "run-2"
    assert not env.blob.list(env.containers.staging, "claims/")  # taken over, then released with the commit
    assert_accounting(env, manifest, landed=BASE)


# --- 6. Faults in the machinery: killed shard, commit, storage outage. ---

KILL_AFTER_PREDICTIONS = """
import os, signal, sys
from sensor_scoring import cli, storage
write = storage.BlobStorage.write_bytes
def dying_write(self, container, path, data):
    write(self, container, path, data)
    if path.endswith("predictions.parquet"):
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies between its outputs
storage.BlobStorage.write_bytes = dying_write
sys.exit(cli.main(["score-shard", "--spec", sys.argv[1]]))
"""


KILL_MID_UPLOAD = """
import os, signal, sys
from sensor_scoring import cli, storage
write = storage.BlobStorage.write_bytes
def dying_write(self, container, path, data):
    if not path.endswith("predictions.parquet"):
        return write(self, container, path, data)
    blob = self._client.get_blob_client(container, path)
    blob.stage_block("YmxvY2stMDAwMDA=", data[: len(data) // 2])  # half the file is staged as a block ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the worker dies before committing the block list
storage.BlobStorage.write_bytes = dying_write
sys.exit(cli.main(["score-shard", "--spec", sys.argv[1]]))
"""


@pytest.mark.parametrize(
    "script,partial_output",
    [
        pytest.param(KILL_AFTER_PREDICTIONS, True, id="between-outputs"),
        pytest.param(KILL_MID_UPLOAD, False, id="mid-upload"),
    ],
)
def test_shard_killed_mid_write_and_retried_leaves_one_copy_of_each_row(env, azurite, script, partial_output):
    hour = env.hour()
    summary, shards = read_and_plan(hour, sensors_per_shard=2)
    victim = shards[0].spec_uri
    killed = subprocess.run([sys.executable, "-c", script, victim], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    out_container, out_prefix = st.parse_uri(victim.rsplit("/", 1)[0] + "/")
    # between outputs: a complete predictions blob of the dead try; mid-upload: nothing (uncommitted blocks are
    # invisible)
    assert env.blob.exists(out_container, out_prefix + "predictions.parquet") is partial_output
    assert not env.blob.exists(out_container, out_prefix + "result.json")  # never marked complete
    # the retry: the same command on the local backend overwrites the same paths
    results = [LocalBackend().run_shard(s.spec_uri, storage_setting=azurite.connection_string) for s in shards]
    [manifest] = commit(hour, summary, [ShardResult.from_dict(r, source="the local backend") for r in results])
    predictions, _ = assert_accounting(env, manifest.to_dict(), landed=BASE)
    assert len(predictions) == BASE


def test_local_backend_reports_a_killed_shard(env, azurite, tmp_path):
    hour = env.hour()
    _, shards = read_and_plan(hour, sensors_per_shard=4)
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -c '{KILL_AFTER_PREDICTIONS}' \"$5\"\n")
    wrapper.chmod(0o755)
    assert shard_command("X", python=str(wrapper))[5] == "X"  # $5 of the wrapper: the spec URI
    original = sys.executable
    try:
        sys.executable = str(wrapper)
        with pytest.raises(ShardFailed, match=f"exited with code {-signal.SIGKILL}"):
            LocalBackend(mode="process").run_shard(shards[0].spec_uri, storage_setting=azurite.connection_string)
    finally:
        sys.executable = original


def test_commit_refuses_when_a_shard_result_is_missing(env):
    hour = env.hour()
    summary, shards = read_and_plan(hour, sensors_per_shard=2)
    results = [score_shard(env.blob, s.spec_uri) for s in shards]
    with pytest.raises(
        AccountingError,
        match=f"landed {BASE} windows but scored 120 \\+ quarantined 0 \\+ duplicates 0 = 120; refusing to commit",
    ):
        commit(hour, summary, results[:1])
    assert not env.blob.list(env.containers.predictions)


def test_reader_sees_the_old_or_the_new_hour_during_a_recommit(env):
    """A reader polls the partition while the hour is re-committed with more windows: every read is whole."""
    run_hour(env, "run-old")
    env.land("0_late_1.json", jsonl(*(window_row(env, minute=m) for m in range(60))), folder=NEXT_FOLDER)
    seen: list[tuple[str, int]] = []
    done = threading.Event()
    reader = BlobStorage(os.environ[config.STORAGE_ENV])

    def poll() -> None:
        while not done.is_set():
            frame = pd.read_parquet(
                io.BytesIO(reader.read_bytes(env.containers.predictions, layout.Partition(HOUR).data))
            )
            seen.append((",".join(sorted(set(frame["run_id"]))), len(frame)))

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        manifest = run_hour(env, "run-new")
    finally:
        done.set()
        thread.join()
    assert_accounting(env, manifest, landed=BASE + 60)
    assert set(seen) <= {("run-old", BASE), ("run-new", BASE + 60)} and ("run-old", BASE) in seen


@pytest.fixture
def own_azurite(tmp_path, containers, monkeypatch, trained, hour_windows):
    """A dedicated Azurite (own port and data folder) that a test may stop and restart; stopped at the end."""
    server = Azurite(tmp_path / "azurite-own").start()
    monkeypatch.setenv(config.STORAGE_ENV, server.connection_string)
    monkeypatch.setattr(pack, "PACK_SIZE", 2)
    try:
        blob = BlobStorage(server.connection_string)
        registry.register(blob, containers.models, trained, version="v1", params={}, promote=True)
        land_windows(blob, containers.windows, hour_windows, LandingPlan(late_share=0.0))
        yield server
    finally:
        server.stop()


def test_storage_outage_is_retried_with_backoff_and_the_run_completes(
    own_azurite, containers, hour_windows, monkeypatch
):
    monkeypatch.setenv(st.RETRIES_ENV, "8")
    monkeypatch.setenv(st.RETRY_BACKOFF_ENV, "0.5")
    blob = BlobStorage(own_azurite.connection_string)
    env = Env(blob, containers, hour_windows)
    hour = env.hour()
    summary, shards = read_and_plan(hour, sensors_per_shard=2)
    own_azurite.stop()  # storage goes away mid-run ...
    restarter = threading.Timer(3.0, own_azurite.start)  # ... and comes back on the same port and data folder
    restarter.start()
    began = time.monotonic()
    try:
        results = [LocalBackend().run_shard(s.spec_uri, storage_setting=own_azurite.connection_string) for s in shards]
    finally:
        restarter.join()
    assert time.monotonic() - began >= 3.0  # the shard waited the outage out
    [manifest] = commit(hour, summary, [ShardResult.from_dict(r, source="the local backend") for r in results])
    assert_accounting(env, manifest.to_dict(), landed=BASE)


def test_storage_that_stays_away_fails_with_a_clear_error(own_azurite, containers, hour_windows, monkeypatch):
    monkeypatch.setenv(st.RETRIES_ENV, "2")
    monkeypatch.setenv(st.RETRY_BACKOFF_ENV, "0.2")
    env = Env(BlobStorage(own_azurite.connection_string), containers, hour_windows)
    own_azurite.stop()
    with pytest.raises(StorageUnavailable) as caught:
        plan_shards(env.hour(), model_version="production")
    assert re.match(
        f"plan_shards: blob account devstoreaccount1 at http://127.0.0.1:{own_azurite.port}/devstoreaccount1/? "
        "is unreachable after 2 retries with exponential backoff \\(ServiceRequestError: .*Connection refused",
        str(caught.value),
    ), str(caught.value)
    assert "SCORING_STORAGE_RETRIES" in str(caught.value)


# --- 7. Models: tampered, missing, and one that would run code on load. ---


def _pack_path(env: Env, number: int) -> str:
    return f"versions/v1/pack-{number:05d}.npz"


def _sensors_of_pack(env: Env, number: int) -> set[tuple[str, str]]:
    index = registry.read_index(env.blob, env.containers.models, "v1")
    rows = index[index["pack"] == f"pack-{number:05d}.npz"]
    return set(zip(rows["device_id"], rows["tag"]))


def _alias_to_missing_version(env: Env) -> str:
    env.blob.write_bytes(env.containers.models, "aliases/broken.json", json.dumps({"version": "v9"}).encode())
    return "broken"


def _version_without_manifest(env: Env) -> str:
    index = env.blob.read_bytes(env.containers.models, "versions/v1/models.parquet")
    env.blob.write_bytes(env.containers.models, "versions/v2/models.parquet", index)  # an interrupted register
    return "v2"


def _version_without_index(env: Env) -> str:
    manifest = env.blob.read_bytes(env.containers.models, "versions/v1/manifest.json")
    env.blob.write_bytes(env.containers.models, "versions/v3/manifest.json", manifest)
    return "v3"


def _index_not_matching_manifest(env: Env) -> str:
    frame = registry.read_index(env.blob, env.containers.models, "v1")
    frame.loc[0, "sha256"] = "f" * 64
    env.blob.write_bytes(env.containers.models, "versions/v1/models.parquet", st.parquet_bytes(frame))
    return "production"


REGISTRY_FAULTS = [
    pytest.param(
        _alias_to_missing_version,
        r"model alias 'broken' points at version 'v9', which has no manifest in container '[^']+'; "
        r"existing versions: v1\. Point the alias at an existing version",
        id="alias-to-missing-version",
    ),
    pytest.param(
        _version_without_manifest,
        r"no model alias or version named 'v2' in container '[^']+' \(existing versions: v1\)",
        id="version-without-manifest",
    ),
    pytest.param(
        _version_without_index,
        r"model version 'v3' has a manifest but no index \(models\.parquet\) .*; existing versions: v1, v3",
        id="version-without-index",
    ),
    pytest.param(
        _index_not_matching_manifest,
        r"model index of version 'v1' does not match its manifest hash; existing versions: v1",
        id="index-not-matching-manifest",
    ),
    pytest.param(lambda env: "../versions/v1", r"model_version '\.\./versions/v1' is not a name", id="path-version"),
    pytest.param(lambda env: "v1/", r"model_version 'v1/' is not a name", id="trailing-slash-version"),
]


@pytest.mark.parametrize("make,message", REGISTRY_FAULTS)
def test_registry_fault_fails_at_once_naming_alias_version_and_existing_versions(env, make, message, monkeypatch):
    """A configuration error, not a transient one: one attempt, a DataError (no task retries), a clear message."""
    name = make(env)
    hour = env.hour()
    reads: list[str] = []
    original = env.blob.read_bytes
    monkeypatch.setattr(env.blob, "read_bytes", lambda c, p: reads.append(p) or original(c, p))
    with pytest.raises(RegistryError, match=message) as caught:
        plan_shards(hour, model_version=name, sensors_per_shard=2)
    assert isinstance(caught.value, DataError) and isinstance(caught.value, LookupError)
    assert len(reads) == len(set(reads))  # nothing read twice: no retry loop
    assert not env.blob.list(env.containers.predictions)
    assert not env.blob.list(env.containers.staging)  # refused before anything was staged


@pytest.mark.parametrize("field", ["devices", "tags"])
@pytest.mark.parametrize("value", ["../dev-0000", "dev/0000", "dev\x00", ".."])
def test_path_like_device_or_tag_is_refused_before_reading(env, field, value):
    with pytest.raises(InvalidName, match=f"{field} .* is not a name"):
        plan_shards(env.hour(), model_version="production", **{field: [value]})
    assert not env.blob.list(env.containers.staging)


@pytest.mark.airflow
@pytest.mark.parametrize("value", ["../versions/v1", "v1/", "a..b", "v1\u0007"])
def test_params_schema_refuses_path_like_names(sensor_dag, value):
    from airflow.sdk.exceptions import ParamValidationError

    for field, given in [("model_version", value), ("devices", [value]), ("tags", [value])]:
        with pytest.raises(ParamValidationError):
            sensor_dag.params.get_param(field).resolve(given)
    assert sensor_dag.params.get_param("model_version").resolve("v1.2-rc_3") == "v1.2-rc_3"


def test_tampered_model_quarantines_only_its_sensor(env):
    path = _pack_path(env, 1)
    with np.load(io.BytesIO(env.blob.read_bytes(env.containers.models, path)), allow_pickle=False) as npz:
        arrays = {name: npz[name].copy() for name in npz.files}
    arrays["intercept"][0] += 0.5  # one number of the pack's first model
    sink = io.BytesIO()
    np.savez(sink, **arrays)
    env.blob.write_bytes(env.containers.models, path, sink.getvalue())
    manifest = run_hour(env)
    _, quarantine = assert_accounting(env, manifest, landed=BASE)
    assert manifest["quarantine_reasons"] == {"model_hash_mismatch": 60} and manifest["counts"]["scored"] == 180
    index = registry.read_index(env.blob, env.containers.models, "v1")
    first = index[(index["pack"] == "pack-00001.npz") & (index["row"] == 0)].iloc[0]
    assert set(zip(quarantine["device_id"], quarantine["tag"])) == {(first["device_id"], first["tag"])}


def test_model_of_another_input_width_quarantines_only_its_sensor(env, trained, monkeypatch):
    """A version holding one model of another input width (one feature fewer than its set's): that sensor is
    quarantined model_unreadable at load, the others are scored (scored together, the hour would fail)."""
    monkeypatch.setattr(pack, "PACK_SIZE", 1)  # a pack's models share a width: the narrow one has a pack of its own
    narrow = dataclasses.replace(trained[0].arrays)
    narrow.mean, narrow.scale = narrow.mean[:-1].copy(), narrow.scale[:-1].copy()
    narrow.support_vectors = narrow.support_vectors[:, :-1].copy()
    models = [dataclasses.replace(trained[0], arrays=narrow), *trained[1:]]
    registry.register(env.blob, env.containers.models, models, version="v-narrow", params={}, promote=True)
    manifest = run_hour(env)
    _, quarantine = assert_accounting(env, manifest, landed=BASE)
    assert manifest["quarantine_reasons"] == {"model_unreadable": 60} and manifest["counts"]["scored"] == 180
    assert set(zip(quarantine["device_id"], quarantine["tag"])) == {(trained[0].device_id, trained[0].tag)}


def test_missing_model_quarantines_its_sensors_and_scores_the_others(env):
    env.blob.delete_prefix(env.containers.models, _pack_path(env, 1))
    manifest = run_hour(env)
    _, quarantine = assert_accounting(env, manifest, landed=BASE)
    assert manifest["quarantine_reasons"] == {"model_missing": 120} and manifest["counts"]["scored"] == 120
    assert set(zip(quarantine["device_id"], quarantine["tag"])) == _sensors_of_pack(env, 1)


class _Payload:
    """Unpickling this creates the marker file: what a malicious model file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _npz_with_payload(marker: str) -> bytes:
    sink = io.BytesIO()
    np.savez(sink, mean=np.array([_Payload(marker)], dtype=object), scale=np.ones((1, 5)))
    return sink.getvalue()


@pytest.mark.parametrize("kind", ["npz-object-array", "raw-pickle"])
def test_model_file_that_would_run_code_is_refused_and_nothing_runs(env, tmp_path, kind):
    marker = tmp_path / "payload-ran"
    planted = _npz_with_payload(str(marker)) if kind == "npz-object-array" else pickle.dumps(_Payload(str(marker)))
    env.blob.write_bytes(env.containers.models, _pack_path(env, 1), planted)
    manifest = run_hour(env)
    _, quarantine = assert_accounting(env, manifest, landed=BASE)
    assert manifest["quarantine_reasons"] == {"model_unreadable": 120} and manifest["counts"]["scored"] == 120
    assert not marker.exists()  # refused before anything was unpickled
    # the planted file is live: loading it the unsafe way does run the payload
    live = tmp_path / "unsafe-load-ran"
    probe = (
        "import io, sys, pickle, numpy as np; d = open(sys.argv[1], 'rb').read();"
        "np.load(io.BytesIO(d), allow_pickle=True)['mean'] if d[:2] == b'PK' else pickle.loads(d)"
    )
    unsafe = tmp_path / "planted"
    unsafe.write_bytes(
        _npz_with_payload(str(live)) if kind == "npz-object-array" else pickle.dumps(_Payload(str(live)))
    )
    subprocess.run(
        [sys.executable, "-c", probe, str(unsafe)], check=True, timeout=60, cwd=os.path.dirname(__file__) + "/../.."
    )
    assert live.exists()


# --- 8. Through the DAG: a threshold breach or a broken file fails the run at once, without retries. ---


@pytest.mark.airflow
@pytest.mark.parametrize(
    "fault,message",
    [
        pytest.param(
            "threshold",
            "30 of 270 windows (11.1%) failed validation (negative_std 30); above max_quarantine_share 10.0%",
            id="above-threshold",
        ),
        pytest.param("structure", f"{FOLDER}0_x_1.csv: missing required column(s) value_std", id="missing-column"),
    ],
)
def test_dag_run_fails_without_retries_on_bad_data(env, sensor_dag, capfd, caplog, fault, message):
    if fault == "threshold":
        env.land("0_bad_1.json", _bad_batch(env, 30))
    else:
        env.land("0_x_1.csv", _csv([window_row(env)], drop="value_std"))
    began = time.monotonic()
    run = sensor_dag.test(logical_date=HOUR + H, run_conf={"max_quarantine_share": 0.1, "settle_minutes": 0})
    elapsed = time.monotonic() - began
    assert str(run.state) == "failed"
    states = {ti.task_id: (str(ti.state), ti.try_number) for ti in run.get_task_instances()}
    # AirflowFailException: no retry wait. A file breaking the contract fails its read_windows instance (and commit
    # refuses at once: "read_windows 0 did not succeed"); too many failing windows fail commit, which sums them
    if fault == "structure":
        assert states["read_windows"] == ("failed", 1)
    assert states["commit"] == ("failed", 1)
    assert elapsed < 60  # a retry would have waited at least retry_delay (1 min)
    out = capfd.readouterr()
    assert message in out.out + out.err + caplog.text
    assert not env.blob.list(env.containers.predictions)


# --- 9. Secrets: a real, never-published account key must not show up anywhere a run leaves text. ---


@pytest.mark.airflow
@pytest.mark.parametrize("mode", config.LOCAL_SHARD_MODES)
def test_account_key_is_in_no_log_xcom_rendered_field_or_manifest(
    sensor_dag, containers, trained, hour_windows, tmp_path, monkeypatch, capfd, caplog, mode
):
    import base64
    import secrets

    from tests.support.partitions import run_records

    account, key = "scoringleak", base64.b64encode(secrets.token_bytes(64)).decode()
    monkeypatch.setenv("AZURITE_ACCOUNTS", f"{account}:{key}")  # a dedicated Azurite that knows only this key
    server = Azurite(tmp_path / "azurite-secret").start()
    try:
        endpoint = f"http://{server.host}:{server.port}/{account}"
        blob = BlobStorage(
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={endpoint};"
        )
        monkeypatch.setattr(pack, "PACK_SIZE", 2)
        registry.register(blob, containers.models, trained, version="v1", params={}, promote=True)
        land_windows(blob, containers.windows, hour_windows, LandingPlan(late_share=0.0))
        monkeypatch.setenv(config.STORAGE_ENV, str(tmp_path / "not-used"))
        monkeypatch.setenv(config.LOCAL_SHARDS_ENV, mode)
        monkeypatch.setenv(
            "AIRFLOW_CONN_SCORING_STORAGE",
            json.dumps({"conn_type": "wasb", "login": account, "password": key, "host": endpoint}),
        )
        with caplog.at_level("DEBUG"):  # everything any logger says, the SDK's included
            run = sensor_dag.test(logical_date=HOUR + H, run_conf={"settle_minutes": 0, "sensors_per_shard": 2})
        assert str(run.state) == "success"
        out = capfd.readouterr()
        logs = [
            p.read_text(errors="replace") for p in Path(os.environ["AIRFLOW_HOME"], "logs").rglob("*") if p.is_file()
        ]
        blobs = [
            blob.read_bytes(c, b.name).decode()
            for c in (containers.predictions, containers.quarantine, containers.staging)
            for b in blob.list(c)
            if b.name.endswith(".json")
        ]
        texts = {
            "captured output": out.out + out.err + caplog.text,
            **{f"log file {i}": t for i, t in enumerate(logs)},
            **{f"record {i}": t for i, t in enumerate(run_records(run.run_id))},
            **{f"blob {i}": t for i, t in enumerate(blobs)},
        }
        # the shard's own output was captured and scanned: a child's lines, or the step's in the task's process
        assert ("[shard]" if mode == "process" else "in the task's process") in texts["captured output"]
        assert "Shard done in" in texts["captured output"]
        assert len(blobs) >= 3 and len(texts) > 8
        leaks = [where for where, text in texts.items() if key in text or key[:24] in text or "AccountKey" in text]
        assert leaks == []
    finally:
        server.stop()


# --- Data Lake Gen2 (hierarchical namespace) folder markers, and blobs named like temporary files. ---


def plant_folder_markers(storage: BlobStorage, container: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Folder markers for every folder of every blob in ``container`` (and for ``extra`` folders), in both forms:
    ``<folder>/`` (Storage Explorer, azcopy) and ``<folder>`` (a Data Lake Gen2 directory as the Blob API lists
    it), each a zero-byte blob with ``hdi_isfolder=true``. Written with the SDK: the project never writes them."""
    client = storage.service_client.get_container_client(container)
    folders = set(extra)
    for info in storage.list(container):
        parts = info.name.split("/")[:-1]
        folders |= {"/".join(parts[: n + 1]) for n in range(len(parts))}
    names = sorted({name for folder in folders for name in (folder + "/", folder)})
    for name in names:
        client.upload_blob(name, b"", overwrite=True, metadata={"hdi_isfolder": "true"})
    return names


def test_folder_markers_in_the_landed_folders_are_not_files(env):
    """The held-out case: ``<hour>/`` (and the directory blobs of a hierarchical-namespace account) in the landed
    folders; before, the hour failed with UnsafePathError and nothing was committed."""
    planted = plant_folder_markers(env.blob, env.containers.windows, extra=(FOLDER + "sub", NEXT_FOLDER[:-1]))
    assert FOLDER in planted and FOLDER + "sub/" in planted
    manifest = run_hour(env)
    assert_accounting(env, manifest, landed=BASE)
    assert manifest["source_files"] == {"seen": 3, "read": 3, "empty": 0, "quarantined": 0, "other_hours": 0}
    assert manifest["empty_files"] == [] and manifest["quarantined_files"] == []


def test_folder_markers_in_the_registry_are_not_models_or_versions(env):
    planted = plant_folder_markers(env.blob, env.containers.models)
    assert "versions/v1/" in planted and "versions/v1" in planted
    assert registry.list_versions(env.blob, env.containers.models) == ["v1"]
    manifest = run_hour(env)
    assert_accounting(env, manifest, landed=BASE)
    assert manifest["model_version"] == "v1"


def test_folder_markers_in_staging_are_not_shard_outputs(env):
    hour = env.hour()
    summary, shards = read_and_plan(hour, sensors_per_shard=2)
    plant_folder_markers(env.blob, env.containers.staging)
    results = [score_shard(env.blob, s.spec_uri) for s in shards]
    plant_folder_markers(env.blob, env.containers.staging)  # between the shards' outputs too
    [manifest] = commit(hour, summary, results)
    assert_accounting(env, manifest.to_dict(), landed=BASE)


def test_folder_markers_beside_committed_hours_are_not_partitions(env):
    """The views and a re-commit list the committed containers: markers there are neither hours nor files."""
    from sensor_scoring import fleet
    from sensor_scoring.steps import health

    run_hour(env)
    health.model_health(env.hour())
    for container in (env.containers.predictions, env.containers.quarantine, env.containers.health):
        plant_folder_markers(env.blob, container)
    view = fleet.fleet_view(env.blob, env.containers, HOUR, HOUR + H)
    assert view.missing_hours == [] and view.totals["windows"] == BASE
    sensor = fleet.sensor_view(env.blob, env.containers, "dev-0000", env.windows["tag"].iloc[0], HOUR, HOUR + H)
    assert len(sensor.windows) == 60
    manifest = run_hour(env, "run-2")  # the re-commit replaces the partition; the markers are left alone
    assert_accounting(env, manifest, landed=BASE)


def test_blobs_named_like_temporary_files_are_read_on_a_local_directory(tmp_path, containers, trained, hour_windows):
    """A ``.tmp-`` or dot-named landed file is data on every storage; the directory storage keeps its own
    temporary files and locks outside the containers, so it neither hides such a file nor leaves its own."""
    local = st.LocalStorage(tmp_path / "store")
    registry.register(local, containers.models, trained, version="v1", params={}, promote=True)
    land_windows(local, containers.windows, hour_windows, LandingPlan(late_share=0.0))
    env = Env(local, containers, hour_windows)  # any Storage runs the steps
    rows = [window_row(env, minute=m) for m in range(4)]
    env.land(".tmp-0_x_1.json", jsonl(*rows[0:2]))
    env.land(".0_y_1", jsonl(*rows[2:4]))
    manifest = run_hour(env)
    assert (manifest["counts"]["landed"], manifest["counts"]["scored"]) == (BASE + 4, BASE + 4)
    assert manifest["source_files"] == {"seen": 5, "read": 5, "empty": 0, "quarantined": 0, "other_hours": 0}
    store = tmp_path / "store"
    in_containers = [p for p in store.rglob(".*") if p.is_file() and not p.relative_to(store).parts[0].startswith(".")]
    assert sorted(p.name for p in in_containers) == [".0_y_1", ".tmp-0_x_1.json"]  # none of the storage's own
