"""The DAG in a real Airflow (the dev stack), driven through the REST API v2 and the CLI, like an operator would.

The dev stack (PostgreSQL, Azurite, Airflow's scheduler with LocalExecutor, DAG processor, triggerer and API
server), a real SMTP server and a webhook receiver run for real (fixtures in tests/standalone_stack.py). In
order: a subset rescoring of a scored hour, a three-hour backfill (REST) and the same hours reprocessed by a CLI
backfill, both beside an active scheduled run, a run that fails and must alert by email and webhook, a scan of
every log file for the storage key, and a scheduler killed during a wait.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from datetime import datetime
from urllib.parse import quote

import pandas as pd
import pytest
import requests

from dev.azurite import KEY as ACCOUNT_KEY
from dev.devstack import ApiError, ComponentDied
from sensor_scoring import settings as config
from sensor_scoring.layout import MANIFEST_FILE, PARTITION_FILE, partition_prefix
from tests.support.standalone_stack import ALERT_FROM, ALERT_TO, SENSORS, WEBHOOK_PATH, H, Standalone

pytestmark = [pytest.mark.standalone, pytest.mark.azurite]
#: Three hours of 6 sensors at max_active_runs=3: each run takes ~30 s of task starts on an idle 2-core machine, and
#: the scheduler marks the backfill complete a heartbeat later; four times that for a loaded machine.
BACKFILL_TIMEOUT_S = 300
#: One run of 6 sensors (5 tasks + up to 6 mapped shards): ~40 s idle; generous for a loaded machine.
RUN_TIMEOUT_S = 240
KEY = ["device_id", "tag", "window_end"]
SUBSET_DEVICE = "dev-0001"


def read_hour(standalone: Standalone, hour: datetime) -> tuple[pd.DataFrame, dict, list[str]]:
    """The hour's predictions, its manifest and the names of every blob in its partition."""
    storage, container = standalone.storage, config.Containers().predictions
    prefix = partition_prefix(hour)
    frame = pd.read_parquet(io.BytesIO(storage.read_bytes(container, prefix + PARTITION_FILE)))
    manifest = json.loads(storage.read_bytes(container, prefix + MANIFEST_FILE))
    return frame, manifest, sorted(b.name for b in storage.list(container, prefix))


def assert_whole_hour(frame: pd.DataFrame, manifest: dict, blobs: list[str], hour: datetime) -> None:
    prefix = partition_prefix(hour)
    assert blobs == [prefix + MANIFEST_FILE, prefix + PARTITION_FILE]  # one file per partition, nothing stray
    assert len(frame) == SENSORS * 60 and not frame.duplicated(KEY).any()
    assert frame["window_end"].min() == pd.Timestamp(hour) and frame["window_end"].max() == pd.Timestamp(
        hour + H - pd.Timedelta(minutes=1)
    )
    counts = manifest["counts"]
    assert counts["scored"] == SENSORS * 60
    assert counts["landed"] == counts["scored"] + counts["quarantined"] + counts["duplicates"]


def test_bad_conf_is_refused_before_anything_runs(standalone: Standalone):
    """The params' JSON schema is checked by the API server: no run is created for a bad value."""
    before = len(standalone.api.runs())
    with pytest.raises(ApiError) as refused:
        standalone.api.trigger({"sensors_per_shard": 0})
    assert refused.value.status == 400 and "sensors_per_shard" in str(refused.value)
    with pytest.raises(ApiError) as refused:
        standalone.api.trigger({"window_start": "2026-11-25T10:30:00Z", "window_end": "2026-11-25T11:00:00Z"})
    assert refused.value.status == 400 and "window_start" in str(refused.value)
    assert len(standalone.api.runs()) == before


