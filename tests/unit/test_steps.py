"""The hour's steps (sensor_scoring.steps) on a local directory: intervals, landing detection, planning, reading
by groups of files, shard scoring, commit."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pendulum
import pytest

from sensor_scoring import layout, settings as config, storage as st
from sensor_scoring.contracts import PREDICTION_SCHEMA, AccountingError, ShardSpec
from sensor_scoring.models import fitting, registry
from sensor_scoring.runs.scope import Scope, resolve_interval, run_key
from sensor_scoring.steps.commit import commit
from sensor_scoring.steps.landed import windows_landed
from sensor_scoring.steps.plan import plan_shards
from sensor_scoring.steps.score import score_shard
from sensor_scoring.storage import LocalStorage
from sensor_scoring.windows import LandingPlan, land_windows
from tests.support.helpers import START, fleet_windows, read_and_plan

UTC = timezone.utc
H = timedelta(hours=1)


def test_interval_from_params_data_interval_or_last_complete_hour():
    di = (pendulum.datetime(2026, 11, 25, 15), pendulum.datetime(2026, 11, 25, 16))
    assert resolve_interval(None, None, *di) == (
        datetime(2026, 11, 25, 15, tzinfo=UTC),
        datetime(2026, 11, 25, 16, tzinfo=UTC),
    )
    assert resolve_interval("2026-11-25T10:00:00Z", "2026-11-25T13:00:00+00:00", *di) == (
        datetime(2026, 11, 25, 10, tzinfo=UTC),
        datetime(2026, 11, 25, 13, tzinfo=UTC),
    )
    # Airflow 3 manual run: zero-length interval, no logical date -> the hour before the request
    zero = pendulum.datetime(2026, 11, 25, 16, 20)
    assert resolve_interval(None, None, zero, zero, zero) == (
        datetime(2026, 11, 25, 15, tzinfo=UTC),
        datetime(2026, 11, 25, 16, tzinfo=UTC),
    )
    assert resolve_interval(None, None, None, None, zero)[1] == datetime(2026, 11, 25, 16, tzinfo=UTC)


@pytest.mark.parametrize(
    "start,end,message",
    [
        ("2026-11-25T10:30:00Z", "2026-11-25T11:00:00Z", "not on a whole hour"),
        ("2026-11-25T11:00:00Z", "2026-11-25T10:00:00Z", "not after"),
        ("2026-11-25T11:00:00Z", None, "both"),
    ],
)
def test_interval_refuses_partial_hours_and_reversed_ranges(start, end, message):
    with pytest.raises(ValueError, match=message):
        resolve_interval(start, end, None, None)


def test_run_key_is_blob_safe_and_distinct():
    a, b = run_key("scheduled__2026-11-25T16:00:00+00:00"), run_key("scheduled__2026-11-25T16:00:00-00:00")
    assert a != b and ":" not in a and "+" not in a


def _hour(storage, run_id="run-1", start=START + 3 * H, hours=1) -> Scope:
    return Scope(storage, config.Containers(), run_id, start, start + hours * H)


def test_windows_landed_rules(tmp_path):
    storage = LocalStorage(tmp_path)
    hour = _hour(storage)
    assert windows_landed(hour, late_folders=1, settle_minutes=5)[0] is False
    windows = fleet_windows(devices=1, tags=1, hours=1, start=hour.start)
    land_windows(storage, "windows", windows, LandingPlan(late_share=0.0))
    now = datetime.now(UTC)
    assert windows_landed(hour, late_folders=1, settle_minutes=5, now=now)[0] is False  # fresh, stream not moved on
    assert windows_landed(hour, late_folders=1, settle_minutes=5, now=now + timedelta(minutes=6))[0] is True
    land_windows(
        storage, "windows", fleet_windows(devices=1, tags=1, hours=1, start=hour.end), LandingPlan(late_share=0.0)
    )
    done, why = windows_landed(hour, late_folders=1, settle_minutes=5, now=now)
    assert done and "moved on" in why


@pytest.fixture
def staged(tmp_path):
    """Four hours of two devices x two tags landed, models for all but one sensor; hour 3 is the run's."""
    storage = LocalStorage(tmp_path)
    windows = fleet_windows(devices=2, tags=2, hours=4)
    land_windows(storage, "windows", windows)
    train = windows[
        (windows["window_end"] < START + 3 * H)
        & ~((windows["device_id"] == "dev-0001") & (windows["tag"] == "pressure"))
    ]
    trained = fitting.train_models(train)
    registry.register(storage, "models", trained, version="v1", params={}, promote=True)
    return storage, _hour(storage), trained


def _quarantine(storage, result) -> pd.DataFrame:
    """The rows a shard set aside, as its quarantine.parquet holds them."""
    container, prefix = st.parse_uri(result.output_prefix)
    return st.read_parquet(storage, container, layout.Shard(prefix).quarantine)


