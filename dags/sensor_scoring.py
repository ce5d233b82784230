"""Hourly scoring of per-sensor anomaly models. Wiring only: every task is a call into ``sensor_scoring.steps``."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import (
    Asset,
    AsyncCallback,
    CronDataIntervalTimetable,
    DeadlineAlert,
    DeadlineReference,
    Param,
    PokeReturnValue,
    get_current_context,
    task,
)

from sensor_scoring import settings as config
from sensor_scoring.names import HOUR_PATTERN, SENSOR_NAME_PATTERN, VERSION_PATTERN
from sensor_scoring_airflow.alerts import EmptyRunNotifier, ScoringAlertNotifier
from sensor_scoring_airflow.dag import ScoringDAG
from sensor_scoring_airflow.operators import ShardOperator

#: Updated once per committed run; the event's extra names the hours, run, model version and counts.
PREDICTIONS = Asset(
    name="predictions",
    uri="x-scoring://predictions",
    extra={"what": "hourly Parquet partitions of container predictions, date=YYYY-MM-DD/hour=HH/"},
)
# Read at parse time so a test or a deployment can fail fast or wait longer without editing the DAG; a bad value
# fails the parse naming its variable. Every setting, its default and meaning: sensor_scoring.settings.
SETTINGS = config.current()
RETRIES = SETTINGS.task_retries
RETRY_DELAY = timedelta(seconds=SETTINGS.retry_delay_s)
DEADLINE_MINUTES = SETTINGS.deadline_minutes  # 0 turns the deadline alert off
START_DATE = SETTINGS.start_date  # the first hour scored
# names, never paths: the patterns of sensor_scoring.names (the package checks them again)
SUBSET_ITEMS = {"type": "string", "minLength": 1, "pattern": SENSOR_NAME_PATTERN}

DOC = """
### sensor_scoring

Every hour: read the 1-minute windows that Stream Analytics landed in container `windows`, check them,
score each (device, sensor) with its own OneClassSVM, and replace the hour's Parquet partition in container
`predictions` (`date=YYYY-MM-DD/hour=HH/`). Bad windows go to container `quarantine` with a reason.

**Owner:** sensor-analytics team. **Interval:** one hour, `[data_interval_start, data_interval_end)`,
windows selected by `window_end`.

