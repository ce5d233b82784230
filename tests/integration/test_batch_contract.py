"""The azure_batch backend against a fake Batch REST server (tests/support/fake_batch.py) and the real Azurite.

The real azure-batch SDK sends real HTTP; the fake server runs each task's command line as a process with
only the task's environment, so shards really score, with SAS-only storage access. Asserted: what the SDK
sends (pool autoscale formula and container settings, ids, command line, environment), and how the backend,
its trigger and the operator behave on success, failure, retry, preemption, timeout and kill. Without keys:
the Batch account reached with Entra ID (the provider's hook and azure-identity, real tokens from a loopback
managed-identity endpoint, HTTPS), a shard run as the pool's identity on Azurite's OAuth mode with only the
account URL and the identity's client id, and user-delegation SAS accepted where a key-signed one is refused.
Nothing here ran against a real Batch account.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta

import airflow  # noqa: F401  (initialising Airflow puts plugins/ on sys.path, as in every Airflow process)
import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError

from dev.azurite import KEY as STORAGE_KEY
from sensor_scoring import backends, layout, storage as st
from sensor_scoring.backends import azure_batch as batch
from tests.support.fake_batch import ACCOUNT, AIRFLOW_IDENTITY, KEY, POOL_IDENTITY, FakeBatch
from tests.support.helpers import planned_hour
from tests.support.managed_identity import BATCH_RESOURCE

pytestmark = [pytest.mark.azurite]
IMAGE = "registry.example/sensor-scoring-scorer:1.0"


@pytest.fixture
def settings(monkeypatch) -> batch.BatchSettings:
    for name, value in {
        "SCORING_BATCH_POOL_ID": "pool-x",
        "SCORING_BATCH_MAX_NODES": "3",
        "SCORING_BATCH_MAX_LOW_PRIORITY_NODES": "5",
        "SCORING_SCORER_IMAGE": IMAGE,
        "SCORING_BATCH_VM_SIZE": "standard_d4s_v3",
        "SCORING_BATCH_SAS_HOURS": "2",
    }.items():
        monkeypatch.setenv(name, value)
    return batch.BatchSettings.from_env()


@pytest.fixture
def client(fake_batch) -> BatchClient:
    return BatchClient(endpoint=fake_batch.url, credential=AzureNamedKeyCredential(ACCOUNT, KEY))


@pytest.fixture
def shards(blob, containers):
    """Three planned shards (2 sensors each) of a real hour on Azurite."""
    return planned_hour(blob, containers, "batch-run", devices=3, tags=2, sensors_per_shard=2)[1]


#: The run of the planned hour, named as the operator names it: the job is job_id(dag_id, run_id) for both.
DAG_ID, RUN_ID = "sensor_scoring", "batch-run"
JOB = batch.job_id(DAG_ID, RUN_ID)


def backend(client, settings, **kwargs) -> batch.AzureBatchBackend:
    return batch.AzureBatchBackend(client, settings, dag_id=DAG_ID, run_id=RUN_ID, poll_s=0.2, max_poll_s=0.5, **kwargs)


@pytest.fixture(autouse=True)
def _key_signed_sas_allowed(request):
    """These tests' Azurite is key-authenticated (the shared-key mode, which keeps working), so its SAS URLs are
    key-signed; the fake still refuses any AccountKey=. The key-free tests below switch the allowance off."""
    if "fake_batch" in request.fixturenames:
        request.getfixturevalue("fake_batch").allow_key_signed_sas = True


def no_secret_sent(fake_batch: FakeBatch) -> bool:
    sent = json.dumps([r["body"] for r in fake_batch.requests])
    return STORAGE_KEY not in sent and "AccountKey" not in sent and KEY not in sent


def test_success_and_what_the_sdk_sends(fake_batch, client, settings, shards, azurite, containers):
    shard = shards[0]
    result = backend(client, settings).run_shard(shard["spec_uri"], storage_setting=azurite.connection_string)
    assert result["shard"] == 0 and result["scored"] == 120

    [pool] = fake_batch.bodies("POST", "/pools")
    assert pool["id"] == "pool-x" and pool["vmSize"] == "standard_d4s_v3"
    assert pool["enableAutoScale"] is True and "targetDedicatedNodes" not in pool
    formula = pool["autoScaleFormula"]
    assert "maxDedicated = 3;" in formula and "maxLowPriority = 5;" in formula
    assert "$TargetDedicatedNodes" in formula and "$NodeDeallocationOption = taskcompletion" in formula
    assert "//" not in formula and "@" not in formula
    assert pool["virtualMachineConfiguration"]["containerConfiguration"] == {
        "type": "dockerCompatible",
        "containerImageNames": [IMAGE],
    }
    [job] = fake_batch.bodies("POST", "/jobs")
    assert job["id"] == JOB and job["poolInfo"] == {"poolId": "pool-x"} and job["onAllTasksComplete"] == "noaction"
    [task] = fake_batch.bodies("POST", f"/jobs/{JOB}/tasks")
    assert task["id"].startswith("score-shard-00000-") and task["id"].endswith("-t1")
    assert task["commandLine"] == f"python -m sensor_scoring score-shard --spec {shard['spec_uri']}"
    assert task["containerSettings"] == {"imageName": IMAGE, "containerRunOptions": "--rm"}
    assert task["constraints"]["maxTaskRetryCount"] == 0
    [env] = task["environmentSettings"]
    assert env["name"] == "SCORING_STORAGE"
    sas = json.loads(env["value"])["sas_containers"]
    assert sorted(sas) == sorted([containers.models, containers.staging])  # read models, read+write staging
    assert all("sig=" in url and "se=" in url for url in sas.values())
    assert no_secret_sent(fake_batch)
    assert all(r["headers"]["Authorization"].startswith(f"SharedKey {ACCOUNT}:") for r in fake_batch.requests)
    ran = fake_batch.tasks[(JOB, task["id"])]
    assert ran.exit_code == 0 and [t.id for t in client.list_tasks(JOB)] == [task["id"]]
    # the process got the node's basics and its task's settings, nothing of the test's environment
    assert set(ran.env) == {
        "PATH",
        "HOME",
        "LANG",
        "AZ_BATCH_JOB_ID",
        "AZ_BATCH_TASK_ID",
        "AZ_BATCH_NODE_ID",
        "AZ_BATCH_TASK_WORKING_DIR",
        "SCORING_STORAGE",
    }
    assert STORAGE_KEY not in json.dumps(ran.env)


def test_a_read_task_runs_on_batch_reading_windows_and_writing_staging(
    fake_batch, client, settings, blob, containers, azurite
):
    """read_windows on azure_batch: the read task's command, SAS URLs to read ``windows`` and read+write
    ``staging`` (no models: a read task loads none), its rows routed into the shards' input folders on storage, its
    result read back from result.json."""
    from datetime import timedelta
    from urllib.parse import parse_qs, urlsplit

    from sensor_scoring.models import fitting, registry
    from sensor_scoring.runs.scope import Scope
    from sensor_scoring.steps.plan import plan_shards
    from sensor_scoring.windows import land_windows
    from tests.support.helpers import START, fleet_windows

    windows = fleet_windows(devices=3, tags=2, hours=3)
    land_windows(blob, containers.windows, windows)
    registry.register(blob, containers.models, fitting.train_models(windows), version="v1", params={}, promote=True)
    hour = Scope(blob, containers, RUN_ID, START + timedelta(hours=2), START + timedelta(hours=3))
    plan = plan_shards(hour, model_version="production", sensors_per_shard=2)
    [read] = plan.reads
    result = backend(client, settings).run_shard(
        read.spec_uri, storage_setting=azurite.connection_string, command="read-windows"
    )
    assert result["group"] == 0 and result["landed_by_hour"] == {hour.start.isoformat(): 6 * 60}
    [task] = fake_batch.bodies("POST", f"/jobs/{JOB}/tasks")
    assert task["commandLine"] == f"python -m sensor_scoring read-windows --spec {read.spec_uri}"
    assert task["id"].startswith("read-windows-00000-") and task["id"].endswith("-t1")  # not score shard 0's name
    [env] = task["environmentSettings"]
    sas = json.loads(env["value"])["sas_containers"]
    permissions = {c: parse_qs(urlsplit(url).query)["sp"][0] for c, url in sas.items()}
    assert permissions == {containers.windows: "rl", containers.staging: "racwl"}
    assert no_secret_sent(fake_batch)
    for shard in plan.shards:  # each shard's two sensors, routed by the node into the shard's input folder
        part = layout.Shard.of_spec(st.parse_uri(shard.spec_uri)[1]).part(0, "landed")
        assert len(st.read_parquet(blob, containers.staging, part)) == 2 * 60


def test_a_wrong_account_key_is_refused_by_the_shared_key_check(fake_batch):
    wrong = BatchClient(endpoint=fake_batch.url, credential=AzureNamedKeyCredential(ACCOUNT, "d3Jvbmcta2V5"))
    with pytest.raises(HttpResponseError, match="AuthenticationFailed"):
        wrong.get_job("job-1")


def test_failure_exit_code_then_retry_replaces_then_reuses(fake_batch, client, settings, shards, blob, azurite):
    shard = shards[1]
    container, path = shard["spec_uri"][len("az://") :].split("/", 1)
    input_path = layout.Shard.of_spec(path).part(0, "landed")  # the windows read group 0 routed to this shard
    good_input = blob.read_bytes(container, input_path)
    blob.write_bytes(container, input_path, b"not parquet")  # the shard command will fail on it

    with pytest.raises(backends.ShardFailed, match=r"exited with code 1 .*FailureExitCode.*: .*") as failed:
        backend(client, settings, try_number=1).run_shard(shard["spec_uri"], storage_setting=azurite.connection_string)
    assert "arrow" in str(failed.value).lower() or "parquet" in str(failed.value).lower()
    [first] = [t for (j, t) in fake_batch.tasks]

    blob.write_bytes(container, input_path, good_input)  # fixed; the spec (and so the task ids) unchanged
    result = backend(client, settings, try_number=2).run_shard(
        shard["spec_uri"], storage_setting=azurite.connection_string
    )
    assert result["scored"] == 120
    assert [r["path"] for r in fake_batch.requests if r["method"] == "DELETE"] == [f"/jobs/{JOB}/tasks/{first}"]
    [second] = [t for (j, t) in fake_batch.tasks]
    assert second == first[:-2] + "t2"

    added = len(fake_batch.bodies("POST", f"/jobs/{JOB}/tasks"))
    again = backend(client, settings, try_number=3).run_shard(
        shard["spec_uri"], storage_setting=azurite.connection_string
    )
    assert again == result and len(fake_batch.bodies("POST", f"/jobs/{JOB}/tasks")) == added  # reused, nothing added
    assert len(fake_batch.bodies("POST", "/jobs")) == 3  # create-if-missing on every try: 409 JobExists is fine


def test_a_preempted_node_requeues_the_task_and_the_trigger_waits_it_out(fake_batch, client, settings, shards, azurite):
    from sensor_scoring_airflow.triggers import BatchTaskTrigger

    fake_batch.exec_delay_s = 1.0  # long enough to be caught running
    sub = backend(client, settings).submit(shards[0]["spec_uri"], storage_setting=azurite.connection_string)
    task = fake_batch.tasks[(sub.job_id, sub.task_id)]
    fake_batch.wait_for(lambda: task.state == "running")
    first_pid = task.proc.pid
    fake_batch.preempt(sub.job_id, sub.task_id)
    assert task.state in ("active", "running")

    trigger = BatchTaskTrigger("azure_batch_default", sub.job_id, sub.task_id, poll_interval=0.2, max_poll_interval=0.5)
    event = asyncio.run(anext(trigger.run()))
    assert event.payload["status"] == "completed" and event.payload["exit_code"] == 0
    assert event.payload["requeue_count"] == 1 and len(task.pids) == 2 and task.pids[0] == first_pid
    assert not pid_alive(first_pid)


def test_timeout_terminates_the_task(fake_batch, client, settings, shards, azurite):
    from sensor_scoring_airflow.triggers import BatchTaskTrigger

    fake_batch.start_delay_s = 30  # no node comes: the task stays queued
    b = backend(client, settings, timeout_s=1.0)
    with pytest.raises(backends.ShardFailed, match="did not finish in time .was active"):
        b.run_shard(shards[0]["spec_uri"], storage_setting=azurite.connection_string)
    sub = b.submit(shards[1]["spec_uri"], storage_setting=azurite.connection_string)
    trigger = BatchTaskTrigger(
        "azure_batch_default",
        sub.job_id,
        sub.task_id,
        deadline=time.time() + 1,
        poll_interval=0.2,
        max_poll_interval=0.5,
    )
    event = asyncio.run(anext(trigger.run()))
    assert event.payload["status"] == "timeout" and event.payload["state"] == "active"
    terminated = [r["path"] for r in fake_batch.requests if r["path"].endswith("/terminate")]
    assert len(terminated) == 2
    assert all(t.state == "completed" and t.failure["code"] == "TaskEnded" for t in fake_batch.tasks.values())
    assert all(not t.pids for t in fake_batch.tasks.values())  # never started


def test_kill_terminates_the_batch_task_and_its_process(fake_batch, client, settings, shards, azurite):
    """operator.on_kill (worker side) and trigger.on_kill (a user cleared the deferred task) both stop the task."""
    from sensor_scoring_airflow.operators import ShardOperator
    from sensor_scoring_airflow.triggers import BatchTaskTrigger

    fake_batch.exec_delay_s = 60
    b = backend(client, settings)
    subs = [b.submit(s["spec_uri"], storage_setting=azurite.connection_string) for s in shards[:2]]
    tasks = [fake_batch.tasks[(s.job_id, s.task_id)] for s in subs]
    fake_batch.wait_for(lambda: all(t.state == "running" for t in tasks))
    pids = [t.proc.pid for t in tasks]

    op = ShardOperator(task_id="score_shard", shard=shards[0], backend="azure_batch")
    op._batch = {"job_id": subs[0].job_id, "task_id": subs[0].task_id, "conn_id": "azure_batch_default"}
    op.on_kill()
    trigger = BatchTaskTrigger("azure_batch_default", subs[1].job_id, subs[1].task_id)
    asyncio.run(trigger.on_kill())

    assert [r["path"] for r in fake_batch.requests if r["path"].endswith("/terminate")] == [
        f"/jobs/{s.job_id}/tasks/{s.task_id}/terminate" for s in subs
    ]
    for task, pid in zip(tasks, pids, strict=True):
        assert task.state == "completed" and task.failure["code"] == "TaskEnded" and task.exit_code != 0
        assert not pid_alive(pid)


def test_shards_waiting_in_triggers_run_concurrently_on_batch(fake_batch, client, settings, shards, azurite):
    """What the triggerer does with deferred shards: one event loop polls them all while they run at once."""
    from sensor_scoring_airflow.triggers import BatchTaskTrigger

    fake_batch.exec_delay_s = 1.0
    b = backend(client, settings)
    subs = [b.submit(s["spec_uri"], storage_setting=azurite.connection_string) for s in shards]

    async def wait_all():
        triggers = [
            BatchTaskTrigger("azure_batch_default", s.job_id, s.task_id, poll_interval=0.2, max_poll_interval=0.5)
            for s in subs
        ]
        return await asyncio.gather(*(anext(t.run()) for t in triggers))

    events = asyncio.run(wait_all())
    assert [e.payload["exit_code"] for e in events] == [0, 0, 0]
    runs = [fake_batch.tasks[(s.job_id, s.task_id)].runs[-1] for s in subs]
    assert max(start for start, _ in runs) < min(end for _, end in runs)  # all three ran at the same time


def test_old_idle_jobs_are_terminated_and_a_completed_job_is_recreated_for_a_rerun(
    fake_batch, client, settings, shards, azurite
):
    from datetime import datetime, timezone

    mine, other = batch.job_prefix("sensor_scoring"), batch.job_prefix("other_dag")
    old_idle, old_busy, recent = (batch.job_id("sensor_scoring", r) for r in ("old-idle", "old-busy", "recent"))
    foreign = batch.job_id("other_dag", "old")
    for job in (old_idle, old_busy, recent, foreign):
        batch.ensure_job(client, settings, job)
    long_ago = (datetime.now(timezone.utc) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for job in (old_idle, old_busy, foreign):
        fake_batch.jobs[job]["creationTime"] = long_ago
    busy = batch.task_options(settings, "still-running", "az://s/x/spec.json", {})
    busy["commandLine"] = "python -c 'import time; time.sleep(60)'"
    client.create_task(old_busy, busy)
    fake_batch.wait_for(lambda: fake_batch.tasks[(old_busy, "still-running")].state == "running")

    new_run = batch.job_id("sensor_scoring", "new-run")
    batch.submit_shard(
        client,
        settings,
        azurite.connection_string,
        shards[0]["spec_uri"],
        dag_id="sensor_scoring",
        run_id="new-run",
        try_number=1,
    )
    states = {job: fake_batch.jobs[job]["state"] for job in (old_idle, old_busy, recent, foreign, new_run)}
    assert states == {old_idle: "completed", old_busy: "active", recent: "active", foreign: "active", new_run: "active"}
    assert old_idle.startswith(mine) and foreign.startswith(other) and len(new_run) <= 64
    assert fake_batch.bodies("POST", f"/jobs/{old_idle}/terminate") == [{"terminateReason": "IdleAfterRun"}]

    # clearing the old run later: its completed job is deleted and created again, then takes tasks
    assert batch.ensure_job(client, settings, old_idle) is True
    assert fake_batch.jobs[old_idle]["state"] == "active"
    assert [r["path"] for r in fake_batch.requests if r["method"] == "DELETE"] == [f"/jobs/{old_idle}"]


def test_ids_are_valid_batch_ids_and_stable():
    long_run = "backfill__2026-11-25T16:00:00+00:00_" + "x" * 200
    job = batch.job_id("sensor_scoring", long_run)
    assert len(job) <= 64 and job == batch.job_id("sensor_scoring", long_run)
    assert batch.job_id("sensor_scoring", long_run + "y") != job
    assert all(ch.isalnum() or ch in "-_" for ch in job)
    facts = {command: batch.ShardFacts(command, 7, {}, "v") for command in backends.SHARD_STEPS}
    ids = {command: batch.task_id(f, 2) for command, f in facts.items()}
    assert ids["score-shard"].startswith("score-shard-00007-") and ids["score-shard"].endswith("-t2")
    assert ids["read-windows"].startswith("read-windows-00007-") and ids["train-shard"].startswith("train-shard-00007-")
    for command, task in ids.items():  # the same number and spec version, told apart by the step
        assert len(task) <= batch.MAX_ID and all(ch.isalnum() or ch in "-_" for ch in task)
        assert task == batch.previous_task_ids(facts[command], 3)[0]
        assert batch.previous_task_ids(facts[command], 1) == []
    assert batch.task_id(batch.ShardFacts("score-shard", 10**9, {}, "v" * 500), 10**6).endswith("-t1000000")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- without the account key: Entra ID for Batch, the pool's identity or user-delegation SAS for storage -----


@pytest.fixture
def keyless_shards(keyless_azure, containers):
    """The three shards of ``shards``, planned on Azurite's OAuth mode by this process's managed identity."""
    from sensor_scoring import storage as st

    return planned_hour(st.open_storage(), containers, RUN_ID, devices=3, tags=2, sensors_per_shard=2)[1]


def test_entra_id_reaches_batch_from_the_hook_and_from_azure_identity(keyless_azure, keyless_shards):
    """No Batch key anywhere: the airflow connection has none (AzureBatchHook -> DefaultAzureCredential), scripts use
    azure-identity; both fetch real tokens from the managed-identity endpoint and send them as Bearer over HTTPS."""
    from sensor_scoring_airflow.batch import batch_account_url, batch_client
    from sensor_scoring_airflow.operators import ShardOperator
    from sensor_scoring_airflow.triggers import BatchTaskTrigger

    fake, identity, shards = keyless_azure.batch, keyless_azure.identity, keyless_shards
    pool_settings = batch.BatchSettings.from_env()
    fake.start_delay_s = 1.0  # the shard's task is ended by on_kill below, before a node takes it

    # outside Airflow: azure-identity's DefaultAzureCredential (batch_client's default), the same submission path
    sub = backend(batch.batch_client(fake.url), pool_settings).submit(
        shards[0]["spec_uri"], storage_setting=keyless_azure.storage_url
    )
    assert sub.job_id == JOB
    # inside Airflow: the operator's client and the trigger's, both AzureBatchHook's
    assert batch_account_url("azure_batch_default") == fake.url
    op = ShardOperator(task_id="score_shard", shard=shards[0], backend="azure_batch")
    op._batch = {"job_id": sub.job_id, "task_id": sub.task_id, "conn_id": "azure_batch_default"}
    op.on_kill()
    assert fake.tasks[(JOB, sub.task_id)].state == "completed" and not fake.tasks[(JOB, sub.task_id)].pids
    fake.start_delay_s = 0.0
    probe = batch.task_options(pool_settings, "probe", shards[1]["spec_uri"], {})
    probe["commandLine"] = "python -c \"print('probe ran')\""
    batch_client("azure_batch_default").create_task(JOB, probe)
    trigger = BatchTaskTrigger("azure_batch_default", JOB, "probe", poll_interval=0.2, max_poll_interval=0.5)
    event = asyncio.run(anext(trigger.run()))
    assert event.payload["status"] == "completed" and event.payload["exit_code"] == 0

    assert fake.requests and all(r["principal"] == AIRFLOW_IDENTITY for r in fake.requests)
    assert not [r for r in fake.requests if not r["headers"]["Authorization"].startswith("Bearer ")]
    assert {a for a in identity.asked_for() if a[0] == BATCH_RESOURCE} == {(BATCH_RESOURCE, AIRFLOW_IDENTITY)}
    assert no_secret_sent(fake) and not fake.refused_tasks


def test_a_bearer_token_for_another_resource_or_over_http_is_refused(entra_batch, managed_identity):
    from azure.identity import ManagedIdentityCredential

    storage_token = ManagedIdentityCredential().get_token("https://storage.azure.com/.default").token
    import requests

    refused = requests.get(
        f"{entra_batch.url}/jobs/x",
        headers={"Authorization": f"Bearer {storage_token}"},
        verify=str(entra_batch.ca_file),
        timeout=10,
    )
    assert refused.status_code == 403 and "AuthenticationFailed" in refused.text
    expired = managed_identity.token(BATCH_RESOURCE, AIRFLOW_IDENTITY, lifetime_s=-10)
    for token in (expired, "not-a-jwt", managed_identity.token(BATCH_RESOURCE, AIRFLOW_IDENTITY)):
        answer = requests.get(
            f"{entra_batch.url}/jobs/x",
            headers={"Authorization": f"Bearer {token}"},
            verify=str(entra_batch.ca_file),
            timeout=10,
        )
        assert answer.status_code == (404 if token.count(".") == 2 and token != expired else 403), token[:12]
    plain = FakeBatch(entra_batch.root / "plain", identity=managed_identity).start()  # no TLS: Bearer never accepted
    try:
        batch_token = ManagedIdentityCredential().get_token(batch.BATCH_SCOPE).token
        answer = requests.get(f"{plain.url}/jobs/x", headers={"Authorization": f"Bearer {batch_token}"}, timeout=10)
        assert answer.status_code == 403
    finally:
        plain.stop()


def test_a_shard_runs_as_the_pool_identity_with_the_account_url_and_no_secret(keyless_azure, keyless_shards):
    """The pool-identity mode end to end for one shard: the task gets the account URL and the pool identity's
    client id, nothing else of storage; on a node of the pool it gets a storage token of that identity from the
    node's identity endpoint and scores against Azurite's OAuth mode. No request of it used a key."""
    from tests.support.helpers import key_use

    fake, identity, azurite = keyless_azure.batch, keyless_azure.identity, keyless_azure.azurite
    pool_settings = batch.BatchSettings.from_env()
    first = len(azurite.requests())
    result = backend(batch.batch_client(fake.url), pool_settings).run_shard(
        keyless_shards[0]["spec_uri"], storage_setting=keyless_azure.storage_url
    )
    assert result["shard"] == 0 and result["scored"] == 120
    [task] = fake.bodies("POST", f"/jobs/{JOB}/tasks")
    env = {e["name"]: e["value"] for e in task["environmentSettings"]}
    assert env == {"SCORING_STORAGE": azurite.account_url, "AZURE_CLIENT_ID": POOL_IDENTITY}
    assert not fake.bodies("POST", "/pools")  # the ARM pool is used as it is
    assert no_secret_sent(fake) and "sig=" not in json.dumps(task) and not fake.refused_tasks
    assert {a for a in identity.asked_for() if a[1] == POOL_IDENTITY} == {("https://storage.azure.com", POOL_IDENTITY)}
    requests = azurite.requests()[first:]
    assert requests and key_use(requests) == []
    assert all(r["headers"].get("authorization", "").startswith("Bearer ") for r in requests)


def test_the_pool_identity_gets_the_storage_account_of_the_setting_and_no_secret():
    """Through the storage package's one normaliser: the dfs endpoint is the account's blob endpoint; a SAS, a
    local folder or plain http are refused without echoing the setting."""
    for url in ("https://acct.blob.core.windows.net", "https://acct.dfs.core.windows.net/"):
        assert batch.storage_account_url(url) == "https://acct.blob.core.windows.net"
    for bad, reason in (
        ("https://acct.blob.core.windows.net/?sv=2024&sig=s3cret", "no query"),
        ('{"sas_containers": {"a": "https://x/a?sig=s3cret"}}', "a SAS setting"),
        ("/srv/scoring-data", "a local folder"),
        ("DefaultEndpointsProtocol=http;AccountName=a;AccountKey=s3cret;BlobEndpoint=http://127.0.0.1:1/a;", "https"),
    ):
        with pytest.raises(ValueError, match=reason) as refused:
            batch.storage_account_url(bad)
        assert "s3cret" not in str(refused.value)


def test_pool_identity_mode_refuses_a_pool_without_that_identity(fake_batch, client, shards, azurite, monkeypatch):
    """The Batch service API cannot attach an identity, so the backend never creates such a pool: a missing pool or
    one with another identity is a clear error before any job or task is made."""
    monkeypatch.setenv("SCORING_BATCH_POOL_ID", "pool-x")
    monkeypatch.setenv("SCORING_BATCH_POOL_IDENTITY_CLIENT_ID", POOL_IDENTITY)
    pool_settings = batch.BatchSettings.from_env()
    with pytest.raises(RuntimeError, match="does not exist; .*Azure Resource Manager"):
        backend(client, pool_settings).submit(shards[0]["spec_uri"], storage_setting=azurite.connection_string)
    fake_batch.add_pool_with_identity("pool-x", "someone-else")
    with pytest.raises(RuntimeError, match=f"does not carry the user-assigned identity {POOL_IDENTITY}.*someone-else"):
        backend(client, pool_settings).submit(shards[0]["spec_uri"], storage_setting=azurite.connection_string)
    assert not fake_batch.bodies("POST", "/pools") and not fake_batch.jobs and not fake_batch.tasks


def user_delegation_sas_setting(account_url: str, containers: list[str]) -> str:
    """A SAS setting as a token-authenticated storage signs it: azure-storage-blob's generate_container_sas with a
    user delegation key (its fields as Azure returns them from get_user_delegation_key; the key value is made up,
    so no service could verify it: this is the SDK boundary, not a storage account)."""
    import base64
    from datetime import datetime, timezone

    from azure.storage.blob import ContainerSasPermissions, UserDelegationKey, generate_container_sas

    now = datetime.now(timezone.utc)
    key = UserDelegationKey()
    key.signed_oid, key.signed_tid = POOL_IDENTITY, "72f988bf-0000-0000-0000-2d7cd011db47"
    key.signed_start, key.signed_expiry = (
        now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        (now + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    key.signed_service, key.signed_version = "b", "2025-01-05"
    key.value = base64.b64encode(b"user-delegation-key-bytes-32-byt").decode()
    urls = {
        c: f"{account_url}/{c}?"
        + generate_container_sas(
            "acct",
            c,
            user_delegation_key=key,
            permission=ContainerSasPermissions(read=True, list=True),
            expiry=now + timedelta(hours=2),
        )
        for c in containers
    }
    return json.dumps({"sas_containers": urls})


def test_user_delegation_sas_is_accepted_and_a_key_signed_one_refused(fake_batch, client, settings, shards, azurite):
    """The fake's key check on task definitions, at the SDK boundary: what the SDK sends for a task holding a
    user-delegation SAS, a key-signed SAS (make_sas_setting with Azurite's account key) and a connection string."""
    from azure.core.exceptions import HttpResponseError

    fake_batch.allow_key_signed_sas = False
    batch.ensure_job(client, settings, JOB)
    spec = shards[0]["spec_uri"]
    delegated = user_delegation_sas_setting("https://acct.blob.core.windows.net", ["models", "staging"])
    for url in json.loads(delegated)["sas_containers"].values():
        assert all(f"{field}=" in url for field in ("skoid", "sktid", "skt", "ske", "sks", "skv", "sig"))
    client.create_task(JOB, batch.task_options(settings, "delegated", spec, {"SCORING_STORAGE": delegated}))
    assert (JOB, "delegated") in fake_batch.tasks

    key_signed = batch.batch_task_env(azurite.connection_string, {"models": "models", "staging": "staging"}, 1)
    for name, env in (
        ("key-signed", key_signed),
        ("connection-string", {"SCORING_STORAGE": azurite.connection_string}),
    ):
        with pytest.raises(HttpResponseError, match="TaskCarriesAccountKey") as refused:
            client.create_task(JOB, batch.task_options(settings, name, spec, env))
        assert STORAGE_KEY not in str(refused.value)
    reasons = {r["id"]: r["reasons"] for r in fake_batch.refused_tasks}
    assert reasons["key-signed"] == ["a SAS signed with an account key (no skoid, sktid, skt, ske, sks, skv)"] * 2
    assert "an AccountKey= (a storage account key)" in reasons["connection-string"]
    assert set(t for _, t in fake_batch.tasks) == {"delegated"}
