"""The backend seam: the local backend runs the shard command; unknown backends say so; the decisions of a wait
on a Batch task, shared by the trigger and the synchronous backend."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from sensor_scoring import backends, settings as config
from sensor_scoring.models import fitting, registry
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps.plan import plan_shards
from sensor_scoring.storage import LocalStorage
from sensor_scoring.windows import land_windows
from tests.support.helpers import START, fleet_windows, read_and_plan


def planned_hour(tmp_path) -> Scope:
    """Three hours of one device x two tags landed, a version trained and promoted: the third hour's run."""
    from datetime import timedelta

    storage = LocalStorage(tmp_path)
    windows = fleet_windows(devices=1, tags=2, hours=3)
    land_windows(storage, "windows", windows)
    registry.register(storage, "models", fitting.train_models(windows), version="v1", params={}, promote=True)
    return Scope(storage, config.Containers(), "r1", START + timedelta(hours=2), START + timedelta(hours=3))


def planned_shard(tmp_path):
    """The hour planned and its files read (the steps before score_shard, in-process): its one shard."""
    hour = planned_hour(tmp_path)
    _, [shard] = read_and_plan(hour, sensors_per_shard=5)
    return hour.storage, hour, shard


def test_local_backend_runs_the_shard_command_in_a_child_process(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(config.LOCAL_SHARDS_ENV, "process")
    storage, hour, shard = planned_shard(tmp_path)
    with caplog.at_level(logging.INFO, logger="sensor_scoring.backends.local"):
        result = backends.get_backend("local").run_shard(shard.spec_uri, storage_setting=str(tmp_path))
    assert result["scored"] == 120 and result["shard"] == 0
    assert storage.exists("staging", f"runs/{hour.run_key}/shard-00000/predictions.parquet")
    assert "[shard]" in caplog.text and "(process mode); peak RSS" in caplog.text


def test_local_backend_runs_the_step_in_the_tasks_process_by_default(tmp_path, monkeypatch, caplog):
    """The default: the step the shard command calls, here; the same result, read back from result.json."""
    monkeypatch.delenv(config.LOCAL_SHARDS_ENV, raising=False)
    storage, hour, shard = planned_shard(tmp_path)
    in_task = backends.get_backend("local")
    assert in_task.mode == "task"  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="sensor_scoring.backends.local"):
        result = in_task.run_shard(shard.spec_uri, storage_setting=str(tmp_path))
    assert "in the task's process" in caplog.text and "[shard]" not in caplog.text
    from sensor_scoring.backends.local import LocalBackend

    again = LocalBackend(mode="process").run_shard(shard.spec_uri, storage_setting=str(tmp_path))

    def untimed(r: dict) -> dict:  # the suite's run time, the one field a second run cannot repeat
        return {**r, "validation": {**r["validation"], "seconds": None}}

    assert untimed(again) == untimed(result) and again["validation"]["seconds"] >= 0


@pytest.mark.parametrize("mode", config.LOCAL_SHARD_MODES)
def test_local_backend_runs_a_read_task_in_either_mode(tmp_path, mode):
    """The read_windows task's command goes through the same backend: its group's windows routed into the shard's
    input folder, its result read back from result.json."""
    from sensor_scoring.backends.local import LocalBackend

    hour = planned_hour(tmp_path)
    plan = plan_shards(hour, model_version="production", sensors_per_shard=5)
    [read] = plan.reads
    result = LocalBackend(mode=mode).run_shard(read.spec_uri, storage_setting=str(tmp_path), command="read-windows")
    assert result["group"] == 0 and result["landed_by_hour"] == {hour.start.isoformat(): 120}
    parts = hour.storage.list("staging", f"runs/{hour.run_key}/shard-00000/in/")
    assert {p.name.rsplit("/", 1)[1] for p in parts} == {"00000-landed.parquet", "00000-context.parquet"}


@pytest.mark.parametrize("mode", config.LOCAL_SHARD_MODES)
def test_local_backend_fails_naming_what_went_wrong(tmp_path, mode):
    from sensor_scoring.backends.local import LocalBackend

    expected = "exited with code 1.*spec.json" if mode == "process" else "failed in the task's process.*spec.json"
    with pytest.raises(backends.ShardFailed, match=expected):
        LocalBackend(mode=mode).run_shard("az://staging/missing/spec.json", storage_setting=str(tmp_path))


def test_local_backend_refuses_an_unknown_mode(monkeypatch):
    from sensor_scoring.backends.local import LocalBackend

    with pytest.raises(ValueError, match="unknown local shard mode 'thread'"):
        LocalBackend(mode="thread")
    monkeypatch.setenv(config.LOCAL_SHARDS_ENV, "thread")
    with pytest.raises(ValueError, match="SCORING_LOCAL_SHARDS='thread' is not one of task, process"):
        backends.get_backend("local")


