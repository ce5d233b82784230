"""Two real runs of one hour in the dev stack, the stale one committing last: it must not win.

Run A reads the hour; late windows land; run B reads them, scores and commits; then A commits. Without a fence A's
older view would replace B's partition and B's late windows would be gone from it. The scheduler gives no way to
hold a run between two tasks, so A's ``commit`` is marked failed through the REST API before it can run (A's other
tasks run as usual, and A ends failed), and later cleared, as an operator clears a failed commit from the UI. The
cleared commit must refuse: "superseded by run B", nothing written, B's partition kept whole.
"""

from __future__ import annotations

import io
import json
import time
from urllib.parse import quote

import pandas as pd
import pytest

from dev.demo import ensure_data
from dev.devstack import ApiError
from sensor_scoring import settings as config
from sensor_scoring.layout import MANIFEST_FILE, PARTITION_FILE, partition_prefix
from sensor_scoring.windows import formats
from tests.support.standalone_stack import FLEET, SENSORS, H, Standalone

pytestmark = [pytest.mark.standalone, pytest.mark.azurite]
RUN_TIMEOUT_S = 240
LATE_DEVICE = "dev-late"  # no model: its windows are quarantined no_model, and counted, by the run that reads them
LATE_WINDOWS = 3


def _path(run_id: str, task_id: str) -> str:
    return f"dags/sensor_scoring/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"


def _hold_commit(standalone: Standalone, run_id: str) -> None:
    """Mark the run's commit failed before the scheduler can start it (its instance exists once the run does)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            standalone.api.patch(_path(run_id, "commit"), {"new_state": "failed"})
            return
        except ApiError:
            assert time.monotonic() < deadline, "commit of run A could not be marked failed"
            time.sleep(0.5)


def _wait_task(standalone: Standalone, run_id: str, task_id: str, state: str) -> None:
    """Until every instance of ``task_id`` (each mapped one, once mapped) is in ``state``."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        standalone.stack.check()
        states = [t["state"] for t in standalone.api.task_instances(run_id) if t["task_id"] == task_id]
        if states and all(found == state for found in states):
            return
        assert time.monotonic() < deadline, f"{task_id} of {run_id} not {state}: {states}"
        time.sleep(1)


def _commit_try(standalone: Standalone, run_id: str) -> int:
    return next(t["try_number"] for t in standalone.api.task_instances(run_id) if t["task_id"] == "commit")


def _wait_commit_retried(standalone: Standalone, run_id: str, before: int) -> None:
    """The cleared commit ran again and ended (a short task: polling for "running" could miss it)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        standalone.stack.check()
        commit = next(t for t in standalone.api.task_instances(run_id) if t["task_id"] == "commit")
        if commit["try_number"] > before and commit["state"] in ("success", "failed"):
            return
        assert time.monotonic() < deadline, f"commit of {run_id} not run again: {commit}"
        time.sleep(1)


def _land_late(standalone: Standalone, hour) -> None:
    ends = [hour + pd.Timedelta(minutes=50 + i) for i in range(LATE_WINDOWS)]
    late = pd.DataFrame(
        {
            "device_id": LATE_DEVICE,
            "tag": "temperature",
            "window_end": pd.to_datetime(ends, utc=True),
            "reading_count": 6,
            "value_avg": 20.5,
            "value_min": 20.0,
            "value_max": 21.0,
            "value_std": 0.25,
        }
    )
    folder = hour.strftime("%Y/%m/%d/%H/")
    standalone.storage.write_bytes(config.Containers().windows, folder + "late-0.json", formats.to_asa_json_lines(late))


def test_a_stale_run_committing_last_is_superseded_and_loses_nothing(standalone: Standalone):
    # an hour of this test's own, far from the seeded ones and outside the week the training DAG's scheduled run reads
    hour = standalone.now_hour - 30 * 24 * H
    containers = config.Containers()
    ensure_data(standalone.storage, containers, FLEET["devices"], FLEET["tags"], hour, hour + H)
    conf = {"window_start": hour.isoformat(), "window_end": (hour + H).isoformat(), "sensors_per_shard": SENSORS}

    run_a = standalone.api.trigger(conf)["dag_run_id"]
    _hold_commit(standalone, run_a)
    _wait_task(standalone, run_a, "read_windows", "success")  # A has read the hour (every group of its files)
    _land_late(standalone, hour)
    a_done = standalone.api.wait_for_runs([run_a], timeout_s=RUN_TIMEOUT_S)[run_a]
    assert a_done["state"] == "failed"  # its commit was held

    run_b = standalone.api.trigger(conf)["dag_run_id"]
    b_done = standalone.api.wait_for_runs([run_b], timeout_s=RUN_TIMEOUT_S)[run_b]
    assert b_done["state"] == "success", b_done
    prefix = partition_prefix(hour)
    b_manifest = json.loads(standalone.storage.read_bytes(containers.predictions, prefix + MANIFEST_FILE))
    assert b_manifest["run_id"] == run_b and b_manifest["quarantine_reasons"].get("no_model") == LATE_WINDOWS

    # the operator clears A's failed commit: A's older view must not replace B's partition
    before = _commit_try(standalone, run_a)
    standalone.api.post(
        "dags/sensor_scoring/clearTaskInstances",
        {
            "dry_run": False,
            "dag_run_id": run_a,
            "task_ids": ["commit"],
            "only_failed": True,
            "include_downstream": True,
            "reset_dag_runs": True,
        },
    )
    _wait_commit_retried(standalone, run_a, before)  # cleared, run again, and ended
    a_again = standalone.api.wait_for_runs([run_a], timeout_s=RUN_TIMEOUT_S)[run_a]
    assert a_again["state"] == "failed"
    log = standalone.api.get(
        _path(run_a, f"commit/logs/{_commit_try(standalone, run_a)}"), headers={"Accept": "application/json"}
    )
    assert f"superseded by run {run_b}" in json.dumps(log)

    after = json.loads(standalone.storage.read_bytes(containers.predictions, prefix + MANIFEST_FILE))
    assert after == b_manifest  # B's commit stands, late windows and all
    frame = pd.read_parquet(io.BytesIO(standalone.storage.read_bytes(containers.predictions, prefix + PARTITION_FILE)))
    assert set(frame["run_id"]) == {run_b} and len(frame) == b_manifest["counts"]["scored"]
    quarantine = pd.read_parquet(
        io.BytesIO(standalone.storage.read_bytes(containers.quarantine, prefix + PARTITION_FILE))
    )
    assert (quarantine["device_id"] == LATE_DEVICE).sum() == LATE_WINDOWS
    counts = after["counts"]
    assert counts["landed"] == counts["scored"] + counts["quarantined"] + counts["duplicates"]
