"""Alerts in a live Airflow: a dev stack of its own (PostgreSQL; scheduler, triggerer, DAG processor, API server).

A run whose deadline passes while it still waits for windows makes the scheduler queue the DAG's callback,
the triggerer runs ``sensor_scoring_airflow.alerts.deadline_missed``, and an email and a webhook arrive on loopback.
The hourly run that unpausing creates was queued after its deadline had passed: its callback runs too, and sends
nothing.
A run with an unknown model version fails in ``plan_shards``: the task's callback (in the task process) and the
DAG's (in the DAG processor) deliver ``task_failed`` and ``dag_run_failed``.
Everything started here is stopped by process group, also on failure.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from dev.devstack import DevStack, tail
from tests.support.alerting import smtp_conn, webhook_conn

pytestmark = pytest.mark.airflow
RUN_ID = "deadline-live"
FAILING_ID = "failing-live"
OLD = datetime(2026, 11, 24, tzinfo=timezone.utc)


def wait_for(what: str, check, timeout_s: float, stack: DevStack):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        stack.check()  # a dead component ends the wait at once, with its log
        result = check()
        if result:
            return result
        time.sleep(3)
    raise AssertionError(
        f"timed out waiting for {what}; scheduler and triggerer log tails:\n"
        + "\n".join(tail(stack.logs()[name], 40) for name in ("scheduler", "triggerer"))
    )


@pytest.fixture
def own_stack(tmp_path, smtp_sink, http_sink):
    """A dev stack of this test's own: the deadline (1 minute) is read when the DAG is parsed."""
    from sensor_scoring.storage import LocalStorage
    from sensor_scoring.tools.simulate import SimulationConfig, simulate_to_storage

    # windows for three old hours only: the deadline run (this hour) keeps waiting, the failing run does not
    simulate_to_storage(
        LocalStorage(tmp_path / "storage"),
        SimulationConfig(devices=2, tags=1, seed=2),
        OLD,
        OLD + timedelta(hours=3),
        windows_container="windows",
        labels_container="labels",
    )
    stack = DevStack(
        tmp_path / "stack",
        storage=str(tmp_path / "storage"),
        durable=False,
        airflow_env={
            "SCORING_DEADLINE_MINUTES": "1",
            "SCORING_TASK_RETRIES": "0",
            "AIRFLOW_CONN_SCORING_SMTP": smtp_conn(smtp_sink.port),
            "AIRFLOW_CONN_SCORING_ALERT_WEBHOOK": webhook_conn(http_sink.port),
        },
    )
    try:
        yield stack.start(timeout_s=300)  # ~30 s idle: migrate, four Airflow processes, the DAG's first parse
    finally:
        assert not stack.stop(), "processes of the dev stack survived"


def test_missed_deadline_alerts_through_scheduler_and_triggerer(own_stack: DevStack, smtp_sink, http_sink):
    stack = own_stack

    def airflow(*args: str) -> None:
        done = stack.airflow_cli(*args, timeout_s=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    # logical date = interval start for this DAG, so the deadline is logical date + 1 h + 1 min: ~90 s away
    logical = (datetime.now(timezone.utc) - timedelta(minutes=59, seconds=30)).replace(microsecond=0)
    airflow("dags", "trigger", "sensor_scoring", "--logical-date", logical.isoformat(), "--run-id", RUN_ID)
    airflow("dags", "unpause", "sensor_scoring")
    window = {
        "window_start": (OLD + timedelta(hours=1)).isoformat(),
        "window_end": (OLD + timedelta(hours=2)).isoformat(),
    }
    airflow(
        "dags",
        "trigger",
        "sensor_scoring",
        "--logical-date",
        (OLD + timedelta(hours=2)).isoformat(),
        "--run-id",
        FAILING_ID,
        "--conf",
        json.dumps({**window, "model_version": "no-such-version"}),
    )
    events = {"deadline_missed", "task_failed", "dag_run_failed"}
    # the deadline passes ~90 s from now and the scheduler checks deadlines every heartbeat; the triggerer then
    # runs the callback: 420 s leaves room for a loaded machine
    wait_for(
        "the deadline and failure webhooks",
        lambda: events <= {p["json"]["event"] for p in http_sink.received},
        420,
        stack,
    )
    outputs = wait_for(
        "the deadline callbacks to finish",
        lambda: (
            rows
            if len(rows := stack.postgres.query("select output from callback where state = 'success'")) >= 3
            else None
        ),
        120,
        stack,
    )

    posts = {p["json"]["event"]: p["json"] for p in http_sink.received}
    assert len(http_sink.received) == 3 and len(smtp_sink.messages) == 3
    post = posts["deadline_missed"]
    assert post["run_id"] == RUN_ID and post["dag_id"] == "sensor_scoring"
    assert "state running" in post["error"] and post["log_url"] == f"{stack.url}/dags/sensor_scoring/runs/{RUN_ID}"
    subjects = sorted(m["Subject"] for _, m in smtp_sink.messages)
    assert subjects == [
        # Airflow names the run's last failed task: commit, which runs on all_done and refuses the run
        "[sensor_scoring] dag_run_failed: commit",
        f"[sensor_scoring] deadline_missed: {RUN_ID}",
        "[sensor_scoring] task_failed: plan_shards",
    ]
    texts = sorted(output for (output,) in outputs)  # the scheduled and the failing run's deadlines: no alert
    assert texts[0] == "email sent, webhook sent"
    assert all(t.startswith("no alert: ") for t in texts[1:]), texts
    for event, task_id in (("task_failed", "plan_shards"), ("dag_run_failed", "commit")):
        post = posts[event]
        assert post["run_id"] == FAILING_ID and post["task_id"] == task_id and post["try_number"] == 1
        assert post["log_url"] == f"{stack.url}/dags/sensor_scoring/runs/{FAILING_ID}/tasks/{task_id}?try_number=1"
    assert "no-such-version" in posts["task_failed"]["error"] and posts["dag_run_failed"]["error"] == "task_failure"
    assert "Exception when executing TriggerRunnerSupervisor" not in stack.logs()["triggerer"].read_text(
        errors="replace"
    )