def test_subset_rescoring_replaces_only_the_subset(standalone: Standalone, full_run: dict):
    assert standalone.api.get("dags/sensor_scoring")["is_paused"] is False  # unpaused through the API
    hour = full_run["hour"]
    before, manifest_before, blobs = read_hour(standalone, hour)
    assert_whole_hour(before, manifest_before, blobs, hour)
    assert set(before["run_id"]) == {full_run["dag_run_id"]} and set(before["model_version"]) == {"v-e2e"}

    run = standalone.api.trigger(
        {
            "window_start": hour.isoformat(),
            "window_end": (hour + H).isoformat(),
            "devices": [SUBSET_DEVICE],
            "tags": [],
            "model_version": "v-alt",
            "sensors_per_shard": 1,
        }
    )
    done = standalone.api.wait_for_runs([run["dag_run_id"]], timeout_s=RUN_TIMEOUT_S)[run["dag_run_id"]]
    assert done["state"] == "success", done
    # the mapped shards of the subset are the subset's sensors only, named by them
    shards = [t for t in standalone.api.task_instances(run["dag_run_id"]) if t["task_id"] == "score_shard"]
    assert sorted(t["rendered_map_index"] for t in shards) == [
        f"{SUBSET_DEVICE}/pressure",
        f"{SUBSET_DEVICE}/temperature",
    ]

    after, manifest, blobs = read_hour(standalone, hour)
    assert_whole_hour(after, manifest, blobs, hour)
    inside = after["device_id"] == SUBSET_DEVICE
    assert inside.sum() == 2 * 60
    assert set(after.loc[inside, "run_id"]) == {run["dag_run_id"]}
    assert set(after.loc[inside, "model_version"]) == {"v-alt"}
    # every other row is exactly what the full run wrote
    untouched_before = before[before["device_id"] != SUBSET_DEVICE].sort_values(KEY).reset_index(drop=True)
    untouched_after = after[~inside].sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(untouched_before, untouched_after)
    # the subset's rows were really rescored with the other model
    rescored = after[inside].sort_values(KEY).reset_index(drop=True)
    original = before[before["device_id"] == SUBSET_DEVICE].sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(rescored[KEY], original[KEY])
    assert not (rescored["score"].to_numpy() == original["score"].to_numpy()).all()
    # the manifest records what was rescored, by which run and model version
    assert manifest["subset"] == {"devices": [SUBSET_DEVICE], "tags": []}
    [record] = manifest["rescored"]
    assert record["run_id"] == run["dag_run_id"] and record["model_version"] == "v-alt"
    assert record["devices"] == [SUBSET_DEVICE] and record["counts"]["scored"] == 2 * 60


def test_backfill_of_three_hours_gives_one_partition_per_hour(standalone: Standalone):
    hours = standalone.landed_hours[3:6]
    scheduled = standalone.scheduled_run()  # the unlanded hour's run, waiting for its windows all along
    backfill = standalone.api.backfill(hours[0], hours[-1], conf={"sensors_per_shard": SENSORS}, max_active_runs=3)
    assert backfill["dag_id"] == "sensor_scoring"
    runs = standalone.wait_for_backfill_runs(hours)
    assert standalone.api.run(scheduled["dag_run_id"])["state"] == "running"  # the backfill ran beside it
    assert sorted(pd.Timestamp(r["data_interval_start"]) for r in runs) == [pd.Timestamp(h) for h in hours]
    assert {r["state"] for r in runs} == {"success"}, runs

    for run in sorted(runs, key=lambda r: r["data_interval_start"]):
        hour = pd.Timestamp(run["data_interval_start"]).to_pydatetime()
        frame, manifest, blobs = read_hour(standalone, hour)
        assert_whole_hour(frame, manifest, blobs, hour)
        assert manifest["run_id"] == run["dag_run_id"] and set(frame["run_id"]) == {run["dag_run_id"]}
        assert set(frame["model_version"]) == {"v-e2e"}
    standalone.wait_backfill_done(backfill["id"])
    # each committed run updated the `predictions` asset, naming its hour for downstream DAGs
    for run in runs:
        [event] = standalone.api.get(
            "assets/events", params={"source_dag_id": "sensor_scoring", "source_run_id": run["dag_run_id"]}
        )["asset_events"]
        assert event["name"] == "predictions" and event["source_task_id"] == "commit"
        assert event["extra"]["run_id"] == run["dag_run_id"]
        assert [pd.Timestamp(h) for h in event["extra"]["hours"]] == [pd.Timestamp(run["data_interval_start"])]


