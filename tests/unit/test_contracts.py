"""The records between tasks: each round-trips through XCom and JSON, and anything else is refused by name."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import pytest

from sensor_scoring import contracts as c
from sensor_scoring.windows import WINDOW_DTYPES
from tests.support.helpers import START, sample_manifest

H = timedelta(hours=1)
SOURCE = "az://staging/runs/r/x.json"


def corrupt() -> c.CorruptFile:
    return c.CorruptFile(
        file="2026/11/24/00/0_t_1.json", bytes=12, sha256="ab" * 32, error="cannot be parsed", hour=START
    )


def summary() -> c.HourSummary:
    return c.HourSummary(
        run_id="manual__2026-11-24T01:02:03+00:00",
        run_key="manual-1",
        start=START,
        end=START + H,
        files_read=3,
        folders=("2026/11/24/00", "2026/11/24/01"),
        landed=241,
        landed_by_hour={START.isoformat(): 241},
        valid=239,
        duplicates=1,
        quarantined=1,
        quarantine_reasons={"negative_std": 1},
        sensors=4,
        quarantined_files=(corrupt(),),
        empty_files=("2026/11/24/00/0_e_1.json",),
        max_quarantine_share=0.1,
        validation_report=SOURCE,
        subset=c.Subset(devices=("dev-0000",), tags=()),
        duplicates_by_sensor={START.isoformat(): (c.SensorDuplicates(device_id="dev-0000", tag=None, duplicates=1),)},
    )


def report() -> c.ValidationReport:
    hour = c.HourValidation(
        suite="landed_windows",
        hour=START,
        run_id="r",
        landed=241,
        duplicates=1,
        failing_rows=1,
        failing_share=round(1 / 241, 6),
        max_quarantine_share=0.1,
        threshold_exceeded=False,
        failing_rows_by_reason={"negative_std": 1},
        quarantined_files=(corrupt(),),
        empty_files=(),
    )
    return c.ValidationReport(
        suite="landed_windows",
        run_id="r",
        interval=c.Interval(START, START + H),
        evaluated_rows=240,
        seconds=0.25,
        physical_bounds={"default": [None, None]},
        expectations=({"expectation": "expect_column_to_exist", "success": True},),
        hours={START.isoformat(): hour},
    )


def spec() -> c.ShardSpec:
    return c.ShardSpec(
        run_id="r",
        run_key="r-1",
        shard=3,
        model_version="v1",
        containers=c.ShardContainers(models="models", staging="staging"),
        input="az://staging/runs/r-1/shard-00003/in/",
        output_prefix="az://staging/runs/r-1/shard-00003/",
        models=(c.ModelRef(device_id="d", tag="t", pack="pack-00000.npz", row=7, sha256="0" * 64),),
        start=START,
        end=START + H,
    )


def result() -> c.ShardResult:
    return c.ShardResult(
        shard=3,
        output_prefix="az://staging/runs/r-1/shard-00003/",
        scored=118,
        anomalies=4,
        quarantined=2,
        sensors=2,
        refused_models={"d/t": "model_hash_mismatch"},
    )


def validated_result() -> c.ShardResult:
    """A shard's result with the suite's split of its windows, as score_shard writes it."""
    validation = c.ShardValidation(
        landed_by_hour={START.isoformat(): 121},
        duplicates_by_hour={START.isoformat(): 1},
        failing_rows_by_hour={START.isoformat(): 1},
        failing_by_hour={START.isoformat(): {"negative_std": 1}},
        duplicates_by_sensor={START.isoformat(): (c.SensorDuplicates(device_id="d", tag="t", duplicates=1),)},
        valid=119,
        sensors=2,
        expectations=({"expectation": "expect_column_to_exist", "success": True, "unexpected_count": None},),
        seconds=0.12,
    )
    return dataclasses.replace(result(), validation=validation)


def read_spec() -> c.ReadSpec:
    return c.ReadSpec(
        run_id="r",
        run_key="r-1",
        group=2,
        start=START,
        end=START + H,
        containers=c.ReadContainers(windows="windows", staging="staging"),
        files=("2026/11/24/00/0_a_1.json", "2026/11/24/01/0_b_1.json"),
        folders=("2026/11/24/00", "2026/11/24/01"),
        shards=4,
        routing="az://staging/runs/r-1/routing.parquet",
        subset=c.Subset(devices=("d",), tags=()),
        output_prefix="az://staging/runs/r-1/read-00002/",
    )


def read_result() -> c.ReadResult:
    return c.ReadResult(
        group=2,
        output_prefix="az://staging/runs/r-1/read-00002/",
        files=2,
        read=1,
        empty_files=(),
        corrupt_files=(
            c.CorruptFile("2026/11/24/00/0_a_1.json", 12, "ab" * 32, "cannot be parsed", START),
            c.CorruptFile("2026/11/24/01/0_b_1.json", 3, "cd" * 32, "cannot be parsed", None, "corrupt_file"),
        ),
        landed_by_hour={START.isoformat(): 60},
        lookback_skipped=(c.SkippedContextFile("2026/11/23/23/0_c_1.json", "missing_column", "no value_avg"),),
        names="az://staging/runs/r-1/read-00002/names.parquet",
    )


def manifest() -> c.Manifest:
    base = sample_manifest(START, anomalies=3)
    entry = c.RescoringRecord(
        run_id="manual-2",
        model_version="v2",
        devices=("d",),
        tags=(),
        committed_at=START + 2 * H,
        counts=c.Counts(61, 60, 1, 0, 1),
    )
    part = c.PartitionFile("predictions", "date=2026-11-24/hour=00/part-00000.parquet", 60, 9000, "1" * 64)
    return dataclasses.replace(base, rescored=(entry,), subset=c.Subset(("d",), ()), files=(part,))


RECORDS = [
    summary,
    report,
    spec,
    result,
    manifest,
    lambda: c.PlannedShard(spec_uri=SOURCE, shard=0, sensors=2, windows=120, label="shard 0: a .. b"),
    lambda: c.ShardPlan(model_version="v1"),
    lambda: c.ShardPlan(
        model_version="v1",
        folders=("2026/11/24/00", "2026/11/24/01"),
        generations={START.isoformat(): "7"},
        subset=c.Subset(devices=(), tags=("t",)),
        reads=(c.PlannedShard(spec_uri=SOURCE, shard=0, sensors=0, windows=0, label="files 0: 2 file(s)"),),
        shards=3,
    ),
    lambda: c.RunPlan(
        reads=(c.PlannedShard(spec_uri=SOURCE, shard=0, sensors=0, windows=0, label="files 0: 2 file(s)"),),
        shards=(c.PlannedShard(spec_uri=SOURCE, shard=0, sensors=2, windows=120, label="shard 0: a .. b"),),
    ),
    read_spec,
    read_result,
    validated_result,
]


@pytest.mark.parametrize("make", RECORDS, ids=lambda make: type(make()).__name__)
def test_every_record_round_trips_through_xcom_and_json(make):
    record = make()
    as_xcom = json.loads(json.dumps(record.to_dict()))  # what XCom stores: plain JSON
    assert as_xcom["schema_version"] == type(record).SCHEMA_VERSION >= 1
    assert type(record).from_dict(as_xcom, source="XCom of a task") == record
    assert type(record).from_json(record.to_json(indent=2), source=SOURCE) == record


def test_blob_field_names_stay_what_the_docs_describe():
    body = manifest().to_dict()
    assert list(body) == [
        "schema_version",
        "run_id",
        "model_version",
        "hour",
        "interval",
        "committed_at",
        "counts",
        "quarantine_reasons",
        "files",
        "source_folders",
        "status",
        "quarantined_files",
        "empty_files",
        "validation",
        "subset",
        "rescored",
        "model_versions",
        "duplicates_by_sensor",
        "failed_shards",
        "source_files",
        "purged",
    ]
    assert body["hour"] == "2026-11-24T00:00:00+00:00" and body["interval"]["end"] == "2026-11-24T01:00:00+00:00"
    assert body["rescored"][0]["counts"] == {
        "landed": 61,
        "scored": 60,
        "quarantined": 1,
        "duplicates": 0,
        "anomalies": 1,
    }
    assert body["subset"] == {"devices": ["d"], "tags": []}
    assert list(spec().to_dict()) == [
        "schema_version",
        "run_id",
        "run_key",
        "shard",
        "model_version",
        "containers",
        "input",
        "output_prefix",
        "models",
        "start",
        "end",
    ]


def test_a_corrupt_file_reads_the_same_in_a_read_result_and_in_an_hours_validation():
    """One record for both: the stored ``_validation.json`` keeps its shape, and a read task's result.json written
    when the read task had its own record (fields in another order, ``hour`` null for a later hour's file) reads."""
    assert list(corrupt().to_dict()) == ["file", "bytes", "sha256", "error", "hour", "reason"]
    old_entry = {"file": "2026/11/24/01/0_b_1.json", "bytes": 3, "sha256": "cd" * 32, "error": "cannot be parsed"}
    body = {**read_result().to_dict(), "corrupt_files": [{**old_entry, "reason": "corrupt_file", "hour": None}]}
    [entry] = c.ReadResult.from_json(json.dumps(body), source=SOURCE).corrupt_files
    assert entry == c.CorruptFile(**old_entry, hour=None, reason="corrupt_file")
    with pytest.raises(c.ContractError, match="field 'corrupt_files\\[0\\]\\.hour' is missing"):
        c.ReadResult.from_dict({**body, "corrupt_files": [{**old_entry, "reason": "corrupt_file"}]}, source=SOURCE)


def _broken(make, change) -> dict:
    body = json.loads(json.dumps(make().to_dict()))
    change(body)
    return body


@pytest.mark.parametrize(
    "make,change,message",
    [
        pytest.param(
            manifest,
            lambda b: b["counts"].pop("scored"),
            "manifest from {src}: field 'counts.scored' is missing",
            id="missing-nested-field",
        ),
        pytest.param(
            manifest, lambda b: b.pop("status"), "manifest from {src}: field 'status' is missing", id="missing-field"
        ),
        pytest.param(
            manifest,
            lambda b: b.update(state="scored"),
            "manifest from {src}: unknown field(s) 'state'",
            id="unknown-field",
        ),
        pytest.param(
            manifest,
            lambda b: b["files"][0].update(etag="x"),
            "manifest from {src}: unknown field(s) 'files[0].etag'",
            id="unknown-nested-field",
        ),
        pytest.param(
            manifest,
            lambda b: b.pop("schema_version"),
            "manifest from {src}: field 'schema_version' is missing",
            id="unversioned",
        ),
        pytest.param(
            manifest,
            lambda b: b.update(schema_version=2),
            "manifest from {src}: schema_version 2 is not 1",
            id="other-version",
        ),
        pytest.param(
            manifest,
            lambda b: b.update(status="done"),
            "manifest from {src}: field 'status' should be 'scored' or 'empty' or 'partial', got str 'done'",
            id="bad-literal",
        ),
        pytest.param(
            manifest,
            lambda b: b["counts"].update(landed="61"),
            "manifest from {src}: field 'counts.landed' should be an integer, got str '61'",
            id="text-for-int",
        ),
        pytest.param(
            manifest,
            lambda b: b["counts"].update(landed=True),
            "field 'counts.landed' should be an integer, got bool True",
            id="bool-for-int",
        ),
        pytest.param(
            manifest,
            lambda b: b.update(hour="2026-11-24T00:00:00"),
            "field 'hour' should be an ISO time with its UTC offset",
            id="naive-time",
        ),
        pytest.param(
            summary,
            lambda b: b["duplicates_by_sensor"][START.isoformat()][0].pop("tag"),
            "hour summary from {src}: field 'duplicates_by_sensor.2026-11-24T00:00:00+00:00[0].tag' is missing",
            id="missing-in-list-of-map",
        ),
        pytest.param(
            summary,
            lambda b: b.update(folders="2026/11/24/00"),
            "field 'folders' should be a list, got str",
            id="text-for-list",
        ),
        pytest.param(
            result,
            lambda b: b.update(refused_models=[]),
            "shard result from {src}: field 'refused_models' should be an object, got list []",
            id="list-for-map",
        ),
        pytest.param(
            spec,
            lambda b: b.update(containers=None),
            "shard spec from {src}: field 'containers' should be an object (shard containers)",
            id="null-record",
        ),
    ],
)
def test_a_record_that_breaks_its_contract_is_refused_naming_field_and_source(make, change, message):
    with pytest.raises(c.ContractError) as caught:
        type(make()).from_dict(_broken(make, change), source=SOURCE)
    assert message.format(src=SOURCE) in str(caught.value)


def test_optional_fields_take_null():
    body = _broken(manifest, lambda b: b.update(subset=None))
    assert c.Manifest.from_dict(body, source=SOURCE).subset is None
    body = _broken(summary, lambda b: b.update(max_quarantine_share=1))  # a whole-number share, as a param gives it
    assert c.HourSummary.from_dict(body, source=SOURCE).max_quarantine_share == 1.0


def test_a_blob_that_is_not_json_or_not_an_object_is_refused():
    with pytest.raises(c.ContractError, match=f"shard result from {SOURCE} is not JSON"):
        c.ShardResult.from_json(b'{"shard": 1', source=SOURCE)
    with pytest.raises(c.ContractError, match=f"shard result from {SOURCE}: expected an object, got list"):
        c.ShardResult.from_json(b"[]", source=SOURCE)


def test_validation_report_hour_lookup_names_the_missing_hour():
    whole = report()
    assert whole.only(START).hours == whole.hours
    with pytest.raises(c.ContractError, match="has no hour 2026-11-24T05:00:00"):
        whole.hour(START + 5 * H)


def test_table_schemas_agree_with_each_other():
    assert list(WINDOW_DTYPES) == c.WINDOW_SCHEMA.names == c.WINDOW_COLUMNS
    assert set(c.WINDOW_KEY) | set(c.FEATURES) == set(c.WINDOW_COLUMNS)
    assert set(c.WINDOW_COLUMNS) <= set(c.QUARANTINE_SCHEMA.names)
    assert {c.SOURCE_COLUMN, c.REASON_COLUMN, "run_id"} <= set(c.QUARANTINE_SCHEMA.names)
    assert set(c.WINDOW_COLUMNS) <= set(c.PREDICTION_SCHEMA.names)
    assert not set(c.ROW_REASONS) & set(c.MODEL_REASONS) and c.CORRUPT_FILE not in {**c.ROW_REASONS, **c.MODEL_REASONS}


def test_times_keep_their_instant_through_json():
    moment = datetime(2026, 11, 24, 3, 4, 5, 123456, tzinfo=timezone.utc)
    back = c.Interval.from_dict(c.Interval(moment, moment + H).to_dict(), source=SOURCE)
    assert back.start == moment and back.end - back.start == H


def test_a_field_with_a_default_may_be_absent_and_no_other():
    import dataclasses

    from sensor_scoring.records import Record

    @dataclasses.dataclass(frozen=True)
    class Versioned(Record):
        KIND = "versioned"
        SCHEMA_VERSION = 1
        name: str
        added_later: tuple[str, ...] = ()

    assert Versioned.from_dict({"schema_version": 1, "name": "a"}, source=SOURCE) == Versioned("a")
    with pytest.raises(c.ContractError, match="field 'name' is missing"):
        Versioned.from_dict({"schema_version": 1, "added_later": []}, source=SOURCE)
