"""The DAG switched to backend=azure_batch: a whole hour through dag.test, the fake Batch server and Azurite.

dag.test runs each deferred task's trigger inline, right after that task defers, and only then starts the next
mapped instance: under dag.test the shards' Batch tasks therefore run one after another. Running them at
once is the triggerer's job (one event loop polling every deferred shard); test_batch_contract shows the
triggers doing that, and the assertion below records that dag.test did not.
"""

from __future__ import annotations

import json
import re

import airflow  # noqa: F401  (configures Airflow before the tests import its models)
import pytest

from dev.azurite import KEY as STORAGE_KEY
from sensor_scoring.backends import azure_batch as batch
from tests.support.batch_hour import HOUR, H
from tests.support.fake_batch import IDENTITY_POOL, KEY as BATCH_KEY
from tests.support.partitions import read_partition, run_records

pytestmark = [pytest.mark.azurite, pytest.mark.airflow]


def test_an_hour_on_azure_batch_through_the_dag(sensor_dag, blob, containers, batch_landed, fake_batch, monkeypatch):
    fake_batch.exec_delay_s = 0.5  # shards that take half a second
    fake_batch.allow_key_signed_sas = True  # Azurite here is key-authenticated: its SAS URLs are key-signed
    for name, value in {
        "SCORING_BATCH_POOL_ID": "scoring-test-pool",
        "SCORING_SCORER_IMAGE": "sensor-scoring-scorer:test",
        "SCORING_BATCH_POLL_SECONDS": "0.3",
        "SCORING_BATCH_MAX_POLL_SECONDS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    run = sensor_dag.test(logical_date=HOUR + H, run_conf={"backend": "azure_batch", "sensors_per_shard": 2})
    assert str(run.state) == "success"

    predictions, manifest = read_partition(blob, containers.predictions, HOUR)
    assert len(predictions) == 6 * 60 and manifest["counts"]["scored"] == 360
    assert set(predictions["run_id"]) == {run.run_id}

    # one job for the run, named as every submitter names it, one task per group of files (read-windows) and one
    # per shard (score-shard), each run as its command with SAS-only storage
    [job] = fake_batch.jobs
    assert job == batch.job_id(sensor_dag.dag_id, run.run_id)
    tasks = {t.id: t for (j, t_id), t in fake_batch.tasks.items() for t in [t] if j == job}
    assert len(tasks) == 4 and all(t.exit_code == 0 and len(t.runs) == 1 for t in tasks.values())
    assert sorted(t.body["commandLine"].rsplit("/", 2)[1] for t in tasks.values()) == [
        "read-00000",
        "shard-00000",
        "shard-00001",
        "shard-00002",
    ]
    for task in tasks.values():
        command = "read-windows" if "/read-" in task.body["commandLine"] else "score-shard"
        assert f" -m sensor_scoring {command} --spec az://" in task.body["commandLine"], task.body["commandLine"]
        assert task.id.startswith(f"{command}-"), task.id  # read group 0 and score shard 0 are told apart
    assert sorted(t_id.rsplit("-", 2)[0] for t_id in tasks) == [
        "read-windows-00000",
        "score-shard-00000",
        "score-shard-00001",
        "score-shard-00002",
    ]
    assert {t.body["containerSettings"]["imageName"] for t in tasks.values()} == {"sensor-scoring-scorer:test"}
    assert list(fake_batch.pools) == ["scoring-test-pool"]
    sent = json.dumps([r["body"] for r in fake_batch.requests])
    assert STORAGE_KEY not in sent and "AccountKey" not in sent and BATCH_KEY not in sent
    assert not [text for text in run_records(run.run_id) if STORAGE_KEY in text or "sig=" in text]

    # the mapped instances are named by their sensors and link to the hour's partition
    instances = mapped_instances(run.run_id)
    labels = [i["rendered_map_index"] for i in instances]
    label_pattern = r"shard (\d): (dev-\d+)/\w+ \.\. (dev-\d+)/\w+ \(2 sensors\)"
    assert [re.fullmatch(label_pattern, label).group(1) for label in labels] == ["0", "1", "2"]
    assert len({label.split(": ")[1].split("/")[0] for label in labels}) == 3  # one device per shard
    assert all(i["state"] == "success" and i["try_number"] == 1 for i in instances)
    links = link_urls(sensor_dag, run.run_id)
    assert len(set(links)) == 1 and links[0].endswith(
        f"/{containers.predictions}?restype=container&comp=list&prefix=date%3D{HOUR:%Y-%m-%d}/hour%3D{HOUR:%H}/"
    )

    # dag.test ran the shards' triggers inline, one after another (see the module docstring)
    runs = sorted(t.runs[0] for t in tasks.values())
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(runs, runs[1:], strict=False))


