"""Partial hours against a real Azurite: a failed shard's windows are quarantined as ``shard_failed``, the hour is
``partial`` and names the shard, the staging survives, and scoring the shard again and committing fills it in.

These are the steps the DAG runs (``sensor_scoring.steps``); clearing the failed ``score_shard`` instance in Airflow
re-runs exactly this: the shard's command on its kept spec (its input, routed there by the read tasks, kept too),
then commit over every read task's and shard's result.
"""

from __future__ import annotations

import pytest

from sensor_scoring import layout
from sensor_scoring.contracts import SHARD_FAILED
from sensor_scoring.runs.partial import TooManyFailedShards, check_failed_share
from sensor_scoring.steps.commit import commit
from sensor_scoring.steps.score import score_shard
from tests.integration.test_faults import BASE, assert_accounting, env, hour_windows, trained  # noqa: F401
from tests.support.helpers import read_and_plan

pytestmark = [pytest.mark.azurite]


def test_partial_hour_quarantines_the_failed_shard_and_retrying_it_fills_the_hour(env):  # noqa: F811
    hour = env.hour("run-partial")
    reads, shards = read_and_plan(hour, sensors_per_shard=1)
    # planned from the version's index before anything is read: a shard per modelled sensor, the third device's
    # two landing nothing
    assert len(shards) == 6 and [s.sensors for s in shards] == [1] * 6
    failed, scored = shards[1], [s for s in shards if s is not shards[1]]
    results = [score_shard(env.blob, s.spec_uri) for s in scored]  # shard 1 never produced a result

    [manifest] = commit(hour, reads, results, failed_shards=[failed], max_quarantine_share=0.5)
    record = manifest.to_dict()
    predictions, quarantine = assert_accounting(env, record, landed=BASE)  # the accounting closes
    assert record["status"] == "partial"
    assert record["counts"]["scored"] == BASE - 60 and record["quarantine_reasons"] == {SHARD_FAILED: 60}
    assert [(f["shard"], f["sensors"], f["windows"], f["spec"]) for f in record["failed_shards"]] == [
        (failed.shard, 1, 60, failed.spec_uri)
    ]
    assert record["failed_shards"][0]["label"] == failed.label
    ((device, tag),) = set(zip(quarantine["device_id"], quarantine["tag"]))
    assert not ((predictions["device_id"] == device) & (predictions["tag"] == tag)).any()
    run = layout.Run(hour.run_key)
    assert env.blob.exists(hour.containers.staging, run.shard(failed.shard).spec)  # kept for the retry

    # the retry of just that shard (what clearing it does), then commit over every shard's result
    retried = score_shard(env.blob, failed.spec_uri)
    [filled] = commit(hour, reads, [*results, retried], max_quarantine_share=0.5)
    record = filled.to_dict()
    predictions, quarantine = assert_accounting(env, record, landed=BASE)
    assert record["status"] == "scored" and record["failed_shards"] == [] and quarantine.empty
    assert len(predictions) == BASE
    assert not env.blob.list(hour.containers.staging, run.prefix)  # committed whole: staging gone


def test_too_many_failed_shards_commit_nothing(env):  # noqa: F811
    hour = env.hour("run-refused")
    _, shards = read_and_plan(hour, sensors_per_shard=1)
    assert len(shards) == 6  # one per modelled sensor (see above)
    with pytest.raises(TooManyFailedShards, match=r"2 of 6 shard\(s\) failed .* > max_failed_shard_share 0.25"):
        check_failed_share(len(shards), shards[:2], 0.25)
    with pytest.raises(TooManyFailedShards, match="max_failed_shard_share 0"):
        check_failed_share(len(shards), shards[:1], 0)  # the default: any failed shard fails the hour
    check_failed_share(len(shards), shards[:1], 0.25)  # 1 of 6 is within 0.25
    check_failed_share(len(shards), [], 0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        check_failed_share(len(shards), [], 1.5)
