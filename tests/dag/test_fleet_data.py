"""The fleet and sensor data against partitions written by real runs (dag.test on Azurite): the pages' counts equal
the partitions', the Airflow API server (its real app, with the plugin mounted) refuses them without a login, and
the report command writes a self-contained page of the same charts."""

from __future__ import annotations

import re
from datetime import timedelta

import pandas as pd
import pytest

from sensor_scoring import fleet, settings as config
from sensor_scoring.cli import main as cli
from tests.dag.test_model_health import DRIFTING, FIRST, H, drifted  # noqa: F401 (the fixture)
from tests.support.partitions import read_partition

pytestmark = [pytest.mark.azurite, pytest.mark.airflow]
END = FIRST + 3 * H


@pytest.fixture
def scored(sensor_dag, blob, containers, drifted, monkeypatch):  # noqa: F811
    """Three hours scored by the DAG, one sensor drifting; returns the committed predictions and quarantine."""
    monkeypatch.setenv(config.DRIFT_HOURS_ENV, "2")
    run = sensor_dag.test(logical_date=END, run_conf={"window_start": FIRST.isoformat(), "window_end": END.isoformat()})
    assert str(run.state) == "success"
    hours = [FIRST + n * H for n in range(3)]
    predictions = pd.concat([read_partition(blob, containers.predictions, h)[0] for h in hours], ignore_index=True)
    quarantine = pd.concat([read_partition(blob, containers.quarantine, h)[0] for h in hours], ignore_index=True)
    return run, predictions, quarantine


def expected_heatmap(predictions: pd.DataFrame) -> dict[tuple[str, str], int]:
    hour = predictions["window_end"].dt.floor("h")
    counts = predictions.groupby([hour, "device_id"])["is_anomaly"].sum()
    return {(pd.Timestamp(h).isoformat(), d): int(n) for (h, d), n in counts.items()}


def test_fleet_and_sensor_data_equal_the_partitions(blob, containers, scored):
    run, predictions, quarantine = scored
    view = fleet.fleet_view(blob, containers, FIRST, END)
    assert not view.missing_hours and set(view.runs.values()) == {run.run_id}
    got = {(h.isoformat(), d): int(view.heatmap.at[h, d]) for h in view.heatmap.index for d in view.heatmap.columns}
    assert got == expected_heatmap(predictions)
    assert view.totals["anomalies"] == predictions["is_anomaly"].sum() and view.totals["windows"] == len(predictions)
    assert view.totals["quarantined"] == len(quarantine)
    assert int(view.quarantine_reasons.to_numpy().sum()) == len(quarantine)
    top = view.drifting.iloc[0]
    assert (top["device_id"], top["tag"]) == DRIFTING and top["drifting_hours"] == 3 and top["max_drift_hours"] == 3

    sensor = fleet.sensor_view(blob, containers, *DRIFTING, FIRST, END)
    mine = predictions[(predictions["device_id"] == DRIFTING[0]) & (predictions["tag"] == DRIFTING[1])]
    assert len(sensor.windows) == len(mine) == 180 and sensor.windows["is_anomaly"].sum() == mine["is_anomaly"].sum()
    assert list(sensor.health["drift_hours"]) == [1, 2, 3]
    [(version, training)] = sensor.models.items()
    assert version == "v-health" and training["train_rows"] > 0 and str(training["train_end"]) < FIRST.isoformat()
    with pytest.raises(fleet.RangeError, match="at most"):
        fleet.fleet_view(blob, containers, FIRST, FIRST + timedelta(days=8))


def test_the_api_server_serves_them_behind_its_login(blob, containers, scored):
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    _, predictions, _ = scored
    client = TestClient(create_app())
    window = {"start": FIRST.isoformat(), "end": END.isoformat()}
    sensor = {**window, "device_id": DRIFTING[0], "tag": DRIFTING[1]}
    for path, params in (("/scoring/api/fleet", window), ("/scoring/api/sensor", sensor)):
        assert client.get(path, params=params).status_code == 401  # no login, no data
    refused = client.get("/scoring/fleet", params=window, follow_redirects=False)
    assert refused.status_code == 303 and "/auth/login" in refused.headers["location"]
    assert client.get("/scoring/api/fleet", headers={"Authorization": "Bearer forged"}).status_code in (401, 403)

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    auth = {"Authorization": f"Bearer {token}"}
    data = client.get("/scoring/api/fleet", params=window, headers=auth).json()
    got = {(h, d): n for d, cells in data["heatmap"].items() for h, n in cells.items()}
    assert got == expected_heatmap(predictions)
    assert data["drifting"][0]["device_id"] == DRIFTING[0] and data["totals"]["windows"] == len(predictions)
    detail = client.get("/scoring/api/sensor", params=sensor, headers=auth).json()
    assert len(detail["windows"]) == 180 and list(detail["models"]) == ["v-health"]

    html = client.get("/scoring/fleet", params=window, headers=auth).text
    cells = re.findall(r"data-hour='([^']+)' data-device='([^']+)' data-anomalies='(\d+)'", html)
    assert {(h, d): int(n) for h, d, n in cells} == expected_heatmap(predictions)
    page = client.get("/scoring/sensor", params=sensor, headers=auth).text
    anomalies = int(detail_anomalies := sum(w["is_anomaly"] for w in detail["windows"]))
    assert page.count("class='anomaly'") == anomalies == detail_anomalies and "class='threshold'" in page


def test_report_command_writes_a_self_contained_page(blob, containers, scored, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli(["report", "--start", FIRST.isoformat(), "--end", END.isoformat(), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("<!doctype html>") and "<svg class='heatmap'" in text and "<svg class='scores'" in text
    assert not re.search(r"<script|<link|src=|(?<!xmlns=')https?://", text)  # nothing fetched: it opens anywhere
    assert f"Sensor {DRIFTING[0]} / {DRIFTING[1]}" in text
    assert '"hours": 3' in capsys.readouterr().out
