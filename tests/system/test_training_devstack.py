"""The training DAG and the rollback form in the dev stack: a real scheduler on PostgreSQL, shards as LocalExecutor
tasks, triggered through the REST API the way the Trigger form does.

Unpausing the training DAG makes the scheduler create its scheduled run of the last whole week at once (catchup is
off). The stack's seeded hours are the last few hours, so that week usually holds no window: the scheduled run must
then skip its tasks without failing or alerting. A manual run then trains on the seeded hours, is evaluated on the
held-back ones, and is promoted; the rollback form points production back at the stack's own ``v-e2e``, so the tests
after this one see the production version they expect.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest

from sensor_scoring import settings as config
from sensor_scoring.models import promotion, registry
from tests.support.standalone_stack import SENSORS, H, Standalone

pytestmark = [pytest.mark.standalone, pytest.mark.azurite]
TRAINING, ROLLBACK = "sensor_model_training", "sensor_model_rollback"
RUN_TIMEOUT_S = 300
VERSION = "v-stack-trained"


def _scheduled_run(standalone: Standalone) -> dict:
    deadline = datetime.now(timezone.utc) + timedelta(seconds=120)
    while not (runs := standalone.api.runs(TRAINING, run_type="scheduled")):
        standalone.stack.check()
        assert datetime.now(timezone.utc) < deadline, "no scheduled training run after the unpause"
        time.sleep(2)
    run_id = runs[0]["dag_run_id"]
    return standalone.api.wait_for_runs([run_id], timeout_s=RUN_TIMEOUT_S, dag_id=TRAINING)[run_id]


def _states(standalone: Standalone, dag_id: str, run_id: str) -> dict[tuple[str, int], str]:
    return {(t["task_id"], t["map_index"]): t["state"] for t in standalone.api.task_instances(run_id, dag_id)}


def test_training_promotes_in_the_scheduler_and_the_form_rolls_back(standalone: Standalone):
    storage, containers = standalone.storage, config.Containers()
    assert promotion.current(storage, containers.models) == "v-e2e"
    hours = standalone.landed_hours
    try:
        standalone.api.unpause(TRAINING)
        scheduled = _scheduled_run(standalone)
        week_end = datetime.fromisoformat(scheduled["data_interval_end"])
        if week_end <= hours[0]:  # the week before holds no seeded hour: nothing to train on
            assert scheduled["state"] == "success", scheduled
            assert set(_states(standalone, TRAINING, scheduled["dag_run_id"]).values()) == {"skipped"}
            gather_log = standalone.api.get(
                f"dags/{TRAINING}/dagRuns/{quote(scheduled['dag_run_id'], safe='')}/taskInstances/gather/logs/1",
                headers={"Accept": "application/json"},
            )
            assert "Nothing trained; production unchanged" in json.dumps(gather_log)
            assert promotion.current(storage, containers.models) == "v-e2e"

        conf = {
            "train_start": hours[0].isoformat(),
            "train_end": (hours[-1] + H).isoformat(),
            "holdout_hours": 2,
            "sensors_per_shard": SENSORS // 2,
            "version": VERSION,
            "max_flagged_share": 1.0,
            "max_f1_drop": 1.0,
            "gate_false_alarm_rate": 1.0,  # a few hours of training: the gate takes any rate, as any share
        }
        run_id = standalone.api.trigger(conf, dag_id=TRAINING)["dag_run_id"]
        run = standalone.api.wait_for_runs([run_id], timeout_s=RUN_TIMEOUT_S, dag_id=TRAINING)[run_id]
        states = _states(standalone, TRAINING, run_id)
        assert run["state"] == "success", states
        assert sorted(k for k in states if k[0] == "train_shard") == [("train_shard", 0), ("train_shard", 1)]

        assert promotion.current(storage, containers.models) == VERSION
        manifest = registry.read_manifest(storage, containers.models, VERSION)
        assert manifest["models"] == SENSORS
        lineage = manifest["lineage"]
        assert lineage["training_run"] == run_id
        assert lineage["data_range"]["start"] == hours[0].isoformat()
        assert lineage["data_range"]["held_back_from"] == (hours[-1] - H).isoformat()
        assert lineage["evaluation"]["promotable"] and lineage["evaluation"]["production_version"] == "v-e2e"
        assert lineage["evaluation"]["held_back_windows"] == SENSORS * 120
        link = standalone.api.get(
            f"dags/{TRAINING}/dagRuns/{quote(run_id, safe='')}/taskInstances/train_shard/links",
            params={"map_index": 0},
        )
        url = link["extra_links"]["Shard outputs"]
        assert "restype=container" in url and f"/{containers.staging}?" in url and "prefix=training" in url
        assert not storage.list(containers.staging, "training/")  # the run's scratch space is gone

        standalone.api.unpause(ROLLBACK)
        back_id = standalone.api.trigger({"to_version": "v-e2e"}, dag_id=ROLLBACK)["dag_run_id"]
        back = standalone.api.wait_for_runs([back_id], timeout_s=RUN_TIMEOUT_S, dag_id=ROLLBACK)[back_id]
        assert back["state"] == "success", back
        body = json.loads(storage.read_bytes(containers.models, "aliases/production.json"))
        assert (body["version"], body["action"], body["previous"]) == ("v-e2e", "rollback", VERSION)
        assert body["by"] == f"rollback run {back_id}"
        assert [m["version"] for m in promotion.history(storage, containers.models)][-2:] == [VERSION, "v-e2e"]
    finally:
        for dag_id in (TRAINING, ROLLBACK):
            standalone.api.patch(f"dags/{dag_id}", {"is_paused": True})
        if promotion.current(storage, containers.models) != "v-e2e":  # the later tests score with v-e2e
            promotion.move_alias(storage, containers.models, "v-e2e", action="rollback", reason="test", by="test")