def test_backfill_from_the_cli_reprocesses_the_same_hours_in_place(standalone: Standalone):
    """``airflow backfill create --reprocess-behavior completed`` over the hours just backfilled: each hour is
    scored again and its partition replaced; still one partition per hour, one row per window."""
    hours = standalone.landed_hours[3:6]
    before = {h: read_hour(standalone, h)[1] for h in hours}
    scheduled = standalone.scheduled_run()
    done = standalone.stack.airflow_cli(
        "backfill",
        "create",
        "--dag-id",
        "sensor_scoring",
        "--from-date",
        hours[0].isoformat(),
        "--to-date",
        hours[-1].isoformat(),
        "--reprocess-behavior",
        "completed",
        "--max-active-runs",
        "3",
        "--dag-run-conf",
        json.dumps({"sensors_per_shard": SENSORS}),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    backfill = standalone.latest_backfill()
    assert datetime.fromisoformat(backfill["from_date"]) == hours[0]
    assert datetime.fromisoformat(backfill["to_date"]) == hours[-1]
    assert backfill["reprocess_behavior"] == "completed"
    standalone.wait_backfill_done(backfill["id"], timeout_s=BACKFILL_TIMEOUT_S)

    runs = standalone.wait_for_backfill_runs(hours)
    assert len(runs) == 3 and {r["state"] for r in runs} == {"success"}, runs  # the hours' runs, re-run in place
    assert standalone.api.run(scheduled["dag_run_id"])["state"] == "running"
    for hour in hours:
        frame, manifest, blobs = read_hour(standalone, hour)
        assert_whole_hour(frame, manifest, blobs, hour)
        assert manifest["committed_at"] > before[hour]["committed_at"]  # committed again, by the reprocessing
        assert manifest["counts"] == before[hour]["counts"]  # same windows, same model: the same accounting


def test_failing_run_alerts_by_email_and_webhook(standalone: Standalone, smtp_server, webhook_receiver, full_run: dict):
    hour = full_run["hour"]
    _, manifest_before, _ = read_hour(standalone, hour)
    run = standalone.api.trigger(
        {"window_start": hour.isoformat(), "window_end": (hour + H).isoformat(), "model_version": "no-such-version"}
    )
    run_id = run["dag_run_id"]
    done = standalone.api.wait_for_runs([run_id], timeout_s=RUN_TIMEOUT_S)[run_id]
    assert done["state"] == "failed"
    states = {t["task_id"]: t["state"] for t in standalone.api.task_instances(run_id)}
    assert states["plan_shards"] == "failed" and states["wait_for_windows"] == "success"
    _, manifest_after, _ = read_hour(standalone, hour)
    assert manifest_after == manifest_before  # a failed run leaves the committed hour alone

    hooks = wait_for(
        lambda: [r for r in webhook_receiver.received if (r["json"] or {}).get("run_id") == run_id],
        count=2,
        what="webhook alerts",
        stack=standalone.stack,
    )
    mails = wait_for(
        lambda: [m for m in smtp_server.mailbox.messages if run_id in m.get_body(("html", "plain")).get_content()],
        count=2,
        what="alert emails",
        stack=standalone.stack,
    )

    by_event = {h["json"]["event"]: h for h in hooks}
    assert set(by_event) == {"task_failed", "dag_run_failed"}
    task_alert = by_event["task_failed"]
    assert task_alert["path"] == WEBHOOK_PATH
    assert task_alert["headers"].get("Content-Type", "").startswith("application/json")
    payload = task_alert["json"]
    assert payload["dag_id"] == "sensor_scoring" and payload["run_id"] == run_id
    assert payload["task_id"] == "plan_shards" and payload["map_index"] in (-1, None)
    assert payload["try_number"] == 1
    assert "no-such-version" in payload["error"]
    expected_log = f"{standalone.stack.url}/dags/sensor_scoring/runs/{quote(run_id)}/tasks/plan_shards"
    assert payload["log_url"].startswith(expected_log)
    assert "plan_shards" in payload["text"] and "no-such-version" in payload["text"]
    assert requests.get(payload["log_url"], timeout=10).status_code == 200  # the UI answers the link
    assert by_event["dag_run_failed"]["json"]["run_id"] == run_id

    task_mail = next(m for m in mails if "plan_shards" in m["Subject"])
    body = task_mail.get_body(("html", "plain")).get_content()
    assert "sensor_scoring" in task_mail["Subject"]
    for fact in ("sensor_scoring", run_id, "plan_shards", "no-such-version", "try_number"):
        assert fact in body, fact
    assert expected_log in body.replace("&amp;", "&")
    assert (ALERT_FROM, [ALERT_TO]) in smtp_server.mailbox.envelopes

    # the task's own log, through the API, holds the error the alert quotes
    log = standalone.api.get(
        f"dags/sensor_scoring/dagRuns/{quote(run_id, safe='')}/taskInstances/plan_shards/logs/1",
        headers={"Accept": "application/json"},
    )
    assert "no-such-version" in json.dumps(log)


def wait_for(found, *, count: int, what: str, stack, timeout_s: float = 60) -> list:
    """Alerts are sent by the failing task's callback and by the DAG processor's: allow them a moment (60 s: both
    are sent within seconds of the run failing; a loaded machine may take a few heartbeats)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stack.check()
        items = found()
        if len(items) >= count or time.monotonic() > deadline:
            assert len(items) >= count, f"{what}: {len(items)} of {count} arrived within {timeout_s}s: {items}"
            return items
        time.sleep(1)


def test_no_task_log_file_holds_the_account_key(standalone: Standalone, full_run: dict):
    """The real log files the runs above left (every task, every shard, the stack's own output) never hold the
    storage key that the scoring_storage connection and the shard processes' environment carry."""
    assert f"AccountKey={ACCOUNT_KEY};" in standalone.stack.storage_setting  # the key the stack really uses
    files = [p for p in (standalone.stack.airflow_home / "logs").rglob("*") if p.is_file()]
    files += standalone.stack.logs().values()  # scheduler, DAG processor, triggerer, API server
    shard_logs = [p for p in files if "task_id=score_shard" in str(p)]
    assert len(shard_logs) >= 3 and all(p.stat().st_size for p in shard_logs)  # the shards' logs were written
    texts = {str(p): p.read_text(errors="replace") for p in files}
    assert [where for where, text in texts.items() if ACCOUNT_KEY in text or "AccountKey" in text] == []


def test_a_dead_scheduler_ends_a_wait_at_once_with_its_name_exit_code_and_log(standalone: Standalone):
    """The scheduler killed by pid while a test waits on a run: the wait raises within seconds, not at its
    timeout, naming the scheduler, its exit code and the end of its log. The scheduler is then started again
    (and the run it was watching goes on)."""
    scheduled = standalone.scheduled_run()
    pid = standalone.stack.pid("scheduler")
    killed_at: list[float] = []

    def kill() -> None:
        time.sleep(3)  # well inside the wait
        os.kill(pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        with pytest.raises(ComponentDied) as died:
            standalone.api.wait_for_runs([scheduled["dag_run_id"]], timeout_s=RUN_TIMEOUT_S)
        raised_at = time.monotonic()
    finally:
        killer.join()
    assert raised_at - killed_at[0] < 10
    assert died.value.name == "scheduler" and died.value.returncode == -signal.SIGKILL
    assert "scheduler of the dev stack exited with -9" in str(died.value)
    assert str(standalone.stack.logs()["scheduler"]) in str(died.value)
    log_tail = str(died.value).split(":\n", 1)[1].splitlines()
    assert 0 < len(log_tail) <= 50  # the last 50 lines of the scheduler's log
    standalone.stack.restart("scheduler")
    deadline = time.monotonic() + 120  # a scheduler heartbeats within seconds of its start
    while standalone.api.get("monitor/health")["scheduler"]["status"] != "healthy":
        assert time.monotonic() < deadline, "the restarted scheduler did not become healthy"
        time.sleep(2)
    assert standalone.api.run(scheduled["dag_run_id"])["state"] == "running"
