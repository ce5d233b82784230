"""The DAG on backend=azure_batch under a real scheduler and triggerer (a dev stack: PostgreSQL, LocalExecutor).

This is where shards run on Batch at the same time: each mapped instance submits its Batch task and defers,
freeing its worker slot, and the triggerer polls all of them in one event loop. (dag.test cannot show it: it
runs each trigger inline before starting the next instance; see test_batch_dag.) Everything started here is
stopped by its process group, also on failure.
"""

from __future__ import annotations

import pytest

from dev.devstack import PARALLELISM, DevStack, tail
from tests.support.batch_hour import HOUR, H
from tests.support.partitions import read_partition

pytestmark = [pytest.mark.azurite, pytest.mark.airflow]


#: Shards of one sensor each: more shards (6) than the dev stack has executor slots (PARALLELISM = 4).
SHARDS = 6


@pytest.fixture
def own_stack(tmp_path, fake_batch, blob, azurite):
    """A dev stack of this test's own (PostgreSQL, LocalExecutor) on the session's Azurite and this test's containers,
    with the fake Batch account as its azure_batch_default connection."""
    # shards that take 45 s: long enough for all six to be submitted, four slots at a time, while the first runs
    fake_batch.exec_delay_s = 45.0
    fake_batch.allow_key_signed_sas = True  # Azurite here is key-authenticated: its SAS URLs are key-signed
    stack = DevStack(
        tmp_path / "stack",
        storage=azurite.connection_string,
        durable=False,
        airflow_env={
            "AIRFLOW__TRIGGERER__CAPACITY": "50",
            "AIRFLOW_CONN_AZURE_BATCH_DEFAULT": fake_batch.connection_json(),
            "SCORING_BATCH_POLL_SECONDS": "1",
            "SCORING_BATCH_MAX_POLL_SECONDS": "2",
        },
    )
    try:
        yield stack.start(timeout_s=300)  # ~30 s idle: migrate, four Airflow processes, the DAG's first parse
    finally:
        assert not stack.stop(), "processes of the dev stack survived"


def test_shards_run_concurrently_on_batch_under_the_triggerer(
    own_stack: DevStack, fake_batch, blob, containers, batch_landed
):
    stack, api = own_stack, own_stack.api()
    assert stack.environment()["AIRFLOW__CORE__PARALLELISM"] == str(PARALLELISM) and PARALLELISM < SHARDS
    run_id = "batch_concurrency_test"
    # a manual run's data interval is the hour before it was requested: name the scored hour explicitly
    api.trigger(
        {
            "backend": "azure_batch",
            "sensors_per_shard": 1,
            "window_start": HOUR.isoformat(),
            "window_end": (HOUR + H).isoformat(),
        },
        run_id=run_id,
    )
    api.unpause()
    # six 45 s Batch tasks at once, then the commit: ~2 min idle
    state = api.wait_for_runs([run_id], timeout_s=420)[run_id]["state"]
    instances = sorted(
        (t["map_index"], t["state"], t["try_number"])
        for t in api.task_instances(run_id)
        if t["task_id"] == "score_shard"
    )
    assert state == "success", (instances, tail(stack.logs()["scheduler"]))
    assert [(m, s) for m, s, _ in instances] == [(i, "success") for i in range(SHARDS)]

    predictions, manifest = read_partition(blob, containers.predictions, HOUR)
    assert len(predictions) == 360 and manifest["run_id"] == run_id
    # the hour's one group of files is read by a Batch task too, before the shards
    reads = [t for t in fake_batch.tasks.values() if " read-windows " in t.body["commandLine"]]
    tasks = [t for t in fake_batch.tasks.values() if " score-shard " in t.body["commandLine"]]
    assert len(reads) == 1 and len(fake_batch.tasks) == SHARDS + 1
    assert len(tasks) == SHARDS and all(t.exit_code == 0 for t in [*reads, *tasks])
    runs = [t.runs[-1] for t in tasks]
    # all six Batch tasks ran at once although the executor has only four slots: deferred shards hold none
    assert max(start for start, _ in runs) < min(end for _, end in runs), runs
    # the triggerer polled each one; each resumed instance logged its own task's exit code and output URLs
    logs = stack.airflow_home / "logs" / "dag_id=sensor_scoring" / f"run_id={run_id}" / "task_id=score_shard"
    for index in range(SHARDS):
        # named by the triggerer's job id, which depends on which Airflow component registered first
        [trigger_file] = (logs / f"map_index={index}").glob("attempt=1.log.trigger.*.log")
        trigger_log = trigger_file.read_text()
        assert "is running; next check in" in trigger_log and "Trigger fired event" in trigger_log
        task_log = (logs / f"map_index={index}" / "attempt=1.log").read_text()
        assert "state completed, exit code 0" in task_log and "/files/stderr.txt" in task_log
