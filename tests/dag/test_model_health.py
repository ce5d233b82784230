"""Model health through the real DAG (dag.test) on Azurite: one sensor's windows shifted after training drift, the
health partitions' totals equal the committed partitions', and the model_drift alert arrives by SMTP and webhook."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from sensor_scoring import layout
from sensor_scoring.models import stats
from sensor_scoring.steps import health
from sensor_scoring.windows import land_windows
from tests.support.helpers import START, fleet_windows
from tests.support.partitions import read_partition
from tests.support.training import train_and_register

pytestmark = [pytest.mark.azurite, pytest.mark.airflow]
H = timedelta(hours=1)
FIRST = START + 24 * H  # a day trains (the signals have a daily cycle), the next three hours are scored
DRIFTING = ("dev-0001", "temperature")


@pytest.fixture
def drifted(blob, containers):
    """28 hours of 3 devices x 2 sensors; after the training day, one sensor reads 30 degrees higher."""
    windows = fleet_windows(devices=3, tags=2, hours=28, seed=4)
    late = (windows["window_end"] > pd.Timestamp(FIRST)) & (windows["device_id"] == DRIFTING[0])
    late &= windows["tag"] == DRIFTING[1]
    for column in ("value_avg", "value_min", "value_max"):
        windows.loc[late, column] += 30.0
    land_windows(blob, containers.windows, windows)
    manifest, _ = train_and_register(blob, containers, START, FIRST, version="v-health", promote=True)
    assert stats.read(blob, containers.models, "v-health") is not None
    return manifest


def test_health_of_three_hours_and_the_drift_alert(
    sensor_dag, blob, containers, drifted, alert_connections, monkeypatch
):
    smtp_sink, http_sink = alert_connections
    monkeypatch.setenv("SCORING_DRIFT_HOURS", "2")
    conf = {"window_start": FIRST.isoformat(), "window_end": (FIRST + 3 * H).isoformat()}
    run = sensor_dag.test(logical_date=FIRST + 3 * H, run_conf=conf)
    assert str(run.state) == "success"

    alerted_hours = []
    for number in range(3):
        hour = FIRST + number * H
        rows, manifest = read_partition(blob, containers.health, hour)
        predictions, _ = read_partition(blob, containers.predictions, hour)
        quarantine, _ = read_partition(blob, containers.quarantine, hour)
        # totals equal the committed partitions'
        assert rows["windows"].sum() == len(predictions) == manifest["windows"]
        assert rows["anomalies"].sum() == predictions["is_anomaly"].sum() == manifest["anomalies"]
        assert rows["quarantined"].sum() + manifest["unattributed_quarantined"] == len(quarantine)
        assert manifest["sensors"] == len(rows) == 6 and manifest["no_statistics"] == 0
        assert (rows["status"] == health.STATUS_OK).all() and rows["psi"].notna().all()
        drifting = rows.set_index(["device_id", "tag"]).loc[[DRIFTING]].iloc[0]
        assert drifting["drifting"] and drifting["drift_hours"] == number + 1
        assert drifting["psi"] > 1 and drifting["anomaly_rate"] > 0.9
        if manifest["alerting"]:
            alerted_hours.append(hour.isoformat())
            assert "/".join(DRIFTING) in manifest["alerting_sensors"]
        assert number > 0 or manifest["alerting"] == 0  # the first drifting hour is not alerted yet

    posts = [p["json"] for p in http_sink.received if p["json"]["event"] == "model_drift"]
    assert [p["hour"] for p in posts] == alerted_hours and len(posts) >= 2  # one message per hour
    assert all("/".join(DRIFTING) in p["sensors"] and "consecutive hours" in p["error"] for p in posts)
    subjects = [m["Subject"] for _, m in smtp_sink.messages if "model_drift" in m["Subject"]]
    assert len(subjects) == len(posts)


def test_a_version_without_statistics_is_reported_not_failed(blob, containers):
    """Health of an hour scored by a version registered without statistics: every sensor says so, no PSI."""
    predictions = pd.DataFrame(
        {
            "device_id": ["d1"] * 20,
            "tag": ["t"] * 20,
            "score": [0.5] * 19 + [-0.1],
            "is_anomaly": [False] * 19 + [True],
            "model_version": ["v-old"] * 20,
        }
    )
    quarantine = pd.DataFrame({"device_id": ["d1", "d2"], "tag": ["t", "t"]})
    rows = health.sensor_health(predictions, quarantine, {"v-old": None}, None, health.Thresholds(0.25, 0.2, 3))
    by = rows.set_index("device_id")
    assert by.loc["d1", "status"] == health.STATUS_NO_STATS and pd.isna(by.loc["d1", "psi"])
    assert by.loc["d1", "anomaly_rate"] == 0.05 and by.loc["d1", "quarantine_share"] == 1 / 21
    assert by.loc["d2", "status"] == health.STATUS_NOT_SCORED and by.loc["d2", "windows"] == 0
    assert not rows["drifting"].any()
    assert layout.Partition(START).data == "date=2026-11-24/hour=00/part-00000.parquet"


def test_sensors_that_lost_their_model_are_alerted(sensor_dag, blob, containers, drifted, alert_connections):
    """A version without dev-0000's models promoted over the one that had them: the hours it scores commit (every
    window accounted for, dev-0000's quarantined no_model) and model_health sends a models_lost alert per hour."""
    from sensor_scoring.models import fitting, promotion, registry

    _, http_sink = alert_connections
    index = registry.read_index(blob, containers.models, "v-health")
    loaded, _ = registry.load_models(blob, containers.models, "v-health", index)
    kept = [fitting.TrainedModel(d, t, None, loaded[(d, t)], 60, "a", "b", 0.02) for d, t in loaded if d != "dev-0000"]
    registry.register(
        blob,
        containers.models,
        sorted(kept, key=lambda m: (m.device_id, m.tag)),
        version="v-less",
        params={},
        promote=False,
    )
    promotion.move_alias(blob, containers.models, "v-less", action="promote", reason="test", by="test")
    conf = {"window_start": FIRST.isoformat(), "window_end": (FIRST + 2 * H).isoformat()}
    run = sensor_dag.test(logical_date=FIRST + 2 * H, run_conf=conf)
    assert str(run.state) == "success"
    posts = [p["json"] for p in http_sink.received if p["json"]["event"] == "models_lost"]
    assert [p["hour"] for p in posts] == [FIRST.isoformat(), (FIRST + H).isoformat()]
    assert all(p["sensors"] == ["dev-0000/pressure", "dev-0000/temperature"] for p in posts)
    assert "quarantined no_model" in posts[0]["error"] and posts[0]["models_lost"] == 2
    _, manifest = read_partition(blob, containers.health, FIRST)
    assert manifest["models_lost"] == 2
