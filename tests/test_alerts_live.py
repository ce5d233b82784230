"""Alerts in a live Airflow: ``airflow standalone`` (scheduler, triggerer, DAG processor) with its own home.

A run whose deadline passes while it still waits for windows makes the scheduler queue the DAG's callback,
the triggerer runs ``scoring.alerts.deadline_missed``, and an email and a webhook arrive on loopback. The hourly
run that unpausing creates was queued after its deadline had passed: its callback runs too, and sends nothing.
A run with an unknown model version fails in ``plan_shards``: the task's callback (in the task process) and the
DAG's (in the DAG processor) deliver ``task_failed`` and ``dag_run_failed``.
Everything started here is stopped by process group, also on failure.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from scoring.azurite import free_port
from scoring.devstack import stop_process_group
from tests.conftest import REPO
from tests.test_alerts import http_sink, smtp_conn, smtp_sink, webhook_conn  # noqa: F401 (fixtures)

pytestmark = pytest.mark.airflow
RUN_ID = "deadline-live"
FAILING_ID = "failing-live"
OLD = datetime(2026, 11, 24, tzinfo=timezone.utc)


def query(db: Path, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []


def wait_for(what: str, check, timeout_s: float, log: Path):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        result = check()
        if result:
            return result
        time.sleep(3)
    raise AssertionError(f"timed out waiting for {what}; standalone log tail:\n" + "\n".join(
        log.read_text(errors="replace").splitlines()[-40:]))


def test_missed_deadline_alerts_through_scheduler_and_triggerer(tmp_path, smtp_sink, http_sink):  # noqa: F811
    home, db, log_path = tmp_path / "airflow", tmp_path / "airflow.db", tmp_path / "standalone.log"
    from scoring.simulate import SimulationConfig, simulate_to_storage
    from scoring.storage import LocalStorage

    # windows for three old hours only: the deadline run (this hour) keeps waiting, the failing run does not
    simulate_to_storage(LocalStorage(tmp_path / "storage"), SimulationConfig(devices=2, tags=1, seed=2), OLD,
                        OLD + timedelta(hours=3), windows_container="windows", labels_container="labels")
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "SCORING_"))}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "SCORING_STORAGE": str(tmp_path / "storage"),
        "SCORING_DEADLINE_MINUTES": "1",
        "SCORING_TASK_RETRIES": "0",
        "AIRFLOW_CONN_SCORING_SMTP": smtp_conn(smtp_sink.port),
        "AIRFLOW_CONN_SCORING_ALERT_WEBHOOK": webhook_conn(http_sink.port),
    })
    airflow = [sys.executable, "-m", "airflow"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(airflow + ["standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for("the DAG to be parsed", lambda: query(db, "select dag_id from serialized_dag where dag_id='sensor_scoring'"),
                 300, log_path)
        # logical date = interval start for this DAG, so the deadline is logical date + 1 h + 1 min: ~90 s away
        logical = (datetime.now(timezone.utc) - timedelta(minutes=59, seconds=30)).replace(microsecond=0)
        subprocess.run(airflow + ["dags", "trigger", "sensor_scoring", "--logical-date", logical.isoformat(),
                                  "--run-id", RUN_ID], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run(airflow + ["dags", "unpause", "sensor_scoring"], env=env, check=True, capture_output=True,
                       timeout=120)
        window = {"window_start": (OLD + timedelta(hours=1)).isoformat(), "window_end": (OLD + timedelta(hours=2)).isoformat()}
        subprocess.run(airflow + ["dags", "trigger", "sensor_scoring", "--logical-date", (OLD + timedelta(hours=2)).isoformat(),
                                  "--run-id", FAILING_ID, "--conf", json.dumps({**window, "model_version": "no-such-version"})],
                       env=env, check=True, capture_output=True, timeout=120)
        events = {"deadline_missed", "task_failed", "dag_run_failed"}
        wait_for("the deadline and failure webhooks", lambda: events <= {p["json"]["event"] for p in http_sink.received},
                 420, log_path)
        outputs = wait_for("the deadline callbacks to finish", lambda: (
            rows if len(rows := query(db, "select output from callback where state = 'success'")) >= 3 else None),
            120, log_path)
    finally:
        assert not stop_process_group(proc), "processes of the standalone survived"

    posts = {p["json"]["event"]: p["json"] for p in http_sink.received}
    assert len(http_sink.received) == 3 and len(smtp_sink.messages) == 3
    post = posts["deadline_missed"]
    assert post["run_id"] == RUN_ID and post["dag_id"] == "sensor_scoring"
    assert "state running" in post["error"] and post["log_url"] == f"http://127.0.0.1:{api_port}/dags/sensor_scoring/runs/{RUN_ID}"
    subjects = sorted(m["Subject"] for _, m in smtp_sink.messages)
    assert subjects == ["[sensor_scoring] dag_run_failed: plan_shards", f"[sensor_scoring] deadline_missed: {RUN_ID}",
                        "[sensor_scoring] task_failed: plan_shards"]
    texts = sorted(output for (output,) in outputs)  # the scheduled and the failing run's deadlines: no alert
    assert texts[0] == "email sent, webhook sent"
    assert all(t.startswith("no alert: ") for t in texts[1:]), texts
    for event in ("task_failed", "dag_run_failed"):
        post = posts[event]
        assert post["run_id"] == FAILING_ID and post["task_id"] == "plan_shards" and post["try_number"] == 1
        assert post["log_url"] == f"http://127.0.0.1:{api_port}/dags/sensor_scoring/runs/{FAILING_ID}/tasks/plan_shards?try_number=1"
    assert "no-such-version" in posts["task_failed"]["error"] and posts["dag_run_failed"]["error"] == "task_failure"
    assert "Exception when executing TriggerRunnerSupervisor" not in log_path.read_text(errors="replace")
