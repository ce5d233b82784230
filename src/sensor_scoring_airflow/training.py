"""What the training DAG's tasks call: its context and params in, ``sensor_scoring.steps.training`` calls out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sensor_scoring import settings as config
from sensor_scoring.runs.scope import Scope
from sensor_scoring_airflow.connections import open_storage

#: A manual run without a range or data interval trains on the week before its last whole hour.
DEFAULT_RANGE = timedelta(days=7)


def training_range(context: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[datetime, datetime]:
    """[start, end) to train on: the ``train_start``/``train_end`` params, else the run's data interval (a week
    for scheduled runs), else the week up to the last whole hour. Bounds sit on whole hours, as scoring's do."""
    from sensor_scoring.runs.scope import resolve_interval

    start, end = params.get("train_start"), params.get("train_end")
    if bool(start) != bool(end):
        raise ValueError("give both train_start and train_end, or neither")
    if start and end:
        return resolve_interval(start, end, None, None)
    begin, finish = context.get("data_interval_start"), context.get("data_interval_end")
    if begin and finish and finish > begin:
        return resolve_interval(None, None, begin, finish)
    dag_run = context.get("dag_run")
    moment = getattr(dag_run, "run_after", None) or datetime.now(timezone.utc)
    last = moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return resolve_interval((last - DEFAULT_RANGE).isoformat(), last.isoformat(), None, None)


def training_run(context: Mapping[str, Any], params: Mapping[str, Any]) -> Scope:
    """The run's storage, containers, id and training range (the ``Scope`` record every step takes)."""
    from sensor_scoring_airflow.context import no_retry_on

    with no_retry_on(ValueError):
        start, end = training_range(context, params)
    return Scope(
        storage=open_storage(),
        containers=config.current().containers,
        run_id=str(context["run_id"]),
        start=start,
        end=end,
    )


def version_name(params: Mapping[str, Any], run: Scope) -> str:
    """The ``version`` param, else ``v<UTC now>``; a name must be usable as a blob folder."""
    from sensor_scoring.models import registry

    name = params.get("version") or registry.new_version_name()
    if "/" in name or name.startswith("."):
        raise ValueError(f"model version {name!r}: no '/' and no leading '.'")
    return str(name)


def model_params(params: Mapping[str, Any]) -> dict[str, object]:
    """The parameters recorded in the version's manifest (``steps.training.model_params``: the CLI's too)."""
    from sensor_scoring.steps import training

    return training.model_params(params)


def data_range(run: Scope, params: Mapping[str, Any]) -> dict[str, object]:
    """The lineage's data range (``steps.training.data_range``)."""
    from sensor_scoring.steps import training

    return training.data_range(run, params)


@contextmanager
def scheduled_runs_skip_when_nothing_landed(context: Mapping[str, Any]) -> Iterator[None]:
    """A scheduled week with no valid window trains nothing and leaves production alone: the run skips its tasks
    (no failure alert; the scoring DAG already alerts hour by hour when windows stop landing). A run someone
    triggered with a range that holds nothing still fails, so they hear their range selected nothing."""
    from sensor_scoring.steps.training import NoTrainingData

    try:
        yield
    except NoTrainingData as exc:
        run_type = getattr(context.get("dag_run"), "run_type", None)
        if str(getattr(run_type, "value", run_type)).lower() != "scheduled":
            raise
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"{exc}. Nothing trained; production unchanged.") from exc