def test_an_hour_on_azure_batch_with_no_key_anywhere(sensor_dag, containers, keyless_azure, monkeypatch):
    """A whole hour as a deployment without keys runs it: Airflow runs as its user-assigned identity, the
    ``scoring_storage`` connection holds Azurite's account URL (OAuth mode) and that identity's client id, the
    ``azure_batch`` connection no key (AzureBatchHook -> DefaultAzureCredential, Bearer over HTTPS), and the pool has
    an identity of its own (SCORING_BATCH_POOL_IDENTITY_CLIENT_ID): the fake service runs each shard command with
    the account URL and AZURE_CLIENT_ID only, and the shard authenticates to Azurite as the pool's identity through
    the node's managed-identity endpoint. No request of the run, to storage or to Batch, carries a key."""
    from sensor_scoring import storage as st
    from tests.support.batch_hour import land_batch_hour
    from tests.support.fake_batch import AIRFLOW_IDENTITY, POOL_IDENTITY
    from tests.support.helpers import key_use
    from tests.support.managed_identity import BATCH_RESOURCE, STORAGE_RESOURCE, TENANT

    fake, azurite, identity = keyless_azure.batch, keyless_azure.azurite, keyless_azure.identity
    extra = {"managed_identity_client_id": AIRFLOW_IDENTITY, "workload_identity_tenant_id": TENANT}
    monkeypatch.setenv(
        "AIRFLOW_CONN_SCORING_STORAGE", json.dumps({"conn_type": "wasb", "host": azurite.account_url, "extra": extra})
    )
    for name, value in {"SCORING_BATCH_POLL_SECONDS": "0.3", "SCORING_BATCH_MAX_POLL_SECONDS": "1"}.items():
        monkeypatch.setenv(name, value)
    storage = st.open_storage(azurite.account_url)
    land_batch_hour(storage, containers)
    trouble_file = f"{HOUR:%Y/%m/%d/%H}/0_trouble.json"
    storage.write_bytes(containers.windows, trouble_file, trouble(storage, containers.windows))
    first = len(azurite.requests())

    run = sensor_dag.test(logical_date=HOUR + H, run_conf={"backend": "azure_batch", "sensors_per_shard": 2})
    assert str(run.state) == "success"
    predictions, manifest = read_partition(storage, containers.predictions, HOUR)
    counts = manifest["counts"]
    assert counts["landed"] == counts["scored"] + counts["quarantined"] + counts["duplicates"]
    assert (counts["scored"], counts["quarantined"], counts["duplicates"]) == (360, 2, 1)
    assert len(predictions) == 360 and set(predictions["run_id"]) == {run.run_id}
    quarantine, _ = read_partition(storage, containers.quarantine, HOUR)
    assert sorted(quarantine["reason"]) == ["negative_std", "no_model"]
    healthy, _ = read_partition(storage, containers.health, HOUR)
    assert len(healthy) == 8 and (healthy["status"] != "not scored").sum() == 6  # the two of trouble not scored

    # Batch: one job, a read task and three shard tasks, each handed the account URL and the pool identity's client
    # id only
    [job] = fake.jobs
    assert job == batch.job_id(sensor_dag.dag_id, run.run_id) and fake.jobs[job]["poolInfo"]["poolId"] == IDENTITY_POOL
    assert len(fake.tasks) == 4 and all(t.exit_code == 0 for t in fake.tasks.values())
    for task in fake.tasks.values():
        settings = {e["name"]: e["value"] for e in task.body["environmentSettings"]}
        assert settings == {"SCORING_STORAGE": azurite.account_url, "AZURE_CLIENT_ID": POOL_IDENTITY}
    assert not fake.refused_tasks and not fake.bodies("POST", "/pools")
    assert fake.requests and {r["principal"] for r in fake.requests} == {AIRFLOW_IDENTITY}
    assert all(r["headers"]["Authorization"].startswith("Bearer ") for r in fake.requests)
    sent = json.dumps([r["body"] for r in fake.requests])
    assert STORAGE_KEY not in sent and "AccountKey" not in sent and BATCH_KEY not in sent and "sig=" not in sent

    # storage: every request of the run a bearer token, from Airflow's identity or (the shards) the pool's
    requests = azurite.requests()[first:]
    assert len(requests) > 50 and key_use(requests) == []
    assert all(r["headers"].get("authorization", "").startswith("Bearer ") for r in requests)
    assert {bearer_client_id(r["headers"]["authorization"]) for r in requests} == {AIRFLOW_IDENTITY, POOL_IDENTITY}
    assert identity.asked_for() == {
        (STORAGE_RESOURCE, AIRFLOW_IDENTITY),
        (BATCH_RESOURCE, AIRFLOW_IDENTITY),
        (STORAGE_RESOURCE, POOL_IDENTITY),
    }
    assert not [text for text in run_records(run.run_id) if STORAGE_KEY in text or "sig=" in text]


