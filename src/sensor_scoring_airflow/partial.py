"""The commit task's view of its upstream: which mapped shards failed, and whether the hour may commit without them.

commit runs with ``trigger_rule="all_done"`` so that a partial hour can commit (DAG param ``max_failed_shard_share``).
Airflow has no rule "run when at most X% of a mapped task failed", so the task decides at its start:

- ``plan_shards``, ``plan_reads`` or any ``read_windows`` did not succeed: nothing to commit, fail at once (no
  retries), and no alert of its own: the failed task alerted already (:class:`UpstreamNotCommitted`).
- some ``score_shard`` instances failed after their last retry: their share against ``max_failed_shard_share``
  (0, the default, refuses any, as ``none_failed`` did); within it, the hour commits as ``partial``.

Which instances failed comes from the execution API (``RuntimeTaskInstance.get_task_states``, answering
``{run_id: {"score_shard_<map_index>": state}}``, see airflow/api_fastapi/execution_api/routes/task_instances.py
``get_task_instance_states``), matched to the shards by map index in ``plan_shards``' XCom (the list mapped over).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    from sensor_scoring.contracts import Manifest, PlannedShard

#: A mapped shard in one of these states after the run's other tasks finished did not score.
FAILED_STATES = ("failed", "upstream_failed")
#: Tasks that must have succeeded for commit to have anything to commit.
REQUIRED = ("plan_shards", "plan_reads")
#: Every instance of it must have succeeded too: a shard of an unread group would miss windows.
READ_TASK = "read_windows"
SHARD_TASK = "score_shard"


class UpstreamNotCommitted(AirflowFailException):
    """commit refuses the run because of an upstream failure that has been alerted already: no retry, no alert."""

    alerted_upstream = True


def task_states(context: Mapping[str, Any]) -> dict[str, str]:
    """``task_id`` or ``task_id_<map_index>`` -> state, for the context's run."""
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=[*REQUIRED, READ_TASK, SHARD_TASK])
    return {key: str(state) for key, state in (states.get(ti.run_id) or {}).items()}


def shards_to_give_up(context: Mapping[str, Any], max_share: float) -> list[PlannedShard]:
    """The planned shards that failed, once checked that the hour may commit without them; raises otherwise."""
    from sensor_scoring.contracts import PlannedShard
    from sensor_scoring.runs.partial import TooManyFailedShards, check_failed_share

    states = task_states(context)
    for task_id in REQUIRED:
        if states.get(task_id) != "success":
            raise UpstreamNotCommitted(f"{task_id} is {states.get(task_id)}: nothing to commit")
    reads = len(context["ti"].xcom_pull(task_ids="plan_reads") or [])
    unread = [i for i in range(reads) if states.get(f"{READ_TASK}_{i}", states.get(READ_TASK)) != "success"]
    if unread:
        named = ", ".join(str(i) for i in unread[:10]) + (" ..." if len(unread) > 10 else "")
        raise UpstreamNotCommitted(
            f"read_windows {named} did not succeed: the hour was not read whole, nothing to commit"
        )
    planned = [
        PlannedShard.from_dict(s, source="XCom of plan_shards")
        for s in (context["ti"].xcom_pull(task_ids="plan_shards") or [])
    ]
    failed = [s for i, s in enumerate(planned) if states.get(f"{SHARD_TASK}_{i}") in FAILED_STATES]
    try:
        check_failed_share(len(planned), failed, max_share)
    except TooManyFailedShards as exc:
        raise UpstreamNotCommitted(str(exc)) from exc
    return failed


def alert_partial(context: Mapping[str, Any], manifests: Sequence[Manifest], failed: Sequence[PlannedShard]) -> None:
    """One ``partial_hour`` alert for a run committed without some of its shards (none when all scored)."""
    if not failed:
        return
    from sensor_scoring.contracts import SHARD_FAILED
    from sensor_scoring_airflow import alerts

    partial = [m for m in manifests if m.status == "partial"]
    windows = sum(m.quarantine_reasons.get(SHARD_FAILED, 0) for m in partial)
    payload = alerts.build_payload(
        "partial_hour",
        context,
        error=f"{len(failed)} shard(s) failed after their last retry ({', '.join(s.label for s in failed)}); "
        f"{windows} window(s) quarantined as {SHARD_FAILED} in hour(s) "
        f"{', '.join(m.hour.isoformat() for m in partial)}. Clear the failed score_shard instance(s) with "
        f"downstream, or re-run the hour, to score them",
        hours=[m.hour.isoformat() for m in partial],
        failed_shards=[s.shard for s in failed],
        shard_failed_windows=windows,
    )
    alerts.send_alert(payload)
