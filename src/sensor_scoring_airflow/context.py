"""What the DAG's tasks call: Airflow's context and params in, ``sensor_scoring.steps`` calls out.

Airflow is imported lazily, inside functions, so the DAG file parses fast and this module imports without
Airflow installed (the CLI and Batch image do not need it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sensor_scoring import layout, settings as config
from sensor_scoring.runs.scope import Scope, resolve_interval
from sensor_scoring_airflow.connections import open_storage

if TYPE_CHECKING:
    from sensor_scoring.contracts import Manifest
    from sensor_scoring.runs.rescoring import PurgedPolicy


def hour_for(context: Mapping[str, Any], params: Mapping[str, Any]) -> Scope:
    """The run's storage, containers, id and interval, from the task context and params."""
    with no_retry_on(ValueError):  # window params the schema cannot check alone (both or neither, end > start)
        start, end = resolve_interval(
            params.get("window_start"),
            params.get("window_end"),
            context.get("data_interval_start"),
            context.get("data_interval_end"),
            _run_after(context),
        )
        refuse_hours_before_start(start, _start_date(context))
    return Scope(
        storage=open_storage(),
        containers=config.current().containers,
        run_id=str(context["run_id"]),
        start=start,
        end=end,
    )


@contextmanager
def no_retry_on(*errors: type[BaseException]) -> Iterator[None]:
    """Fail the task at once, without its retries, on errors of the run's configuration (a bad window, an
    unknown model version): retrying cannot fix them, and the operator should hear at once. The message keeps
    the original error's type and text. A KeyError is a bug, not configuration, and keeps its retries."""
    try:
        yield
    except errors as exc:
        if isinstance(exc, KeyError):
            raise
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def purged_policy(params: Mapping[str, Any]) -> PurgedPolicy:
    """The ``purged_windows`` param for commit (``runs.rescoring``): keep, fail or drop committed rows whose
    windows a run no longer finds; a bad value fails at once (configuration, not chance)."""
    from sensor_scoring.runs.rescoring import DEFAULT_PURGED_POLICY, check_purged_policy

    with no_retry_on(ValueError):
        return check_purged_policy(str(params.get("purged_windows") or DEFAULT_PURGED_POLICY))


def refuse_hours_before_start(start: datetime, first_hour: datetime | None) -> None:
    """No run scores an hour before the DAG's start date (``SCORING_START_DATE``), whichever way it was made.

    Airflow gives a run whose logical date precedes the start date no task at all (and calls it a success), but
    a backfill run gets every task, and window params can name any hour: those fail here, in their first task.
    """
    if first_hour is not None and start < first_hour:
        raise ValueError(
            f"the run's hours start at {start.isoformat()}, before the DAG's start date {first_hour.isoformat()} "
            f"({config.START_DATE_ENV}): set {config.START_DATE_ENV} to {start:%Y-%m-%dT%H:%MZ} or earlier "
            "where the DAG is parsed, and run again"
        )


def _start_date(context: Mapping[str, Any]) -> datetime | None:
    dag = context.get("dag")
    return getattr(dag, "start_date", None) if dag is not None else None


def _run_after(context: Mapping[str, Any]) -> datetime | None:
    dag_run = context.get("dag_run")
    return getattr(dag_run, "run_after", None) if dag_run is not None else None


@contextmanager
def fail_without_retry_on_bad_data() -> Iterator[None]:
    """Errors about the input (a broken file structure, too many failing windows) fail the task without
    retries: the data will not change by retrying, and the failure alert should fire at once."""
    from sensor_scoring.contracts import DataError
    from sensor_scoring.windows import WindowSchemaError

    with no_retry_on(DataError, WindowSchemaError):
        yield


def asset_extra(manifests: list[Manifest]) -> dict[str, Any]:
    """The ``predictions`` asset event's extra: enough for a downstream DAG to find and judge what changed.

    Every manifest of a commit comes from the same run, so run, model version and subset are the first one's.
    """
    if not manifests:
        raise ValueError("a commit without manifests: the run has no hour")
    first, predictions = manifests[0], config.current().containers.predictions
    return {
        "run_id": first.run_id,
        "model_version": first.model_version,
        "subset": first.subset.to_dict() if first.subset else None,
        "hours": [m.hour.isoformat() for m in manifests],
        "partitions": [f"{predictions}/{layout.partition_prefix(m.hour)}" for m in manifests],
        "counts": {m.hour.isoformat(): m.counts.to_dict() for m in manifests},
    }