def trouble(storage, container: str) -> bytes:
    """One file of trouble for HOUR: an exact duplicate of a landed window, an invalid one (negative std) and one
    of a sensor nobody trained."""
    import pandas as pd

    from sensor_scoring.windows import parse_window_file, to_asa_json_lines

    landed = storage.list(container, f"{HOUR:%Y/%m/%d/%H}/")
    found = pd.concat([parse_window_file(b.name, storage.read_bytes(container, b.name)) for b in landed])
    one = found.head(1)
    rows = [one, one.assign(device_id="dev-invalid", value_std=-1.0), one.assign(device_id="dev-unknown")]
    return to_asa_json_lines(pd.concat(rows))


def bearer_client_id(authorization: str) -> str:
    """The client id (``appid``) of the Entra token in an ``Authorization: Bearer`` header."""
    import base64

    payload = authorization.split(" ", 1)[1].split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["appid"])


def test_scoring_backend_sets_the_default_of_the_backend_param(airflow_db, monkeypatch):
    from dev.demo import load_dag
    from tests.conftest import REPO

    monkeypatch.setenv("SCORING_BACKEND", "azure_batch")
    assert load_dag(REPO / "dags" / "sensor_scoring.py").params["backend"] == "azure_batch"
    monkeypatch.delenv("SCORING_BACKEND")
    assert load_dag(REPO / "dags" / "sensor_scoring.py").params["backend"] == "local"


def shard_instances(run_id: str) -> list:
    """The run's mapped score_shard task instances, in map order."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return (
            session.query(TaskInstance)
            .filter(TaskInstance.run_id == run_id, TaskInstance.task_id == "score_shard")
            .order_by(TaskInstance.map_index)
            .all()
        )


def mapped_instances(run_id: str) -> list[dict]:
    return [
        {"rendered_map_index": ti.rendered_map_index, "state": str(ti.state), "try_number": ti.try_number}
        for ti in shard_instances(run_id)
    ]


def link_urls(dag, run_id: str) -> list[str]:
    """What the UI's "Shard outputs" button of each mapped instance opens, resolved as the API server does:
    from the serialized DAG's operator and the task instance."""
    from airflow.serialization.serialized_objects import DagSerialization

    task = DagSerialization.from_dict(DagSerialization.to_dict(dag)).task_dict["score_shard"]
    return [task.get_extra_links(ti, "Shard outputs") for ti in shard_instances(run_id)]
