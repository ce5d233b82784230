"""The DAG through Airflow's own command line, the way an operator debugs it: ``airflow dags test``, ``airflow tasks
test``, ``airflow dags trigger`` and ``airflow backfill create`` run as subprocesses of the real ``airflow`` CLI.

One fresh AIRFLOW_HOME (SQLite, one ``airflow db migrate``) serves the module; each test has its own containers
on the session's Azurite, which the subprocesses inherit through SCORING_STORAGE and SCORING_CONTAINER_*.
Each ``airflow`` start costs seconds, so the tests ask for few of them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sensor_scoring import settings as config
from sensor_scoring.tools.simulate import SimulationConfig, simulate_to_storage
from sensor_scoring.windows import parse_window_file
from tests.conftest import REPO
from tests.support.helpers import START
from tests.support.partitions import read_partition
from tests.support.training import GATE_TAKES_ANY, train_and_register

pytestmark = [pytest.mark.azurite, pytest.mark.airflow]
H = timedelta(hours=1)
AIRFLOW = Path(sys.executable).with_name("airflow")  # the console script of the venv running the tests


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh AIRFLOW_HOME, migrated once for the module (not the session's in-process one), the DAG stored."""
    home = tmp_path_factory.mktemp("airflow-cli-home")
    for command in (("db", "migrate"), ("dags", "reserialize")):  # `tasks test` reads the DAG from the database
        done = airflow(home, *command)
        assert done.returncode == 0, done.stderr[-3000:]
    return home


def airflow(home: Path, *args: str, timeout: float = 600, **settings: str) -> subprocess.CompletedProcess[str]:
    """``airflow <args>`` in a subprocess on ``home``, with the test's storage settings from the environment."""
    env = {key: value for key, value in os.environ.items() if key != config.START_DATE_ENV}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        # `dags reserialize` skips a DAG stored less than this many seconds ago (default 30): the write_dag call in
        # airflow/dag_processing/collection.py passes min_update_interval. A test that reserializes with another
        # setting right after an earlier test stored the DAG would otherwise keep the earlier parse.
        AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL="0",
    )
    env.update(settings)
    return subprocess.run([str(AIRFLOW), *args], env=env, capture_output=True, text=True, timeout=timeout)


