"""The simulator's faults and determinism, the raw-readings import, and the CLI as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from sensor_scoring.tools.ingest import read_raw_readings
from sensor_scoring.tools.simulate import ANOMALY_KINDS, SimulationConfig, simulate_hour
from sensor_scoring.windows import aggregate_readings
from tests.conftest import REPO
from tests.support.helpers import START
from tests.support.training import GATE_TAKES_ANY


def test_simulated_hours_are_deterministic_whole_and_labelled():
    cfg = SimulationConfig(devices=20, tags=2, seed=5, anomaly_rate=0.5)
    readings, labels = simulate_hour(cfg, START)
    again, _ = simulate_hour(cfg, START)
    pd.testing.assert_frame_equal(readings, again)
    windows = aggregate_readings(readings)
    assert len(windows) == 40 * 60  # every sensor, every minute: windows are whole within one hour
    assert windows["window_end"].min() == pd.Timestamp(START)
    assert set(labels["anomaly"]) == set(ANOMALY_KINDS)
    merged = windows.merge(labels, on=["device_id", "tag", "window_end"], how="left")
    assert (merged.loc[merged["anomaly"] == "stuck", "value_std"] == 0).all()
    assert (merged.loc[merged["anomaly"] == "dropout", "reading_count"] == 1).all()
    normal = merged[merged["anomaly"].isna()]
    assert (normal["reading_count"] == 6).all() and (normal["value_std"] > 0).all()


def test_invalid_fleet_is_refused():
    with pytest.raises(ValueError):
        SimulationConfig(devices=1, tags=9).sensors()


def test_raw_readings_in_the_reference_layout(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_text(
        "TS,Device,Tag,Value\n2018-08-28 23:00:05.000,Machine1,Pressure,1.5\n"
        "2018-08-28 23:00:35.000,Machine1,Pressure,2.5\n2018-08-28 23:01:05.000,Machine1,Pressure,\n"
    )
    windows = aggregate_readings(read_raw_readings(path).readings)
    assert len(windows) == 1
    assert windows.iloc[0]["window_end"] == pd.Timestamp("2018-08-28T23:01:00Z")
    assert windows.iloc[0]["value_avg"] == 2.0 and windows.iloc[0]["reading_count"] == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("time,device,value\n1,2,3\n")
    with pytest.raises(ValueError, match="missing TS, Device, Tag, Value"):
        read_raw_readings(bad)


def run_cli(*args: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "sensor_scoring", *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.azurite
def test_cli_simulate_ingest_train_and_score_a_shard(blob, containers, azurite, tmp_path):
    import os

    from sensor_scoring import settings as config
    from sensor_scoring.runs.scope import Scope
    from sensor_scoring.steps.plan import plan_shards

    env = dict(os.environ)
    start = START.isoformat()
    sim = run_cli(
        "simulate",
        "--devices",
        "2",
        "--tags",
        "2",
        "--start",
        start,
        "--end",
        (START + timedelta(hours=3)).isoformat(),
        "--seed",
        "1",
        env=env,
    )
    assert sim["hours"] == 3 and sim["windows"] == 3 * 4 * 60
    raw = tmp_path / "raw.csv"
    raw.write_text(
        "TS,Device,Tag,Value\n"
        + "\n".join(
            f"{START + timedelta(hours=3, seconds=10 * i):%Y-%m-%d %H:%M:%S.000},Machine1,Pressure,{np.sin(i):.4f}"
            for i in range(360)
        )
        + "\n"
    )
    ingested = run_cli("ingest-readings", str(raw), env=env)
    assert ingested["windows"] == 61 and ingested["readings"] == 360  # the first reading opens 03:00:10 -> 03:01
    trained = run_cli(
        "train",
        "--start",
        start,
        "--end",
        (START + timedelta(hours=3)).isoformat(),
        "--version",
        "v-cli",
        "--promote",
        "--holdout-hours",
        "1",  # the training DAG's steps, the last hour held back and judged; the gate takes any share and rate
        *GATE_TAKES_ANY,
        env=env,
    )
    assert {k: trained[k] for k in ("version", "models", "promoted", "features")} == {
        "version": "v-cli",
        "models": 4,
        "promoted": True,
        "features": "window-v1",  # the default feature set of new versions
    }
    assert trained["evaluation"]["coverage"]["uncovered"] == 0 and trained["reason"].startswith("policy held")
    hour = Scope(blob, config.Containers.from_env(), "cli-run", START + timedelta(hours=2), START + timedelta(hours=3))
    plan = plan_shards(hour, model_version="production", sensors_per_shard=10)
    [read_group], [shard] = plan.reads, plan.shards
    read = run_cli("read-windows", "--spec", read_group.spec_uri, env=env)  # the read task's command
    assert read["landed_by_hour"] == {hour.start.isoformat(): 240} and read["schema_version"] == 1
    result = run_cli("score-shard", "--spec", shard.spec_uri, env=env)
    assert result["scored"] == 240 and result["quarantined"] == 0 and result["schema_version"] == 1


def test_cli_reports_a_clear_error_for_a_missing_spec(tmp_path):
    import os

    env = dict(os.environ, SCORING_STORAGE=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "sensor_scoring", "score-shard", "--spec", "az://staging/none/spec.json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode != 0 and "spec.json" in done.stderr
