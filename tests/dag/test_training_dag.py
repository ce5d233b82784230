"""The training DAG for real (dag.test on Azurite, shards in their own processes): promoted, refused, rolled back.

Small data: 3 devices x 2 sensors, 26 simulated hours with the simulator's labels; the last 2 hours are held back
(at times of day the first day trained on: the simulated baselines follow the day).
"""

from __future__ import annotations

import importlib.util
import json
from datetime import timedelta

import pandas as pd
import pytest

from sensor_scoring import cli
from sensor_scoring.models import fitting, promotion, registry, stats as model_stats
from sensor_scoring.tools.simulate import SimulationConfig, simulate_to_storage
from tests.conftest import REPO
from tests.support.helpers import START

pytestmark = [pytest.mark.azurite, pytest.mark.airflow]

H = timedelta(hours=1)
RANGE = {"train_start": START.isoformat(), "train_end": (START + 26 * H).isoformat()}
BASE_CONF = {**RANGE, "holdout_hours": 2, "sensors_per_shard": 4}


def load_dags():
    """Both DAGs of the file, imported afresh (a run's conf sticks to the Param objects of the DAG it ran)."""
    spec = importlib.util.spec_from_file_location("sensor_model_training", REPO / "dags" / "sensor_model_training.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.dag, module.rollback_dag


@pytest.fixture
def landed(blob, containers):
    simulate_to_storage(
        blob,
        SimulationConfig(devices=3, tags=2, seed=3, anomaly_rate=0.3),
        START,
        START + 26 * H,
        windows_container=containers.windows,
        labels_container=containers.labels,
    )
    return blob


def last_json_line(capsys) -> dict:
    """The CLI's one-line JSON answer (Airflow's own logging may precede it on stdout in-process)."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def alias_body(storage, containers) -> dict:
    return json.loads(storage.read_bytes(containers.models, "aliases/production.json"))


def test_the_form_offers_the_feature_sets_the_command_knows():
    """The DAG file lists the sets itself (it imports nothing heavy at parse time): the same list as the package."""
    from sensor_scoring import features

    dag, _ = load_dags()
    param = dag.params.get_param("features")
    assert sorted(param.schema["enum"]) == sorted(features.FEATURE_SETS)
    assert param.value == features.DEFAULT_FEATURE_SET


def test_promoted_then_refused_with_lineage_and_alert(airflow_db, landed, containers, alert_connections):
    _, http_sink = alert_connections
    training, _ = load_dags()
    run = training.test(run_conf={**BASE_CONF, "version": "v-first"})
    assert str(run.state) == "success"
    assert len([ti for ti in run.get_task_instances() if ti.task_id == "train_shard"]) == 2  # 6 sensors, 4 per shard

    body = alias_body(landed, containers)
    assert body["version"] == "v-first" and body["action"] == "promote" and body["previous"] is None
    assert body["by"] == f"training run {run.run_id}"
    manifest = registry.read_manifest(landed, containers.models, "v-first")
    assert manifest["models"] == 6 and manifest["params"]["nu"] == 0.02
    lineage = manifest["lineage"]
    assert lineage["training_run"] == run.run_id
    assert lineage["data_range"]["start"] == START.isoformat()
    assert lineage["data_range"]["held_back_from"] == (START + 24 * H).isoformat()
    # the registered models are refit on the whole range; the gate judged the same params fit before the held-back
    # hours (tests/unit/test_lifecycle.py checks the judged models)
    assert manifest["params"]["refit"] is True
    assert manifest["train_end"] == (START + 26 * H - timedelta(minutes=1)).isoformat()
    ev = lineage["evaluation"]
    assert ev["promotable"] and ev["production"] is None and ev["held_back_windows"] == 6 * 120
    assert ev["candidate"]["labelled"] == 720 and ev["candidate"]["f1"] is not None  # the simulator's labels
    assert len(ev["labelled_hours"]) == 2
    table = pd.read_parquet(
        pd.io.common.BytesIO(landed.read_bytes(containers.models, "versions/v-first/evaluation.parquet"))
    )
    assert len(table) == 6 and set(table["model"]) == {"candidate"}
    trained_stats = model_stats.read(landed, containers.models, "v-first")  # what model health compares hours with
    assert trained_stats is not None and len(trained_stats) == 6
    assert set(zip(trained_stats["device_id"], trained_stats["tag"])) == set(zip(table["device_id"], table["tag"]))
    assert not [p for p in http_sink.received if p["json"]["event"] == "model_not_promoted"]
    assert not landed.list(containers.staging, "training/")  # the run's scratch space is gone

    # a policy the candidate cannot meet: registered, not promoted, the run says why and alerts
    training, _ = load_dags()
    refused = training.test(run_conf={**BASE_CONF, "version": "v-second", "max_flagged_share": 0.0})
    assert str(refused.state) == "success"
    assert alias_body(landed, containers)["version"] == "v-first"
    second = registry.read_manifest(landed, containers.models, "v-second")["lineage"]["evaluation"]
    assert not second["promotable"] and second["production_version"] == "v-first"
    # the same range again: production was refit on these held-back hours, so it is not compared on them
    assert second["production"] is None and second["production_fit_on_held_back"] == 6
    [alert] = [p["json"] for p in http_sink.received if p["json"]["event"] == "model_not_promoted"]
    assert alert["error"].startswith("not promoted because it flags") and "max_flagged_share 0.0%" in alert["error"]
    assert alert["version"] == "v-second" and alert["task_id"] == "promote"
    assert "new model version not promoted" in alert["text"]
    table = pd.read_parquet(
        pd.io.common.BytesIO(landed.read_bytes(containers.models, "versions/v-second/evaluation.parquet"))
    )
    assert sorted(set(table["model"])) == ["candidate"]
    assert [m["version"] for m in promotion.history(landed, containers.models)] == ["v-first"]


def test_the_command_the_demo_and_the_dag_make_the_same_version(airflow_db, landed, containers, capsys):
    """One training path: the DAG, ``python -m sensor_scoring train`` and the demo's training, on the same windows
    with the same params, register the same models (the same hashes) judged the same way."""
    from dev.demo import DEMO_TRAINING, train_models

    training, _ = load_dags()
    run = training.test(run_conf={**BASE_CONF, "version": "v-dag", "promote": False})
    assert str(run.state) == "success"
    argv = ["train", "--start", RANGE["train_start"], "--end", RANGE["train_end"], "--version", "v-cli"]
    assert cli.main([*argv, "--holdout-hours", "2", "--sensors-per-shard", "4"]) == 0
    assert last_json_line(capsys)["promoted"] is False  # no --promote: registered only
    # the demo's own run holds back the hour it scores and so does not refit; here it takes the form's params
    params = {**DEMO_TRAINING, "holdout_hours": 2, "sensors_per_shard": 4, "promote": False, "refit": True}
    demo = train_models(landed, containers, START, START + 26 * H, params=params, version="v-demo")
    assert demo["promoted"] is False and demo["models"] == 6

    columns = ["device_id", "tag", "sha256", "train_rows", "train_start", "train_end", "nu"]
    indexes = {v: registry.read_index(landed, containers.models, v)[columns] for v in ("v-dag", "v-cli", "v-demo")}
    pd.testing.assert_frame_equal(indexes["v-dag"], indexes["v-cli"])
    pd.testing.assert_frame_equal(indexes["v-dag"], indexes["v-demo"])
    manifests = {v: registry.read_manifest(landed, containers.models, v) for v in indexes}
    assert manifests["v-dag"]["params"] == manifests["v-cli"]["params"] == manifests["v-demo"]["params"]
    assert manifests["v-dag"]["params"]["adaptive_nu"] is fitting.DEFAULT_ADAPTIVE_NU  # the default, everywhere
    verdicts = [manifests[v]["lineage"]["evaluation"] for v in indexes]
    assert all(v["candidate_all"] == verdicts[0]["candidate_all"] for v in verdicts)
    assert promotion.current(landed, containers.models) is None  # nothing promoted: every run said so


def test_bad_range_fails_at_once_naming_it(airflow_db, landed, containers):
    training, _ = load_dags()
    run = training.test(run_conf={**RANGE, "holdout_hours": 26})
    assert str(run.state) == "failed"
    [gather] = [ti for ti in run.get_task_instances() if ti.task_id == "gather"]
    assert str(gather.state) == "failed" and gather.try_number == 1  # no retries on a bad range
    assert not landed.list(containers.models, "versions/")


def test_rollback_form_and_command(airflow_db, landed, containers, capsys):
    from sensor_scoring.windows import read_owned

    windows = read_owned(landed, containers.windows, START, START + 4 * H, 0).windows
    for name in ("v-a", "v-b"):
        registry.register(
            landed, containers.models, fitting.train_models(windows), version=name, params={}, promote=False
        )
        promotion.move_alias(landed, containers.models, name, action="promote", reason="test", by="test")
    _, rollback = load_dags()
    run = rollback.test(run_conf={})
    assert str(run.state) == "success"
    body = alias_body(landed, containers)
    assert body["version"] == "v-a" and body["action"] == "rollback" and body["previous"] == "v-b"
    assert body["by"] == f"rollback run {run.run_id}"

    assert cli.main(["rollback", "--to", "v-b"]) == 0
    assert last_json_line(capsys)["version"] == "v-b"
    assert registry.resolve_version(landed, containers.models, "production") == "v-b"
    with pytest.raises(SystemExit, match="'v-none' is not registered"):
        cli.main(["rollback", "--to", "v-none"])
    assert cli.main(["lineage", "v-a"]) == 0
    moves = last_json_line(capsys)["alias_moves"]
    assert [(m["action"], m["version"]) for m in moves] == [
        ("promote", "v-a"),
        ("promote", "v-b"),
        ("rollback", "v-a"),
        ("rollback", "v-b"),
    ]

    _, rollback = load_dags()
    bad = rollback.test(run_conf={"to_version": "v-none"})
    assert str(bad.state) == "failed"
    assert registry.resolve_version(landed, containers.models, "production") == "v-b"


def test_training_shards_on_azure_batch(airflow_db, landed, containers, fake_batch, monkeypatch):
    """The same DAG with backend=azure_batch: each shard is a Batch task (the fake account runs its command line
    with only the task's SAS environment), judged and read back like a scoring shard."""
    from dev.azurite import KEY as STORAGE_KEY

    fake_batch.allow_key_signed_sas = True  # Azurite here is key-authenticated: its SAS URLs are key-signed
    for name, value in {
        "SCORING_BATCH_POOL_ID": "training-test-pool",
        "SCORING_SCORER_IMAGE": "sensor-scoring-scorer:test",
        "SCORING_BATCH_POLL_SECONDS": "0.3",
        "SCORING_BATCH_MAX_POLL_SECONDS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    training, _ = load_dags()
    run = training.test(run_conf={**BASE_CONF, "version": "v-batch", "backend": "azure_batch"})
    assert str(run.state) == "success"
    [job] = fake_batch.jobs
    tasks = [t for (j, _), t in fake_batch.tasks.items() if j == job]
    assert len(tasks) == 2 and all(t.exit_code == 0 for t in tasks)
    assert all(" train-shard --spec az://" in t.body["commandLine"] for t in tasks)
    assert sorted(t.id.rsplit("-", 2)[0] for t in tasks) == ["train-shard-00000", "train-shard-00001"]
    assert STORAGE_KEY not in json.dumps([r["body"] for r in fake_batch.requests])
    assert registry.read_manifest(landed, containers.models, "v-batch")["models"] == 6
    assert registry.resolve_version(landed, containers.models, "production") == "v-batch"