def scoring_cli(*args: str) -> dict:
    """``python -m sensor_scoring <args>``, which answers in one line of JSON."""
    done = subprocess.run([sys.executable, "-m", "sensor_scoring", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def query(home: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(home / "airflow.db") as db:
        return db.execute(sql, params).fetchall()


def landed_windows(blob, containers: config.Containers, start: datetime, end: datetime) -> pd.DataFrame:
    """Every window that landed with ``window_end`` in ``[start, end)``, from whichever folder holds it."""
    frames = [
        parse_window_file(b.name, blob.read_bytes(containers.windows, b.name)) for b in blob.list(containers.windows)
    ]
    found = pd.concat(frames, ignore_index=True)
    return found[(found["window_end"] >= pd.Timestamp(start)) & (found["window_end"] < pd.Timestamp(end))]


def check_committed(blob, containers: config.Containers, hour: datetime, run_id: str, version: str) -> dict:
    """The hour's partition holds one scored row per landed window of the hour, and its manifest says so."""
    expected = landed_windows(blob, containers, hour, hour + H)
    predictions, manifest = read_partition(blob, containers.predictions, hour)
    counts = manifest["counts"]
    assert counts["landed"] == len(expected) > 0
    assert counts["scored"] == len(predictions) == len(expected.drop_duplicates(["device_id", "tag", "window_end"]))
    assert counts["quarantined"] == counts["duplicates"] == 0
    assert counts["anomalies"] == int(predictions["is_anomaly"].sum())
    assert not predictions.duplicated(["device_id", "tag", "window_end"]).any()
    assert manifest["run_id"] == run_id and set(predictions["run_id"]) == {run_id}
    assert manifest["model_version"] == version and manifest["hour"] == hour.isoformat()
    return counts


def test_dags_test_scores_the_hour_exits_0_and_keeps_the_deadline(blob, containers, airflow_home):
    """``airflow dags test <T>`` runs the hour that ended at T, succeeds with the deadline alert on, and exits 0."""
    simulate_to_storage(
        blob,
        SimulationConfig(devices=2, tags=2, seed=5),
        START,
        START + 5 * H,
        windows_container=containers.windows,
        labels_container=containers.labels,
    )
    train_and_register(blob, containers, START, START + 3 * H, version="v-cli", promote=True)
    logical = START + 4 * H

    done = airflow(airflow_home, "dags", "test", "sensor_scoring", logical.isoformat())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "state=success" in done.stdout + done.stderr

    [(run_id, state, interval_start, run_pk)] = query(
        airflow_home,
        "select run_id, state, data_interval_start, id from dag_run where dag_id = ? and logical_date = ?",
        "sensor_scoring",
        f"{logical:%Y-%m-%d %H:%M:%S}.000000",
    )
    assert state == "success" and interval_start.startswith(f"{logical - H:%Y-%m-%d %H:%M:%S}")
    # the deadline alert was live: Airflow recorded the run's deadline (logical date + 1 h + 90 min)
    [(deadline_time,)] = query(airflow_home, "select deadline_time from deadline where dagrun_id = ?", run_pk)
    assert deadline_time.startswith(f"{logical + timedelta(hours=2, minutes=30):%Y-%m-%d %H:%M:%S}")
    check_committed(blob, containers, logical - H, run_id, "v-cli")
    assert not blob.list(containers.predictions, f"date={logical:%Y-%m-%d}/hour={logical:%H}/")


def test_tasks_test_runs_one_task_alone(blob, containers, airflow_home):
    """``airflow tasks test ... plan_shards <T>`` plans the hour before T alone: it stages a read spec per group of
    the hour's files and a spec per shard, and reads, scores and commits nothing. Its read groups, read here as the
    mapped ``read_windows`` would read them, hold every window that landed for the hour."""
    from sensor_scoring import storage as st
    from sensor_scoring.contracts import ReadSpec, ShardPlan
    from sensor_scoring.steps.load import read_windows

    simulate_to_storage(
        blob,
        SimulationConfig(devices=2, tags=2, seed=6),
        START,
        START + 3 * H,
        windows_container=containers.windows,
        labels_container=containers.labels,
    )
    logical = START + 2 * H
    train_and_register(blob, containers, START, logical - H, version="v-plan", promote=True)

    done = airflow(airflow_home, "tasks", "test", "sensor_scoring", "plan_shards", logical.isoformat())
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "Returned value was: [{" in out and "'spec_uri': " in out  # the shards, what score_shard maps over
    assert "new_state=success" in out

    staged = [b.name for b in blob.list(containers.staging)]
    [plan_name] = [name for name in staged if name.endswith("/plan.json")]
    plan = ShardPlan.from_json(blob.read_bytes(containers.staging, plan_name), source=plan_name)
    assert plan.model_version == "v-plan" and plan.folders[0] == f"{logical - H:%Y/%m/%d/%H}"
    assert len(plan.reads) >= 1 and plan.shards >= 1
    assert not [name for name in staged if name.endswith(".parquet") and "/in/" in name]  # nothing read yet
    specs = [
        ReadSpec.from_json(blob.read_bytes(containers.staging, name), source=name)
        for name in staged
        if "/read-" in name and name.endswith("/spec.json")
    ]
    assert len(specs) == len(plan.reads)
    assert (specs[0].start, specs[0].end) == (logical - H, logical)
    hour_files = {b.name for b in blob.list(containers.windows, f"{logical - H:%Y/%m/%d/%H}/")}
    assert hour_files <= {name for spec in specs for name in spec.files}
    assert not blob.list(containers.predictions)  # one task only: nothing scored, nothing committed

    expected = landed_windows(blob, containers, logical - H, logical)
    reads = [
        read_windows(blob, st.make_uri(containers.staging, name))
        for name in staged
        if "/read-" in name and name.endswith("/spec.json")
    ]
    landed = sum(n for read in reads for n in read.landed_by_hour.values())
    assert landed == len(expected) > 0


def runs_of_day(home: Path) -> list[tuple]:
    """Runs of 2018-08-01, the day the start-date test uses (and no other test)."""
    return query(home, "select run_id, run_type from dag_run where logical_date like '2018-08-01 %'")


def test_an_hour_before_the_start_date_never_succeeds_empty(blob, containers, airflow_home):
    """With SCORING_START_DATE after the hour: ``dags test`` and ``dags trigger`` refuse it; a backfill run, which
    Airflow gives every task despite the start date, fails in its first task. None reports an empty success."""
    late_start = {config.START_DATE_ENV: "2026-01-01T00:00Z"}

    done = airflow(airflow_home, "dags", "test", "sensor_scoring", "2018-08-01T06:00:00+00:00", **late_start)
    assert done.returncode != 0
    assert (
        "ValueError: logical date 2018-08-01T06:00:00+00:00 is before the start date 2026-01-01T00:00:00+00:00 "
        "of DAG 'sensor_scoring' (SCORING_START_DATE)"
    ) in done.stderr
    assert "SCORING_START_DATE=2018-08-01T05:00Z" in done.stderr
    assert not runs_of_day(airflow_home)

    # The DAG as the DAG processor stores it with that setting; then Airflow's own check of default_args' start date
    done = airflow(airflow_home, "dags", "reserialize", **late_start)
    assert done.returncode == 0, done.stderr[-3000:]
    done = airflow(airflow_home, "dags", "trigger", "sensor_scoring", "-l", "2018-08-01T06:00:00+00:00", **late_start)
    assert done.returncode != 0
    assert (
        "Logical date [2018-08-01T06:00:00+00:00] should be >= start_date [2026-01-01T00:00:00+00:00] "
        "from Dag's default_args"
    ) in done.stderr
    assert not runs_of_day(airflow_home)

    done = airflow(
        airflow_home,
        "backfill",
        "create",
        "--dag-id",
        "sensor_scoring",
        "--from-date",
        "2018-08-01T05:00:00+00:00",
        "--to-date",
        "2018-08-01T05:00:00+00:00",
        **late_start,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [(run_id, run_type)] = runs_of_day(airflow_home)
    assert run_type == "backfill"
    tasks = {task for (task,) in query(airflow_home, "select task_id from task_instance where run_id = ?", run_id)}
    assert tasks == {
        "wait_for_windows",
        "plan_shards",
        "plan_reads",
        "read_windows",
        "score_shard",
        "commit",
        "model_health",
    }
    # what the scheduler would run first, run here by hand: it fails at once, without retries, naming the setting
    done = airflow(airflow_home, "tasks", "test", "sensor_scoring", "wait_for_windows", run_id, **late_start)
    out = done.stdout + done.stderr
    assert (
        "AirflowFailException: ValueError: the run's hours start at 2018-08-01T05:00:00+00:00, before the DAG's "
        "start date 2026-01-01T00:00:00+00:00 (SCORING_START_DATE)"
    ) in out
    [(state,)] = query(
        airflow_home, "select state from task_instance where run_id = ? and task_id = 'wait_for_windows'", run_id
    )
    assert state == "failed"
    assert not blob.list(containers.staging) and not blob.list(containers.predictions)


def write_reference_csv(path: Path, start: datetime, end: datetime, devices: list[str], tags: dict[str, float]) -> int:
    """Readings in the reference architecture's sample layout (``TS,Device,Tag,Value``), five per minute per sensor
    (seconds 06, 18, 30, 42, 54), each sensor a noisy level with a slow swing. Deterministic."""
    rng = np.random.default_rng(2018)
    stamps = pd.date_range(start, end, freq="12s", inclusive="left") + pd.Timedelta(seconds=6)
    minutes = np.arange(len(stamps)) / 5.0
    rows = []
    for number, device in enumerate(devices):
        for tag, level in tags.items():
            values = level * (1 + 0.01 * number) + 0.5 * np.sin(minutes / 30.0) + rng.normal(0, 0.2, len(stamps))
            rows.append(
                pd.DataFrame(
                    {
                        "TS": stamps.strftime("%Y-%m-%d %H:%M:%S.000"),
                        "Device": device,
                        "Tag": tag,
                        "Value": values.round(4),
                    }
                )
            )
    frame = pd.concat(rows, ignore_index=True).sort_values(["TS", "Device", "Tag"])
    frame.to_csv(path, index=False)
    return len(frame)


def test_readings_from_2018_replayed_end_to_end(blob, containers, airflow_home, tmp_path):
    """A user's migration: a 2018 readings CSV ingested and trained on with the scoring CLI, then ``airflow dags
    test`` at 2018-08-29T03:00 on the default start date scores the hour 02:00 (the one that ended then)."""
    first, last = datetime(2018, 8, 28, 23, tzinfo=timezone.utc), datetime(2018, 8, 29, 3, 13, tzinfo=timezone.utc)
    readings = write_reference_csv(
        tmp_path / "readings.csv",
        first,
        last,
        ["dev-ref-0", "dev-ref-1", "dev-ref-2"],
        {"temperature": 61.0, "pressure": 101.3},
    )
    assert readings == 6 * 253 * 5

    ingested = scoring_cli("ingest-readings", str(tmp_path / "readings.csv"))
    assert ingested["readings"] == readings and ingested["windows"] == 6 * 253
    assert ingested["first_window_end"].startswith("2018-08-28 23:01") and ingested["last_window_end"].startswith(
        "2018-08-29 03:13"
    )
    trained = scoring_cli(
        "train",
        "--start",
        "2018-08-28T23:00Z",
        "--end",
        "2018-08-29T02:00Z",
        "--promote",
        "--holdout-hours",
        "1",
        *GATE_TAKES_ANY,
    )
    assert trained["models"] == 6 and trained["promoted"] is True

    done = airflow(airflow_home, "dags", "test", "sensor_scoring", "2018-08-29T03:00:00+00:00")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    [(run_id, state)] = query(
        airflow_home, "select run_id, state from dag_run where logical_date = ?", "2018-08-29 03:00:00.000000"
    )
    assert state == "success"
    hour = datetime(2018, 8, 29, 2, tzinfo=timezone.utc)
    counts = check_committed(blob, containers, hour, run_id, trained["version"])
    assert counts["landed"] == 6 * 60  # window_end 02:00 .. 02:59 for each of the six sensors
    assert [b.name for b in blob.list(containers.predictions)] == [
        "date=2018-08-29/hour=02/_manifest.json",
        "date=2018-08-29/hour=02/part-00000.parquet",
    ]
