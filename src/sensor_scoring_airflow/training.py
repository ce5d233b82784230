"""What the training DAG's tasks call: its context and params in, ``sensor_scoring.steps.training`` calls out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sensor_scoring import settings as config
from sensor_scoring.steps.interval import Hour
from sensor_scoring_airflow.connections import open_storage

#: A manual run without a range or data interval trains on the week before its last whole hour.
DEFAULT_RANGE = timedelta(days=7)


def training_range(context: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[datetime, datetime]:
    """[start, end) to train on: the ``train_start``/``train_end`` params, else the run's data interval (a week
    for scheduled runs), else the week up to the last whole hour. Bounds sit on whole hours, as scoring's do."""
    from sensor_scoring.steps.interval import resolve_interval

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


def training_run(context: Mapping[str, Any], params: Mapping[str, Any]) -> Hour:
    """The run's storage, containers, id and training range (the ``Hour`` record every step takes)."""
    from sensor_scoring_airflow.context import no_retry_on

    with no_retry_on(ValueError):
        start, end = training_range(context, params)
    return Hour(
        storage=open_storage(),
        containers=config.current().containers,
        run_id=str(context["run_id"]),
        start=start,
        end=end,
    )


def version_name(params: Mapping[str, Any], run: Hour) -> str:
    """The ``version`` param, else ``v<UTC now>``; a name must be usable as a blob folder."""
    from sensor_scoring.models import registry

    name = params.get("version") or registry.new_version_name()
    if "/" in name or name.startswith("."):
        raise ValueError(f"model version {name!r}: no '/' and no leading '.'")
    return str(name)


def model_params(params: Mapping[str, Any]) -> dict[str, object]:
    """The parameters recorded in the version's manifest (as the CLI's ``train`` records them)."""
    mads, rate = params.get("threshold_mads"), params.get("false_alarm_rate")
    return {
        "false_alarm_rate": None if rate is None else float(rate),
        "threshold_mads": None if mads is None else float(mads),
        "nu": float(params["nu"]),
        "adaptive_nu": bool(params.get("adaptive_nu", False)),
        "features": str(params.get("features", "window-v1")),
        "gamma": "scale",
        "kernel": "rbf",
        "min_rows": int(params["min_rows"]),
        "scaler": "StandardScaler",
    }


def data_range(run: Hour, params: Mapping[str, Any]) -> dict[str, object]:
    """The lineage's data range: the whole range, the held-back hours, the subset."""
    holdout = int(params["holdout_hours"])
    return {
        "start": run.start.isoformat(),
        "end": run.end.isoformat(),
        "held_back_from": (run.end - timedelta(hours=holdout)).isoformat(),
        "devices": list(params.get("devices") or []),
        "tags": list(params.get("tags") or []),
        "late_folders": int(params["late_folders"]),
        "windows_container": run.containers.windows,
    }


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