def test_plan_shards_groups_sensors_and_quarantines_those_without_model(staged):
    """plan_shards groups the sensors with a model; the sensor without one is routed by the read tasks to a shard,
    which quarantines its windows as ``no_model`` (it was plan_shards' own quarantine before the hour was read by
    groups of files)."""
    storage, hour, _ = staged
    reads, shards = read_and_plan(hour, sensors_per_shard=2)
    assert sum(sum(r.landed_by_hour.values()) for r in reads) == 240
    assert [s.sensors for s in shards] == [2, 1]
    assert shards[0].label == "shard 0: dev-0000/pressure .. dev-0000/temperature (2 sensors)"
    assert shards[1].label == "dev-0001/temperature"
    results = [score_shard(storage, s.spec_uri) for s in shards]
    assert sum(r.validation.valid for r in results) == 240  # every landed window passed the suite
    orphans = pd.concat([_quarantine(storage, r) for r in results], ignore_index=True)
    assert set(orphans["reason"]) == {"no_model"} and len(orphans) == 60
    assert set(zip(orphans["device_id"], orphans["tag"])) == {("dev-0001", "pressure")}
    one_each = plan_shards(hour, model_version="v1", sensors_per_shard=1)
    assert len(one_each.shards) == 3
    with pytest.raises(ValueError):
        plan_shards(hour, model_version="v1", sensors_per_shard=0)


def test_score_and_commit_close_the_accounting_and_replace_the_hour(staged):
    storage, hour, trained = staged
    reads, shards = read_and_plan(hour, sensors_per_shard=2)
    results = [score_shard(storage, s.spec_uri) for s in shards]
    assert sum(r.scored for r in results) == 180
    [manifest] = commit(hour, reads, results)
    assert manifest.counts.to_dict() == {
        "landed": 240,
        "scored": 180,
        "quarantined": 60,
        "duplicates": 0,
        "anomalies": manifest.counts.anomalies,
    }
    part = pd.read_parquet(tmp_file(storage, "predictions", "date=2026-11-24/hour=03/part-00000.parquet"))
    assert len(part) == 180 and not part.duplicated(["device_id", "tag", "window_end"]).any()
    assert list(part.columns) == PREDICTION_SCHEMA.names
    written = storage.read_bytes("predictions", layout.Partition(hour.start).manifest)
    assert json.loads(written) == manifest.to_dict() and json.loads(written)["schema_version"] == 1
    assert (part["window_end"] - part["window_start"] == pd.Timedelta(minutes=1)).all()
    assert not storage.list("staging", f"runs/{hour.run_key}/")  # scratch space is cleaned after commit


def tmp_file(storage: LocalStorage, container: str, path: str):
    return storage.root / container / path


def test_commit_refuses_when_a_shard_is_missing(staged):
    storage, hour, _ = staged
    reads, shards = read_and_plan(hour, sensors_per_shard=2)
    results = [score_shard(storage, s.spec_uri) for s in shards]
    with pytest.raises(AccountingError, match="landed 240"):
        commit(hour, reads, results[:1])
    assert not storage.exists("predictions", "date=2026-11-24/hour=03/part-00000.parquet")


def test_tampered_model_quarantines_only_its_sensor(staged):
    """One shard holds every sensor: the tampered model's sensor is quarantined as model_hash_mismatch, the
    sensor without a model as no_model, and the other two are scored."""
    storage, hour, _ = staged
    _, shards = read_and_plan(hour, sensors_per_shard=10)
    spec_path = shards[0].spec_uri.split("/", 3)[3]
    spec = json.loads(storage.read_bytes("staging", spec_path))
    spec["models"][0]["sha256"] = "0" * 64
    storage.write_bytes("staging", spec_path, json.dumps(spec).encode())
    result = score_shard(storage, shards[0].spec_uri)
    assert result.quarantined == 120 and result.scored == 120
    assert list(result.refused_models.values()) == ["model_hash_mismatch"]
    refused = _quarantine(storage, result).groupby(["device_id", "tag", "reason"]).size().to_dict()
    assert refused == {
        (spec["models"][0]["device_id"], spec["models"][0]["tag"], "model_hash_mismatch"): 60,
        ("dev-0001", "pressure", "no_model"): 60,
    }


def test_a_spec_without_its_schema_version_is_refused_naming_the_blob(staged):
    storage, hour, _ = staged
    [shard] = plan_shards(hour, model_version="production", sensors_per_shard=10).shards
    spec_path = shard.spec_uri.split("/", 3)[3]
    spec = json.loads(storage.read_bytes("staging", spec_path))
    assert ShardSpec.from_dict(spec, source=shard.spec_uri).shard == 0
    del spec["schema_version"]
    storage.write_bytes("staging", spec_path, json.dumps(spec).encode())
    with pytest.raises(ValueError, match=f"shard spec from {shard.spec_uri}: field 'schema_version' is missing"):
        score_shard(storage, shard.spec_uri)