**Tasks:** `wait_for_windows` (reschedules, holds no slot) -> `plan_shards` (lists and groups the files, groups the
sensors into shards; `list_reads` and `list_shards` hand on its two lists) -> `read_windows` (mapped, one per group
of about 64 MiB of files: keeps the windows the hour owns and routes each to its sensor's shard) -> `score_shard`
(mapped, one per shard: sized to the work, or of `sensors_per_shard` sensors; named by its sensors: validates, adds
features, scores) -> `commit` -> `model_health` (per sensor: anomaly rate and score shift against training; the
*Sensor fleet* page in the navigation).
No task holds the whole hour: each works on a group of files or a shard of sensors.
With `max_failed_shard_share` above 0, `commit` also runs when shards failed: the hour is committed `partial`.

**Triage**
- `wait_for_windows` timed out: Stream Analytics stopped writing. Check the job and the `windows` folders.
- `plan_shards` says no model alias: train and promote (`python -m sensor_scoring train ... --promote`).
- a `score_shard` failed: its log shows the shard command and output; clearing it re-runs only that shard.
- `commit` failed without retries, "above max_quarantine_share": too many windows failed validation; the
  message names the counts per reason, the report (`az://staging/runs/<run>/validation.json`) and the failing
  rows; fix the input or re-run with a higher `max_quarantine_share`.
- `read_windows` failed without retries, "missing required column" / "column X cannot be read": the named file
  breaks the window contract. Rules and reasons: `docs/faults.md`.
- Corrupt or truncated files do not fail the run: each is quarantined whole and listed in the manifest's
  `quarantined_files` (copy under `quarantine/.../files/`); the rest of the hour is scored.
- An hour with no windows commits an empty partition with manifest `status: "empty"` and a warning in the
  `commit` log; it does not fail (the sensor already waits for landed files).
- Late windows (after the hour was committed): re-run or backfill the hour; its partition is replaced.
- `commit` refused the accounting: a shard output is missing or stale; clear the run to redo the hour.
- Re-running or backfilling an hour is safe: its partition is replaced, one row per window.
- Hours before the start date (`SCORING_START_DATE`, default 2000-01-01T00:00Z) are never scored: `airflow dags
  test` and `airflow dags trigger` refuse such a logical date, a backfill run fails in `wait_for_windows` naming the
  setting, and a UI/REST trigger with such a logical date runs no task and alerts `dag_run_empty`. Set
  `SCORING_START_DATE` earlier where the DAG is parsed (scheduler, DAG processor, workers).
- Alerts: a task that fails after its last retry, a failed run, a run not finished `SCORING_DEADLINE_MINUTES`
  (default 90) after its hour ended, and (if `SCORING_ANOMALY_ALERT_THRESHOLD` is set) an hour with more anomalies
  go to the `scoring_smtp` email and `scoring_alert_webhook` connections. The message links the task's log.

**Rescoring:** *Trigger*, then the run parameters: set `window_start`/`window_end` (whole hours), optionally `devices`
and/or `tags` and a `model_version`. Only those sensors' rows of each hour are replaced; the partition's
`_manifest.json` lists every rescoring under `rescored`. Names that match no landed sensor fail the run (naming
the closest); some names not found only warn. Committed rows whose windows are gone (purged) are kept unless
`purged_windows` says `fail` or `drop`. **Backfill:** *Backfill* in the DAG's menu, or
`airflow backfill create --dag-id sensor_scoring --from-date ... --to-date ...` (see `docs/operating.md`).

**Downstream:** the asset `predictions` gets an event per committed run (extra: hours, run, model version,
counts); schedule a DAG on it with `schedule=[Asset(name="predictions", uri="x-scoring://predictions")]`.
"""

# ScoringDAG: Airflow's DAG with a test() (dag.test(), `airflow dags test`) that refuses logical dates before the
# start date and works around apache/airflow#73428 (the deadline alert crashing a successful test run).
with ScoringDAG(
    dag_id="sensor_scoring",
    description="Hourly per-sensor anomaly scoring: blob windows -> OneClassSVM -> Parquet predictions",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    # Airflow creates no task instance for a run whose logical date precedes its tasks' start date and reports
    # that run successful: a run of such an hour is refused (`airflow dags test`, ScoringDAG.test; `airflow dags
    # trigger`, which checks default_args' start_date), or fails in its first task (backfills, which get every
    # task; window params), or alerts as dag_run_empty (a REST/UI trigger). See docs/operating.md.
    start_date=START_DATE,
    catchup=False,
    max_active_runs=4,
    default_args={
        "owner": "sensor-analytics",
        "start_date": START_DATE,
        "retries": RETRIES,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=30),
        "on_failure_callback": [ScoringAlertNotifier("task_failed")],  # after the last retry only
    },
    on_failure_callback=[ScoringAlertNotifier("dag_run_failed")],
    on_success_callback=[EmptyRunNotifier()],  # silent unless a run "succeeded" without running a task
    # logical date = interval start, so the deadline is interval end + SCORING_DEADLINE_MINUTES. (Not queued_at:
    # Airflow 3.3.2 fails to clear a run with an open queued_at deadline, apache/airflow#70370.) Runs queued
    # after their deadline (backfills, reruns of old hours) are not alerted: see
    # sensor_scoring_airflow.alerts.deadline_missed.
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
        interval=timedelta(hours=1, minutes=DEADLINE_MINUTES),
        callback=AsyncCallback("sensor_scoring_airflow.alerts.deadline_missed"),
        name="hour not scored in time",
    )
    if DEADLINE_MINUTES
    else None,
    params={
        "sensors_per_shard": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=100_000,
            title="Sensors per shard",
            description="Sensors scored together in one mapped task; 1 gives one task per sensor. Empty: shards "
            "sized to the work (windows x support vectors, at most 64 tasks).",
        ),
        "backend": Param(
            SETTINGS.backend,
            type="string",
            enum=list(config.BACKENDS),
            title="Backend",
            description="Where shards run: in the worker (local) or as Azure Batch tasks.",
        ),
        "model_version": Param(
            "production",
            type="string",
            minLength=1,
            pattern=VERSION_PATTERN,
            title="Model version",
            description="A model version or alias; the hourly runs use the production alias.",
        ),
        "window_start": Param(
            None,
            type=["null", "string"],
            format="date-time",
            pattern=HOUR_PATTERN,
            title="Window start (UTC)",
            description="Empty: the run's data interval. A whole hour, e.g. 2026-11-25T16:00:00Z; "
            "with window_end, several hours are rescored in one run.",
        ),
        "window_end": Param(
            None,
            type=["null", "string"],
            format="date-time",
            pattern=HOUR_PATTERN,
            title="Window end (UTC)",
            description="Empty: the run's data interval. Exclusive; a whole hour after window_start.",
        ),
        "devices": Param(
            [],
            type=["array", "null"],
            items=SUBSET_ITEMS,
            uniqueItems=True,
            title="Devices",
            description="Rescore only these device_ids (one per line). Empty: all devices. Only the "
            "chosen sensors' rows are replaced; every other row of the hour stays.",
        ),
        "tags": Param(
            [],
            type=["array", "null"],
            items=SUBSET_ITEMS,
            uniqueItems=True,
            title="Sensor tags",
            description="Rescore only these tags (one per line). Empty: all tags. With devices: "
            "the sensors that match both.",
        ),
        "late_folders": Param(
            1,
            type="integer",
            minimum=0,
            maximum=24,
            title="Late folders",
            description="Hour folders after the interval also searched for late windows (at least "
            "LATE_HORIZON are always read; a window's owner never depends on this value).",
        ),
        "settle_minutes": Param(
            5,
            type="number",
            minimum=0,
            title="Settle minutes",
            description="With no later folder yet, the hour counts as landed after this quiet time.",
        ),
        "max_quarantine_share": Param(
            0.1,
            type="number",
            minimum=0,
            maximum=1,
            title="Max quarantine share",
            description="Per hour, the largest share of landed windows that may fail "
            "validation; above it the run fails (no retries) and nothing is "
            "committed. 1 never fails.",
        ),
        # the values of sensor_scoring.runs.rescoring.PURGED_POLICIES (not imported here: the DAG parses light)
        "purged_windows": Param(
            "keep",
            type="string",
            enum=["keep", "fail", "drop"],
            title="Committed rows whose windows are gone",
            description="For a re-run or rescoring that no longer finds windows an hour has committed (a blob "
            "lifecycle rule purged them): keep carries those predictions and quarantined rows over as committed "
            "and counts them in the manifest's purged; fail commits nothing and names each hour and its counts; "
            "drop removes them, shrinking the hour (the explicit request).",
        ),
        "max_failed_shard_share": Param(
            0,
            type="number",
            minimum=0,
            maximum=1,
            title="Max failed shard share",
            description="The largest share of shards that may fail after their last retry and the hour still "
            "commits, as partial: their windows quarantined as shard_failed, an alert sent; clearing the failed "
            "shard or re-running the hour fills it in. 0: any failed shard fails the run, nothing committed.",
        ),
    },
    tags=["scoring", "anomaly-detection", "azure"],
    doc_md=DOC,
) as dag:

    @task.sensor(poke_interval=60, timeout=timedelta(hours=3), mode="reschedule")
    def wait_for_windows(params: dict | None = None) -> PokeReturnValue:
        """Succeeds once the interval's windows have landed; reschedules (no slot held) until then.

        **Triage:** timed out (3 h) = Stream Analytics stopped writing to container `windows`: check the job and
        the hour's folders `YYYY/MM/DD/HH/`. For a backfill or rescoring of past hours it succeeds at once.
        """
        from sensor_scoring.steps.landed import windows_landed
        from sensor_scoring_airflow import context as airflow_context

        hour = airflow_context.hour_for(get_current_context(), params or {})
        done, why = windows_landed(hour, late_folders=params["late_folders"], settle_minutes=params["settle_minutes"])
        print(why)
        return PokeReturnValue(is_done=done)

    @task(multiple_outputs=True)
    def plan_shards(params: dict | None = None) -> dict:
        """Lists the hour's files and groups them for `read_windows`, and groups the model version's sensors into
        shards for `score_shard`: nothing is read yet.

        **Triage:** "no model alias or version named ..." = the `model_version` param names nothing in container
        `models`: fix the conf, or train and promote (`python -m sensor_scoring train ... --promote`). Sensors without
        a model are quarantined as `no_model`, not failed.
        """
        from sensor_scoring.steps.plan import plan_shards as plan
        from sensor_scoring_airflow import context as airflow_context

        hour = airflow_context.hour_for(get_current_context(), params or {})
        with airflow_context.no_retry_on(
            LookupError, ValueError
        ):  # a wrong version or name does not appear by retrying
            planned = plan(
                hour,
                model_version=params["model_version"],
                sensors_per_shard=params["sensors_per_shard"],
                late_folders=params["late_folders"],
                devices=params.get("devices"),
                tags=params.get("tags"),
            )
        return planned.to_dict()

    # also when no shard was mapped: quarantined rows are committed too; all_done, because a partial hour commits
    # with failed shards: the task itself refuses a failed upstream (sensor_scoring_airflow.partial)
    # one commit at a time across runs: a backfill and a rescoring of the same hour never interleave
    @task(trigger_rule="all_done", outlets=[PREDICTIONS], max_active_tis_per_dag=1)
    def commit(reads: list[dict] | None = None, results: list[dict] | None = None, params: dict | None = None) -> dict:
        """Sums the read tasks and shards into the hour's validation report, refuses the hour above
        `max_quarantine_share`, checks landed = scored + quarantined + duplicates, then swaps in the hour's partition.

        One blob upload per partition, then `_manifest.json` (counts for the whole partition; `rescored` lists
        subset rescorings). A subset rescoring keeps every other row of the hour as it was. Emits an event on the
        asset `predictions` and, above `SCORING_ANOMALY_ALERT_THRESHOLD`, an `anomalies_high` alert.
        **Triage:** "refusing to commit" = a shard output is missing or stale: clear the run to redo the hour.
        "shard(s) failed ... nothing committed": more shards failed than `max_failed_shard_share`; a `partial` hour:
        clear the failed `score_shard` (with downstream) or re-run the hour. "have no landed window in this run
        (purged_windows=fail)": the hour's windows are gone (a lifecycle rule); re-run with `purged_windows` keep or
        drop. Committed rows whose windows are gone are kept by default: the manifest's `purged` counts them.
        "above max_quarantine_share": too many windows failed validation (see the DAG's triage).
        """
        from sensor_scoring.contracts import ReadResult, ShardResult
        from sensor_scoring.runs.rescoring import CommittedRowsMissing
        from sensor_scoring.steps.commit import commit as commit_hours
        from sensor_scoring_airflow import alerts, context as airflow_context, partial

        context = get_current_context()
        failed = partial.shards_to_give_up(context, (params or {}).get("max_failed_shard_share", 0))
        hour = airflow_context.hour_for(context, params or {})
        # one slice read of the mapped results (iterating would probe past the end, logging a 404)
        read_results = [ReadResult.from_dict(r, source="XCom of read_windows") for r in (reads[:] if reads else [])]
        shards = [ShardResult.from_dict(r, source="XCom of score_shard") for r in (results[:] if results else [])]
        policy = airflow_context.purged_policy(params or {})
        # purged_windows=fail, too many failing windows, a subset matching nothing: retrying finds no more
        with airflow_context.no_retry_on(CommittedRowsMissing), airflow_context.fail_without_retry_on_bad_data():
            manifests = commit_hours(
                hour,
                read_results,
                shards,
                failed_shards=failed,
                purged_windows=policy,
                max_quarantine_share=(params or {}).get("max_quarantine_share", 0.1),
            )
        context["outlet_events"][PREDICTIONS].extra = airflow_context.asset_extra(manifests)
        alerts.check_anomalies(context, manifests)
        partial.alert_partial(context, manifests, failed)
        return {"hours": [m.hour.isoformat() for m in manifests], "counts": [m.counts.to_dict() for m in manifests]}

    # Airflow maps only over a task's return value, never over one key of multiple_outputs ("cannot map over XCom
    # with custom key"): these two hand each list of plan_shards on as a return value, and hold nothing else.
    @task
    def list_reads(plan: dict) -> list[dict]:
        """The read groups of `plan_shards`, as the list `read_windows` is mapped over."""
        return plan["reads"]

    @task
    def list_shards(plan: dict) -> list[dict]:
        """The shards of `plan_shards`, as the list `score_shard` is mapped over."""
        return plan["shards"]

    plan = plan_shards()
    # Both mapped kinds run where the backend says (in the worker, or as Azure Batch tasks, deferring meanwhile);
    # each instance is named by what it holds.
    reading = ShardOperator.partial(
        task_id="read_windows",
        command="read-windows",
        backend="{{ params.backend }}",
        map_index_template="{{ shard_label }}",
        retries=RETRIES + 1,  # one more than the other tasks: a lost or preempted node is worth a try
        doc_md="Reads one group of the hour's landed files and routes each window to its shard by sensor "
        "(`python -m sensor_scoring read-windows --spec <uri>`). **Triage:** an error names the file and column "
        "that could not be read (no retries: the input is wrong); corrupt files do not fail it, they are "
        "quarantined whole at commit.",
    ).expand(shard=list_reads(plan))
    scoring = ShardOperator.partial(
        task_id="score_shard",
        backend="{{ params.backend }}",
        map_index_template="{{ shard_label }}",
        retries=RETRIES + 1,
        doc_md="Checks one shard's windows with the great-expectations suite, adds their features and scores them "
        "(`python -m sensor_scoring score-shard --spec <uri>`) in the worker or as an Azure Batch task.",
    ).expand(shard=list_shards(plan))
    wait_for_windows() >> plan
    reading >> scoring
    committed = commit(reading.output, scoring.output)

    @task
    def model_health(committed: dict, params: dict | None = None) -> dict:
        """Per sensor of each committed hour: anomaly rate vs training, PSI of scores vs training, quarantine share,
        written to container `health`; a `model_drift` alert lists the sensors drifting `SCORING_DRIFT_HOURS` hours
        in a row, a `models_lost` alert the sensors that had a model and were quarantined `no_model`.
        **Triage:** "no training statistics" in the log = the model version was registered without them (retrain)."""
        from sensor_scoring.steps.health import model_health as health
        from sensor_scoring_airflow import alerts, context as airflow_context

        context = get_current_context()
        manifests = health(airflow_context.hour_for(context, params or {}))
        alerts.check_drift(context, manifests)
        alerts.check_models_lost(context, manifests)
        return {"hours": [m.hour.isoformat() for m in manifests], "alerting": [m.alerting for m in manifests]}

    model_health(committed)
