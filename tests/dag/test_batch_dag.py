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
from tests.support.fake_batch import KEY as BATCH_KEY
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

    # one job for the run, named as every submitter names it, one task per shard, each run as the shard command
    # with SAS-only storage
    [job] = fake_batch.jobs
    assert job == batch.job_id(sensor_dag.dag_id, run.run_id)
    tasks = {t.id: t for (j, t_id), t in fake_batch.tasks.items() for t in [t] if j == job}
    assert len(tasks) == 3 and all(t.exit_code == 0 and len(t.runs) == 1 for t in tasks.values())
    assert sorted(t.body["commandLine"].rsplit("/", 2)[1] for t in tasks.values()) == [
        "shard-00000",
        "shard-00001",
        "shard-00002",
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


def test_an_hour_on_azure_batch_with_entra_id(sensor_dag, blob, containers, batch_landed, entra_batch, monkeypatch):
    """The same hour with an azure_batch connection holding no key: the operator and the trigger reach Batch through
    AzureBatchHook with DefaultAzureCredential (here a user-assigned managed identity), every request a Bearer
    token over HTTPS. Storage is this Azurite's shared-key mode, so the tasks' SAS URLs are key-signed here."""
    airflow_identity = "11111111-2222-3333-4444-555555555555"
    entra_batch.allow_key_signed_sas = True
    for name, value in {
        "AZURE_CLIENT_ID": airflow_identity,
        "SCORING_BATCH_POOL_ID": "scoring-test-pool",
        "SCORING_BATCH_POLL_SECONDS": "0.3",
        "SCORING_BATCH_MAX_POLL_SECONDS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    run = sensor_dag.test(logical_date=HOUR + H, run_conf={"backend": "azure_batch", "sensors_per_shard": 2})
    assert str(run.state) == "success"
    predictions, manifest = read_partition(blob, containers.predictions, HOUR)
    assert len(predictions) == 6 * 60 and manifest["counts"]["scored"] == 360

    [job] = entra_batch.jobs
    assert job == batch.job_id(sensor_dag.dag_id, run.run_id)
    assert len(entra_batch.tasks) == 3 and all(t.exit_code == 0 for t in entra_batch.tasks.values())
    assert entra_batch.requests and {r["principal"] for r in entra_batch.requests} == {airflow_identity}
    assert not [r for r in entra_batch.requests if "SharedKey" in r["headers"].get("Authorization", "")]
    assert BATCH_KEY not in json.dumps([r["body"] for r in entra_batch.requests])


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
