"""Whole hours through the real DAG (dag.test) on a real Azurite, checked against scikit-learn itself."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from dev.azurite import KEY
from sensor_scoring import features
from sensor_scoring.features import feature_matrix
from sensor_scoring.models import fitting, registry
from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour, simulate_to_storage
from sensor_scoring.windows import aggregate_readings, parse_window_file, to_asa_json_lines
from tests.support.helpers import START, fleet_windows
from tests.support.partitions import read_partition, run_records
from tests.support.training import train_and_register

pytestmark = [pytest.mark.azurite, pytest.mark.airflow]
H = timedelta(hours=1)
SCORED_HOUR = START + 5 * H


@pytest.fixture
def landed(blob, containers):
    """Seven simulated hours of 3 devices x 2 sensors, plus one file of trouble in the scored hour."""
    simulate_to_storage(
        blob,
        SimulationConfig(devices=3, tags=2, seed=3),
        START,
        START + 7 * H,
        windows_container=containers.windows,
        labels_container=containers.labels,
    )
    manifest, trained = train_and_register(
        blob, containers, START, SCORED_HOUR, version="v-e2e", promote=True, features=features.CONTEXT_V1
    )
    assert manifest["features"] == "context-v1"  # the set that looks back into the previous hour
    existing = blob.list(containers.windows, f"{SCORED_HOUR:%Y/%m/%d/%H}/")
    found = pd.concat([parse_window_file(b.name, blob.read_bytes(containers.windows, b.name)) for b in existing])
    one = found[found["window_end"] == pd.Timestamp(SCORED_HOUR + timedelta(minutes=10))].head(1)
    trouble = pd.concat(
        [
            one,  # an exact duplicate of a landed window
            one.assign(device_id="dev-invalid", value_std=-1.0),  # invalid (a new key, on the minute)
            one.assign(device_id="dev-unknown"),  # a sensor nobody trained
        ]
    )
    blob.write_bytes(containers.windows, f"{SCORED_HOUR:%Y/%m/%d/%H}/0_extra_1.json", to_asa_json_lines(trouble))
    return manifest, {(m.device_id, m.tag): m.pipeline for m in trained}


def test_hour_scored_by_the_dag_equals_scikit_learn(sensor_dag, blob, containers, landed):
    _, pipelines = landed
    run = sensor_dag.test(logical_date=SCORED_HOUR + H, run_conf={"sensors_per_shard": 2})
    assert str(run.state) == "success"
    assert run.data_interval_end - run.data_interval_start == H

    predictions, manifest = read_partition(blob, containers.predictions, SCORED_HOUR)
    assert len(predictions) == 6 * 60
    assert not predictions.duplicated(["device_id", "tag", "window_end"]).any()
    assert predictions["window_end"].min() == pd.Timestamp(SCORED_HOUR)
    assert predictions["window_end"].max() == pd.Timestamp(SCORED_HOUR + timedelta(minutes=59))
    assert set(predictions["model_version"]) == {"v-e2e"} and set(predictions["run_id"]) == {run.run_id}
    # the model input, derived from the simulated windows: the scored hour with the hour before as its lookback
    cfg = SimulationConfig(devices=3, tags=2, seed=3)
    hour, before = (aggregate_readings(simulate_hour(cfg, h)[0]) for h in (SCORED_HOUR, SCORED_HOUR - H))
    window_key = ["device_id", "tag", "window_end"]
    derived = features.add_features(hour, context=before)[[*window_key, *features.DERIVED]]
    with_input = predictions.merge(derived, on=window_key, how="left", validate="one_to_one")
    for (device_id, tag), rows in with_input.groupby(["device_id", "tag"]):
        pipeline = pipelines[(device_id, tag)]
        matrix = feature_matrix(rows, features.CONTEXT_V1)
        np.testing.assert_allclose(rows["score"], pipeline.decision_function(matrix), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(rows["is_anomaly"], pipeline.predict(matrix) == -1)

    counts = manifest["counts"]
    assert counts == {
        "landed": 363,
        "scored": 360,
        "quarantined": 2,
        "duplicates": 1,
        "anomalies": int(predictions["is_anomaly"].sum()),
    }
    assert counts["landed"] == counts["scored"] + counts["quarantined"] + counts["duplicates"]
    assert manifest["run_id"] == run.run_id and manifest["model_version"] == "v-e2e"
    quarantine, _ = read_partition(blob, containers.quarantine, SCORED_HOUR)
    assert sorted(quarantine["reason"]) == ["negative_std", "no_model"]
    assert quarantine["source_file"].str.endswith("0_extra_1.json").all()


def test_rerunning_an_hour_replaces_it_with_one_row_per_window(sensor_dag, blob, containers, landed):
    first = sensor_dag.test(logical_date=SCORED_HOUR + H, run_conf={"sensors_per_shard": 4})
    before, _ = read_partition(blob, containers.predictions, SCORED_HOUR)
    second = sensor_dag.test(logical_date=SCORED_HOUR + H, run_conf={"sensors_per_shard": 1})
    after, manifest = read_partition(blob, containers.predictions, SCORED_HOUR)
    assert str(first.state) == str(second.state) == "success"
    assert len(after) == len(before) == 360
    assert not after.duplicated(["device_id", "tag", "window_end"]).any()
    assert manifest["run_id"] == second.run_id and set(after["run_id"]) == {second.run_id}
    key = ["device_id", "tag", "window_end"]
    pd.testing.assert_series_equal(
        before.sort_values(key)["score"].reset_index(drop=True), after.sort_values(key)["score"].reset_index(drop=True)
    )
    assert not blob.list(containers.staging)  # no scratch left behind by either run


def test_hour_with_no_modelled_sensor_still_commits_its_quarantine(sensor_dag, blob, containers, landed):
    """No shard to map: the mapped task is skipped, yet commit runs and nothing landed is lost."""
    [other] = fitting.train_models(fleet_windows(devices=1, tags=1, hours=1))
    other.device_id = "dev-elsewhere"
    registry.register(blob, containers.models, [other], version="v-other", params={}, promote=False)
    run = sensor_dag.test(logical_date=SCORED_HOUR + H, run_conf={"model_version": "v-other"})
    assert str(run.state) == "success"
    predictions, manifest = read_partition(blob, containers.predictions, SCORED_HOUR)
    quarantine, _ = read_partition(blob, containers.quarantine, SCORED_HOUR)
    assert predictions.empty
    assert manifest["counts"] == {"landed": 363, "scored": 0, "quarantined": 362, "duplicates": 1, "anomalies": 0}
    assert manifest["quarantine_reasons"] == {"no_model": 361, "negative_std": 1}
    assert manifest["model_version"] == "v-other" and len(quarantine) == 362


def test_airflow_connection_overrides_the_environment(
    sensor_dag, blob, containers, landed, azurite, monkeypatch, tmp_path, caplog, capfd
):
    """Inside Airflow the wasb connection wins: SCORING_STORAGE points at an empty folder here."""
    monkeypatch.setenv("SCORING_STORAGE", str(tmp_path / "empty"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_SCORING_STORAGE",
        json.dumps({"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}}),
    )
    run = sensor_dag.test(logical_date=SCORED_HOUR + H, run_conf={"sensors_per_shard": 3})
    assert str(run.state) == "success"
    predictions, manifest = read_partition(blob, containers.predictions, SCORED_HOUR)
    assert len(predictions) == 360 and manifest["run_id"] == run.run_id
    assert not (tmp_path / "empty").exists()
    # the key reached the shards, yet no XCom, rendered field or manifest holds it
    stored = run_records(run.run_id) + [
        blob.read_bytes(c, b.name).decode()
        for c in (containers.predictions, containers.quarantine)
        for b in blob.list(c)
        if b.name.endswith(".json")
    ]
    out = capfd.readouterr()
    logs = [
        caplog.text,
        out.out,
        out.err,
    ]  # the task logs of dag.test (shard output included), see test_faults for log files
    assert "Shard done in" in caplog.text
    assert len(stored) > 5 and not [text for text in stored + logs if KEY in text or "AccountKey" in text]