def test_shard_command_is_the_same_everywhere():
    assert backends.shard_command("az://s/x/spec.json") == [
        "python",
        "-m",
        "sensor_scoring",
        "score-shard",
        "--spec",
        "az://s/x/spec.json",
    ]


def test_unknown_backends_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown backend 'spark'"):
        backends.get_backend("spark")
    assert backends.get_backend("azure_batch").name == "azure_batch"


def test_the_package_loads_without_the_batch_code():
    code = (
        "import sys, sensor_scoring.backends as b; b.get_backend('local'); "
        "assert 'sensor_scoring.backends.azure_batch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def summary(state: str, requeues: int = 0, exit_code: int | None = None) -> dict[str, object]:
    return {"task_id": "t", "state": state, "exit_code": exit_code, "requeue_count": requeues, "failure": None}


def test_a_wait_backs_off_up_to_its_cap_and_ends_when_the_task_completes(caplog):
    from sensor_scoring.backends import azure_batch as batch

    poll = batch.Poll("j", "t", delay=1.0, max_delay=3.0)
    pauses = [batch.poll_step(poll, summary("active"), now=0.0).sleep_s for _ in range(4)]
    assert pauses == [1.0, 2.0, 3.0, 3.0]
    with caplog.at_level(logging.WARNING, logger=batch.__name__):
        assert batch.poll_step(poll, summary("running", requeues=1), now=0.0).event is None
    assert "requeued by Batch (node preempted or lost), 1 time(s)" in caplog.text
    done = batch.poll_step(poll, summary("completed", requeues=1, exit_code=3), now=0.0)
    assert done.event == {"status": "completed", **summary("completed", requeues=1, exit_code=3)}
    assert not done.terminate


def test_a_wait_sleeps_no_later_than_its_deadline_then_terminates_the_task():
    from sensor_scoring.backends import azure_batch as batch

    poll = batch.Poll("j", "t", delay=10.0, max_delay=60.0, deadline=100.0)
    assert batch.poll_step(poll, summary("active"), now=97.0).sleep_s == pytest.approx(3.01)
    over = batch.poll_step(poll, summary("active"), now=100.5)
    assert over.terminate and over.event == {"status": "timeout", **summary("active")}


# --- Batch without the account key ---------------------------------------------------------------------------


def test_a_pool_identity_task_gets_the_account_url_and_client_id_and_nothing_secret():
    from dev.azurite import KEY, connection_string
    from sensor_scoring.backends import azure_batch as batch

    containers = {"models": "models", "staging": "staging"}
    https = connection_string("127.0.0.1", 10000).replace("http", "https")
    env = batch.batch_task_env(https, containers, 1, pool_identity_client_id="cid-1")
    assert env == {"SCORING_STORAGE": "https://127.0.0.1:10000/devstoreaccount1", "AZURE_CLIENT_ID": "cid-1"}
    production = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
    assert batch.storage_account_url(production) == "https://acct.blob.core.windows.net"
    assert batch.storage_account_url("https://acct.dfs.core.windows.net/") == "https://acct.blob.core.windows.net"
    for unusable in (
        "/srv/scoring-data",
        "https://user:pw@acct.blob.core.windows.net",
        "https://a/?sig=s3cret",
        connection_string("127.0.0.1", 10000),  # http: a token is never sent in clear
    ):
        with pytest.raises(ValueError) as refused:
            batch.storage_account_url(unusable)
        assert "s3cret" not in str(refused.value) and "pw@" not in str(refused.value) and KEY not in str(refused.value)


def test_one_job_naming_for_the_operator_and_the_backend():
    from sensor_scoring.backends import azure_batch as batch

    spec = "az://staging/runs/scheduled__2026-01-01T00_00_00_00_00-1a2b3c4d/shard-00000/spec.json"
    backend = batch.AzureBatchBackend(dag_id="sensor_scoring", run_id="scheduled__2026-01-01T00:00:00+00:00")
    assert backend.job_for(spec) == batch.job_id("sensor_scoring", "scheduled__2026-01-01T00:00:00+00:00")
    assert backend.job_for(spec).startswith(batch.job_prefix("sensor_scoring"))
    with pytest.raises(RuntimeError, match="neither a Batch client nor an account_url"):
        _ = batch.AzureBatchBackend().client


def test_batch_client_outside_airflow_defaults_to_default_azure_credential(monkeypatch):
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.identity import DefaultAzureCredential

    from sensor_scoring.backends import azure_batch as batch

    url = "https://acct.westeurope.batch.azure.com"
    assert isinstance(batch.batch_client(url)._config.credential, DefaultAzureCredential)  # no request is made
    shared = AzureNamedKeyCredential("acct", "a2V5")
    assert batch.batch_client(url, shared)._config.credential is shared
