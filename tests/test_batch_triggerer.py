"""The DAG on backend=azure_batch under a real scheduler and triggerer (``airflow standalone``).

This is where shards run on Batch at the same time: each mapped instance submits its Batch task and defers,
freeing its worker slot, and the triggerer polls all of them in one event loop. (dag.test cannot show it: it
runs each trigger inline before starting the next instance; see test_batch_dag.) Everything started here is
stopped by its process group, also on failure.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scoring.azurite import free_port
from scoring.devstack import stop_process_group
from tests.conftest import REPO
from tests.fake_batch import FakeBatch
from tests.test_batch_dag import H, HOUR, landed  # noqa: F401  (fixture)
from tests.test_end_to_end import read_partition

pytestmark = [pytest.mark.azurite, pytest.mark.airflow]
AIRFLOW = str(Path(sys.executable).parent / "airflow")


@pytest.fixture
def fake(tmp_path):
    # shards that take half a minute: long enough for all three to be submitted while the first still runs
    server = FakeBatch(tmp_path / "batch", exec_delay_s=30.0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def standalone(tmp_path, fake, blob, azurite):
    """``airflow standalone`` (api-server on a free port, scheduler, dag-processor, triggerer) on its own SQLite DB."""
    home = tmp_path / "airflow-home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__PARALLELISM": "2",
        # the log servers default to fixed ports other Airflows on this machine use too
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__TRIGGERER__CAPACITY": "50",
        "AIRFLOW_CONN_AZURE_BATCH_DEFAULT": fake.connection_json(),
        "SCORING_STORAGE": azurite.connection_string,
        "SCORING_BATCH_POLL_SECONDS": "1",
        "SCORING_BATCH_MAX_POLL_SECONDS": "2",
        "PYTHONPATH": str(REPO),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",  # standalone runs "airflow"
    }
    log = open(tmp_path / "standalone.log", "wb")
    proc = subprocess.Popen([AIRFLOW, "standalone"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield env, home, tmp_path / "standalone.log"
    finally:
        survivors = stop_process_group(proc)  # the group, then task processes that left it, by pid
        log.close()
        assert not survivors, f"processes of the standalone survived: {survivors}"


def query(db: Path, sql: str, *args) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as conn:
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


def wait(what: str, predicate, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(2)
    raise TimeoutError(f"{what} within {timeout}s; standalone log tail:\n" + log.read_text(errors="replace")[-4000:])


def test_shards_run_concurrently_on_batch_under_the_triggerer(standalone, fake, blob, containers, landed):  # noqa: F811
    env, home, log = standalone
    db = home / "airflow.db"
    wait("the DAG parsed", lambda: query(db, "select 1 from serialized_dag where dag_id='sensor_scoring'"), 240, log)
    run_id = "batch_concurrency_test"
    # a manual run's data interval is the hour before it was requested: name the scored hour explicitly
    conf = json.dumps({"backend": "azure_batch", "sensors_per_shard": 2,
                       "window_start": HOUR.isoformat(), "window_end": (HOUR + H).isoformat()})
    subprocess.run([AIRFLOW, "dags", "trigger", "sensor_scoring", "-r", run_id, "-c", conf],
                   env=env, check=True, capture_output=True, timeout=120)
    subprocess.run([AIRFLOW, "dags", "unpause", "sensor_scoring"], env=env, check=True, capture_output=True, timeout=120)

    state = wait("the run finished", lambda: next(
        (s for (s,) in query(db, "select state from dag_run where run_id=?", run_id) if s in ("success", "failed")), None),
        420, log)
    instances = query(db, "select map_index, state, try_number from task_instance where run_id=? and task_id='score_shard' "
                          "order by map_index", run_id)
    assert state == "success", (instances, log.read_text(errors="replace")[-4000:])
    assert [(m, s) for m, s, _ in instances] == [(0, "success"), (1, "success"), (2, "success")]

    predictions, manifest = read_partition(blob, containers.predictions, HOUR)
    assert len(predictions) == 360 and manifest["run_id"] == run_id
    tasks = [t for t in fake.tasks.values()]
    assert len(tasks) == 3 and all(t.exit_code == 0 for t in tasks)
    runs = [t.runs[-1] for t in tasks]
    # all three Batch tasks ran at once although the executor has only 2 slots: deferred shards hold none
    assert max(start for start, _ in runs) < min(end for _, end in runs), runs
    # the triggerer polled each one; each resumed instance logged its own task's exit code and output URLs
    logs = home / "logs" / "dag_id=sensor_scoring" / f"run_id={run_id}" / "task_id=score_shard"
    for index in range(3):
        # named by the triggerer's job id, which depends on which Airflow component registered first
        [trigger_file] = (logs / f"map_index={index}").glob("attempt=1.log.trigger.*.log")
        trigger_log = trigger_file.read_text()
        assert "is running; next check in" in trigger_log and "Trigger fired event" in trigger_log
        task_log = (logs / f"map_index={index}" / "attempt=1.log").read_text()
        assert "state completed, exit code 0" in task_log and "/files/stderr.txt" in task_log
