"""Weekly retraining of the per-sensor models, with evaluation and a promotion gate; and a rollback form.

Wiring only: every task is a call into ``sensor_scoring.steps.training`` (through ``sensor_scoring_airflow.training``).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, CronDataIntervalTimetable, Param, get_current_context, task

from sensor_scoring import settings as config
from sensor_scoring.names import HOUR_PATTERN, SENSOR_NAME_PATTERN, VERSION_PATTERN
from sensor_scoring_airflow.alerts import ScoringAlertNotifier
from sensor_scoring_airflow.operators import ShardOperator

SETTINGS = config.current()
SUBSET_ITEMS = {"type": "string", "minLength": 1, "pattern": SENSOR_NAME_PATTERN}

DOC = """
### sensor_model_training

Every Monday 03:00 UTC (or from the *Trigger* form): train one OneClassSVM per (device, sensor) on the landed windows
of the range, evaluate the new version against `production` on the last `holdout_hours` of the range (the models
judged are fit before them), register it in container `models` with its lineage (its models refit on the whole
range, held-back hours included, unless `refit` is off), and move the `production` alias only if the promotion
policy holds.

**Tasks:** `gather` (reads the range as scoring does: same ownership, the great-expectations suite; quarantined
windows are not trained on) -> `train_shard` (mapped, one per `sensors_per_shard` sensors, each its own process,
`python -m sensor_scoring train-shard --spec <uri>`, on the `backend` param's backend: local or Azure Batch)
-> `evaluate` -> `register` -> `promote`.

**Models:** one StandardScaler + OneClassSVM per sensor (`nu`, `min_rows`), each flagging at most
`false_alarm_rate` of normal windows: fitted on the earlier 75% of its training windows, its threshold calibrated on
the latest 25% (split conformal, `docs/models.md`). A sensor with too few windows or a constant history gets no model
(the version's `skipped.parquet` says why). With `false_alarm_rate` empty and `threshold_mads` set, each flags
windows scoring that many robust deviations below its training windows' median score; both empty: `predict`.

**Evaluation:** flagged share of the held-back windows; where the `labels` container has a file for a held-back hour
(`YYYY/MM/DD/HH/labels.parquet`, columns device_id, tag, window_end, anomaly: see `docs/models.md`), precision,
recall and F1, per sensor and for the fleet, of the candidate and of production on the same windows. Stored in the
version's manifest (`lineage.evaluation`) and `evaluation.parquet`.

**Coverage:** a version never drops a sensor production scores. A run for a subset (`devices`/`tags`), or one in
which some sensors got no model, registers production's models for the other sensors beside the new ones (the
index's `carried_from`), so promoting it replaces only that subset; where production's models are of another
feature set they cannot be carried and the gate refuses the version, naming the sensors it would drop.

**Promotion:** the alias moves when every sensor production scores is still covered, the candidate flags between
`min_flagged_share` and `max_flagged_share` of the held-back windows and its F1 is at most `max_f1_drop` below
production's. Otherwise `promote` logs "not promoted
because ..." and sends a `model_not_promoted` alert (the run still succeeds: the version is registered, unpromoted).

**Triage:** `gather` failed with "no valid window to train on": the range, subset or `holdout_hours` selects nothing.
A *scheduled* week with no valid window skips its tasks instead (nothing trained, production unchanged, no alert).
`evaluate` failed with "no sensor had enough valid training windows": lower `min_rows` or widen the range.

**Rollback:** the DAG `sensor_model_rollback` (a form with one field), or `python -m sensor_scoring rollback
[--to VERSION]`. `python -m sensor_scoring lineage [VERSION]` shows where a version came from and who moved the alias.
"""

with DAG(
    dag_id="sensor_model_training",
    description="Weekly retraining of per-sensor OneClassSVMs, evaluated against production; promoted by policy",
    # a data interval of one week, ending at the run (plain cron gives zero-length intervals in Airflow 3)
    schedule=CronDataIntervalTimetable("0 3 * * 1", timezone="UTC"),
    start_date=SETTINGS.start_date,
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "sensor-analytics",
        "retries": SETTINGS.task_retries,
        "retry_delay": timedelta(seconds=SETTINGS.retry_delay_s),
        "execution_timeout": timedelta(hours=6),
        "on_failure_callback": [ScoringAlertNotifier("task_failed")],
    },
    on_failure_callback=[ScoringAlertNotifier("dag_run_failed")],
    params={
        "train_start": Param(
            None,
            type=["null", "string"],
            format="date-time",
            pattern=HOUR_PATTERN,
            title="Training range start (UTC)",
            description="Empty: the run's data interval (the week before a scheduled run; the last 7 days for a "
            "manual one). A whole hour.",
        ),
        "train_end": Param(
            None,
            type=["null", "string"],
            format="date-time",
            pattern=HOUR_PATTERN,
            title="Training range end (UTC)",
            description="Exclusive; the last holdout_hours before it are held back for evaluation.",
        ),
        "holdout_hours": Param(
            6,
            type="integer",
            minimum=1,
            maximum=168,
            title="Held-back hours",
            description="The gate judges the new models on them, fit before them (with Refit, the version then "
            "registers the same parameters fit on the whole range).",
        ),
        "devices": Param(
            [],
            type=["array", "null"],
            items=SUBSET_ITEMS,
            uniqueItems=True,
            title="Devices",
            description="Train only these device_ids (one per line). Empty: all.",
        ),
        "tags": Param(
            [],
            type=["array", "null"],
            items=SUBSET_ITEMS,
            uniqueItems=True,
            title="Sensor tags",
            description="Train only these tags (one per line). Empty: all. With devices: sensors matching both.",
        ),
        "nu": Param(
            0.02,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            title="nu",
            description="OneClassSVM nu: upper bound on the share of training windows flagged.",
        ),
        "false_alarm_rate": Param(
            0.02,
            type=["null", "number"],
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            title="False-alarm rate",
            description="The share of normal windows each model may flag: its threshold is calibrated on its latest "
            "training windows, held back from its fit (split conformal; docs/models.md). Empty: use Threshold "
            "(robust deviations) instead.",
        ),
        "threshold_mads": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            title="Threshold (robust deviations)",
            description="Each model flags only windows scoring this many robust deviations (1.4826 MAD) below "
            "the median score of its own training windows (at most scikit-learn's 0). Only with an empty "
            "False-alarm rate; both empty: predict's 0.",
        ),
        "adaptive_nu": Param(
            True,
            type="boolean",
            title="Adaptive nu",
            description="Each sensor's nu from its own training windows (at least nu): more where its history holds "
            "more far-out windows (the default, chosen by leave-one-source-out). The false-alarm rate is "
            "calibrated afterwards either way.",
        ),
        "refit": Param(
            True,
            type="boolean",
            title="Refit on the whole range",
            description="Register models fit again on every window of the range, held-back hours included, with the "
            "same parameters: the gate judges them fit before the held-back hours. Off: the version registers the "
            "judged models themselves, which never saw the range's last hours.",
        ),
        "features": Param(
            "window-v1",
            type="string",
            enum=["context-v1", "window-v1"],
            title="Feature set",
            description="The new version's model input (sensor_scoring.features): window-v1 is the window's own "
            "five aggregates (the default, chosen by leave-one-source-out); context-v1 adds the deviation from the "
            "sensor's trailing level.",
        ),
        "min_rows": Param(
            30, type="integer", minimum=2, title="Minimum windows", description="Sensors with fewer get no model."
        ),
        "sensors_per_shard": Param(
            100,
            type="integer",
            minimum=1,
            maximum=100_000,
            title="Sensors per shard",
            description="Sensors trained together in one mapped task (one process). Its memory grows with its "
            "windows: about 1.2 GiB for 1.4M (1000 sensors x 24 h, with Refit; 1 GiB without; 100 sensors x a week is "
            "1M).",
        ),
        "late_folders": Param(1, type="integer", minimum=0, maximum=24, title="Late folders"),
        "backend": Param(
            SETTINGS.backend,
            type="string",
            enum=list(config.BACKENDS),
            title="Backend",
            description="Where shards train: in the worker (local) or as Azure Batch tasks (the scorer image).",
        ),
        "version": Param(
            None,
            type=["null", "string"],
            pattern=VERSION_PATTERN,
            title="Version name",
            description="Empty: v<UTC timestamp>. Versions are immutable: a name already registered fails.",
        ),
        "promote": Param(
            True,
            type="boolean",
            title="Promote",
            description="Move production when the policy holds (off: register only).",
        ),
        "max_f1_drop": Param(
            0.0,
            type="number",
            minimum=0,
            maximum=1,
            title="Max F1 drop",
            description="Largest F1 loss against production on labelled held-back windows (0: no worse).",
        ),
        "min_flagged_share": Param(0.0, type="number", minimum=0, maximum=1, title="Min flagged share"),
        "max_flagged_share": Param(
            0.1,
            type="number",
            minimum=0,
            maximum=1,
            title="Max flagged share",
            description="Largest share of held-back windows the new version may flag.",
        ),
        "gate_false_alarm_rate": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            title="Gate: false-alarm rate",
            description="Share of held-back normal windows the new version may flag (plus 3 binomial errors). "
            "Empty: the false-alarm rate it was calibrated to. A short training range cannot hold that rate on "
            "hours at another time of day: raise it there, or train on whole days.",
        ),
    },
    tags=["training", "anomaly-detection"],
    doc_md=DOC,
) as dag:

    @task
    def gather(params: dict | None = None) -> list[dict]:
        """Reads and validates the range as scoring does; stages held-back windows and one input per shard."""
        from sensor_scoring.steps.training import gather as gather_windows
        from sensor_scoring_airflow import context as airflow_context, training

        context = get_current_context()
        run = training.training_run(context, params or {})
        with airflow_context.no_retry_on(ValueError), training.scheduled_runs_skip_when_nothing_landed(context):
            shards = gather_windows(
                run,
                holdout_hours=params["holdout_hours"],
                sensors_per_shard=params["sensors_per_shard"],
                nu=params["nu"],
                min_rows=params["min_rows"],
                threshold_mads=params.get("threshold_mads"),
                false_alarm_rate=params.get("false_alarm_rate"),
                features=params["features"],
                adaptive_nu=params["adaptive_nu"],
                refit=params["refit"],
                devices=params.get("devices"),
                tags=params.get("tags"),
                late_folders=params["late_folders"],
            )
        return [s.to_dict() for s in shards]

    @task
    def evaluate(results: list[dict], params: dict | None = None) -> dict:
        """Judges the candidate and production on the held-back windows (and labels); decides the policy."""
        from sensor_scoring.contracts import TrainingShardResult
        from sensor_scoring.steps.training import evaluate as judge, policy_of
        from sensor_scoring_airflow import context as airflow_context, training

        run = training.training_run(get_current_context(), params or {})
        shards = [TrainingShardResult.from_dict(r, source="XCom of train_shard") for r in results[:]]
        policy = policy_of(params)
        with airflow_context.no_retry_on(ValueError):
            verdict = judge(run, shards, policy)
        keys = ("candidate", "production", "production_version", "coverage", "promotable", "reasons")
        return {k: verdict[k] for k in keys}

    @task
    def register(results: list[dict], verdict: dict, params: dict | None = None) -> dict:
        """Registers the candidate (unpromoted) with its lineage: run, data range, parameters, evaluation."""
        from sensor_scoring.contracts import TrainingShardResult
        from sensor_scoring.steps.training import register as register_version
        from sensor_scoring_airflow import context as airflow_context, training

        run = training.training_run(get_current_context(), params or {})
        shards = [TrainingShardResult.from_dict(r, source="XCom of train_shard") for r in results[:]]
        with airflow_context.no_retry_on(ValueError, FileExistsError):
            return register_version(
                run,
                shards,
                version=training.version_name(params, run),
                params=training.model_params(params),
                data_range=training.data_range(run, params),
            )

    @task
    def promote(registered: dict, params: dict | None = None) -> dict:
        """Moves `production` to the new version if the policy held; else "not promoted because ..." and an alert."""
        from sensor_scoring.steps.training import promote_or_not
        from sensor_scoring_airflow import alerts, training

        context = get_current_context()
        run = training.training_run(context, params or {})
        outcome = promote_or_not(run, registered["version"], promote=params["promote"])
        print(f"{registered['version']}: {outcome['reason']}")
        if not outcome["promoted"]:
            alerts.send_alert(
                alerts.build_payload(
                    "model_not_promoted", context, error=outcome["reason"], version=registered["version"]
                )
            )
        return outcome

    # the scoring DAG's operator and backends, running the training command: local, or one Azure Batch task per shard
    results = (
        ShardOperator.partial(
            task_id="train_shard",
            backend="{{ params.backend }}",
            command="train-shard",
            map_index_template="{{ shard_label }}",
            retries=SETTINGS.task_retries + 1,
            doc_md="Trains one shard (`python -m sensor_scoring train-shard --spec <uri>`) in the worker or as an "
            "Azure Batch task.",
        )
        .expand(shard=gather())
        .output
    )
    verdict = evaluate(results)
    promote(register(results, verdict))


with DAG(
    dag_id="sensor_model_rollback",
    description="Point the production model alias back at an earlier version",
    schedule=None,
    start_date=SETTINGS.start_date,
    catchup=False,
    default_args={"owner": "sensor-analytics", "on_failure_callback": [ScoringAlertNotifier("task_failed")]},
    params={
        "to_version": Param(
            None,
            type=["null", "string"],
            pattern=VERSION_PATTERN,
            title="Roll back to",
            description="A registered version. Empty: one promotion back along the history (again: further back).",
        ),
    },
    tags=["training", "anomaly-detection"],
    doc_md="### sensor_model_rollback\n\nOne task: points `production` at `to_version`, or one promotion back along "
    "its history (a second rollback goes further back, never forward to the version just left; at the first "
    "promotion it refuses), and records the move in `aliases/production-history.json`. Same as "
    "`python -m sensor_scoring rollback`.",
) as rollback_dag:

    @task
    def rollback(params: dict | None = None) -> dict:
        """Moves the alias back; a version that is not registered fails at once, naming it."""
        from sensor_scoring import settings as config
        from sensor_scoring.models import promotion
        from sensor_scoring_airflow import context as airflow_context
        from sensor_scoring_airflow.connections import open_storage

        context = get_current_context()
        with airflow_context.no_retry_on(LookupError, ValueError):
            return promotion.rollback(
                open_storage(),
                config.current().containers.models,
                (params or {}).get("to_version") or None,
                by=f"rollback run {context['run_id']}",
            )

    rollback()
