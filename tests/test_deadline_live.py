"""The deadline alert for real: ``airflow standalone`` (scheduler, triggerer, DAG processor) with its own home.

A run whose deadline passes while it still waits for windows makes the scheduler queue the DAG's callback,
the triggerer runs ``scoring.alerts.deadline_missed``, and an email and a webhook arrive on loopback. The hourly
run that unpausing creates was queued after its deadline had passed: its callback runs too, and sends nothing.
Everything started here is stopped by process group, also on failure.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from scoring.azurite import free_port
from tests.conftest import REPO
from tests.test_alerts import http_sink, smtp_conn, smtp_sink, webhook_conn  # noqa: F401 (fixtures)

pytestmark = pytest.mark.airflow
RUN_ID = "deadline-live"


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the standalone's process group, then SIGKILL; task processes with groups of their own by pid."""
    import psutil

    if proc.poll() is not None:
        return
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    _, alive = psutil.wait_procs(descendants, timeout=5)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass


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
    (tmp_path / "storage").mkdir()
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
        "SCORING_STORAGE": str(tmp_path / "storage"),  # empty: the run waits for windows past its deadline
        "SCORING_DEADLINE_MINUTES": "1",
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
        wait_for("the deadline_missed webhook", lambda: [p for p in http_sink.received
                                                         if p["json"]["event"] == "deadline_missed"], 360, log_path)
        outputs = wait_for("both deadline callbacks to finish", lambda: (
            rows if len(rows := query(db, "select state, output from callback where state = 'success'")) >= 2 else None),
            120, log_path)
    finally:
        stop_group(proc)

    [post] = [p["json"] for p in http_sink.received]
    assert post["event"] == "deadline_missed" and post["run_id"] == RUN_ID and post["dag_id"] == "sensor_scoring"
    assert "state running" in post["error"] and post["log_url"] == f"http://127.0.0.1:{api_port}/dags/sensor_scoring/runs/{RUN_ID}"
    [(recipients, message)] = smtp_sink.messages
    assert message["Subject"] == f"[sensor_scoring] deadline_missed: {RUN_ID}"
    texts = sorted(output for _, output in outputs)
    assert texts[0] == "email sent, webhook sent"
    assert texts[1].startswith("no alert: queued at ") and "after its deadline" in texts[1]
    assert "Exception when executing TriggerRunnerSupervisor" not in log_path.read_text(errors="replace")
