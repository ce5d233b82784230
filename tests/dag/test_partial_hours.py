"""A shard that fails after its last retry, through the real DAG (dag.test) on a real Azurite: by default the hour
is not committed; with ``max_failed_shard_share`` the hour commits as ``partial`` and alerts; re-running the hour
fills it in to ``scored``. The shard really fails: its command runs through a wrapper that exits 3 for one shard."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest

from sensor_scoring import layout, settings as config, storage as st
from sensor_scoring.tools.simulate import SimulationConfig, simulate_to_storage
from tests.conftest import REPO
from tests.support.helpers import START
from tests.support.partitions import read_partition
from tests.support.training import train_and_register

pytestmark = [pytest.mark.azurite, pytest.mark.airflow]
H = timedelta(hours=1)
SCORED_HOUR = START + 5 * H
VICTIM = "shard-00001/"


@pytest.fixture
def failing_dag(monkeypatch, airflow_db, blob, containers, tmp_path):
    """The DAG without retries, 3 devices x 2 sensors landed and modelled, and shard 1's command failing while the
    flag file exists (delete it to mend the fault)."""
    from dev.demo import load_dag

    simulate_to_storage(
        blob,
        SimulationConfig(devices=3, tags=2, seed=5),
        START,
        START + 6 * H,
        windows_container=containers.windows,
        labels_container=containers.labels,
    )
    train_and_register(blob, containers, START, SCORED_HOUR, version="v-partial", promote=True)
    flag = tmp_path / "fail-shard-1"
    flag.touch()
    wrapper = tmp_path / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$5" in *{VICTIM}*) if [ -e {flag} ]; then echo "injected failure" >&2; exit 3; fi;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))  # the local backend runs shard children with sys.executable
    monkeypatch.setenv(config.LOCAL_SHARDS_ENV, "process")  # a wrapper needs the child process
    monkeypatch.setenv(config.TASK_RETRIES_ENV, "0")
    monkeypatch.setenv(config.RETRY_DELAY_ENV, "1")
    return load_dag(REPO / "dags" / "sensor_scoring.py"), flag


def states(run) -> dict[str, str]:
    return {
        (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): str(ti.state)
        for ti in run.get_task_instances()
    }


def test_failed_shard_fails_the_hour_by_default(failing_dag, blob, containers, alert_connections):
    dag, _ = failing_dag
    _, http = alert_connections
    run = dag.test(logical_date=SCORED_HOUR + H, run_conf={"sensors_per_shard": 2})
    assert str(run.state) == "failed"
    got = states(run)
    assert got["score_shard[1]"] == "failed" and got["score_shard[0]"] == got["score_shard[2]"] == "success"
    assert got["commit"] == "failed"  # refused at once, without a retry
    assert not blob.exists(containers.predictions, layout.Partition(SCORED_HOUR).manifest)  # nothing committed
    events = sorted(p["json"]["event"] for p in http.received)
    assert events == ["dag_run_failed", "task_failed"]  # the shard's alert and the run's; none for commit
    assert next(p["json"] for p in http.received if p["json"]["event"] == "task_failed")["task_id"] == "score_shard"


def test_partial_hour_commits_alerts_and_a_rerun_fills_it_in(
    failing_dag,
    blob,
    containers,
    alert_connections,
):
    dag, flag = failing_dag
    _, http = alert_connections
    conf = {"sensors_per_shard": 2, "max_failed_shard_share": 0.34}
    run = dag.test(logical_date=SCORED_HOUR + H, run_conf=conf)
    assert str(run.state) == "success"
    assert states(run)["score_shard[1]"] == "failed"
    predictions, manifest = read_partition(blob, containers.predictions, SCORED_HOUR)
    assert manifest["status"] == "partial"
    assert manifest["counts"] == {
        "landed": 360,
        "scored": 240,
        "quarantined": 120,
        "duplicates": 0,
        "anomalies": int(predictions["is_anomaly"].sum()),
    }
    assert manifest["quarantine_reasons"] == {"shard_failed": 120}
    [failed] = manifest["failed_shards"]
    assert failed["shard"] == 1 and failed["sensors"] == 2 and failed["windows"] == 120
    assert VICTIM in failed["spec"] and blob.exists(*st.parse_uri(failed["spec"]))  # spec kept for the retry
    quarantine, _ = read_partition(blob, containers.quarantine, SCORED_HOUR)
    assert set(quarantine["reason"]) == {"shard_failed"} and len(quarantine) == 120
    posts = {p["json"]["event"]: p["json"] for p in http.received}
    assert sorted(posts) == ["partial_hour", "task_failed"]  # the shard's alert, then the partial hour's
    assert posts["partial_hour"]["failed_shards"] == [1] and posts["partial_hour"]["shard_failed_windows"] == 120
    assert "shard_failed" in posts["partial_hour"]["text"]

    flag.unlink()  # the fault is mended: re-running the hour scores it whole
    rerun = dag.test(logical_date=SCORED_HOUR + H, run_conf=conf)
    assert str(rerun.state) == "success"
    predictions, manifest = read_partition(blob, containers.predictions, SCORED_HOUR)
    assert manifest["status"] == "scored" and manifest["failed_shards"] == []
    assert len(predictions) == 360 and manifest["counts"]["quarantined"] == 0
    assert not blob.list(containers.staging)  # a whole commit leaves no scratch behind


def test_rerunning_one_hour_of_a_partial_two_hour_run_keeps_the_other_hours_spec(failing_dag, blob, containers):
    """A two-hour run commits both hours partial; the fault is mended and only the first hour is re-run: the second
    hour still names the partial run's failed shard and its spec is still there to retry; re-running the second
    hour fills it in and leaves no staging behind."""
    from dev.demo import load_dag

    dag, flag = failing_dag
    first = SCORED_HOUR - H
    conf = {"sensors_per_shard": 2, "max_failed_shard_share": 0.34}
    window = {"window_start": first.isoformat(), "window_end": (SCORED_HOUR + H).isoformat()}
    run = dag.test(logical_date=SCORED_HOUR + H, run_conf={**conf, **window})
    assert str(run.state) == "success"
    assert [read_partition(blob, containers.predictions, h)[1]["status"] for h in (first, SCORED_HOUR)] == [
        "partial",
        "partial",
    ]

    flag.unlink()
    one = load_dag(REPO / "dags" / "sensor_scoring.py").test(logical_date=first + H, run_conf=conf)
    assert str(one.state) == "success"
    assert read_partition(blob, containers.predictions, first)[1]["status"] == "scored"
    _, second = read_partition(blob, containers.predictions, SCORED_HOUR)
    [failed] = second["failed_shards"]
    assert second["run_id"] == run.run_id and second["status"] == "partial"
    assert blob.exists(*st.parse_uri(failed["spec"]))  # the way back: still retrievable

    other = load_dag(REPO / "dags" / "sensor_scoring.py").test(logical_date=SCORED_HOUR + H, run_conf=conf)
    assert str(other.state) == "success"
    _, second = read_partition(blob, containers.predictions, SCORED_HOUR)
    assert second["status"] == "scored" and second["failed_shards"] == []
    assert not [b for b in blob.list(containers.staging) if b.name.startswith("runs/")]  # nothing names it now


def test_subset_rescorings_keep_a_partial_hours_failed_shard_named_until_they_fill_it_in(failing_dag, blob, containers):
    """A partial hour (shard 1: dev-0001's two sensors), then a rescoring of dev-0000 through the form: the hour
    stays partial naming shard 1 and its spec; a rescoring of dev-0001 (the fault mended) fills it in."""
    from dev.demo import load_dag

    dag, flag = failing_dag
    conf = {"sensors_per_shard": 2, "max_failed_shard_share": 0.34}
    run = dag.test(logical_date=SCORED_HOUR + H, run_conf=conf)
    assert str(run.state) == "success"
    _, manifest = read_partition(blob, containers.predictions, SCORED_HOUR)
    [failed] = manifest["failed_shards"]

    other = load_dag(REPO / "dags" / "sensor_scoring.py").test(
        logical_date=SCORED_HOUR + H, run_conf={**conf, "devices": ["dev-0000"]}
    )
    assert str(other.state) == "success"
    quarantine, manifest = read_partition(blob, containers.quarantine, SCORED_HOUR)
    assert manifest["status"] == "partial" and manifest["failed_shards"] == [failed]
    assert set(quarantine["reason"]) == {"shard_failed"} and len(quarantine) == 120
    assert blob.exists(*st.parse_uri(failed["spec"]))

    flag.unlink()
    filled = load_dag(REPO / "dags" / "sensor_scoring.py").test(
        logical_date=SCORED_HOUR + H, run_conf={**conf, "devices": ["dev-0001"]}
    )
    assert str(filled.state) == "success"
    predictions, manifest = read_partition(blob, containers.predictions, SCORED_HOUR)
    assert manifest["status"] == "scored" and manifest["failed_shards"] == [] and len(predictions) == 360
    assert not [b for b in blob.list(containers.staging) if b.name.startswith("runs/")]
