"""``ScoringDAG``: Airflow's ``DAG`` with an honest ``test()``, for ``dag.test()`` and ``airflow dags test`` alike.

Both ways of running the DAG in one process (``airflow dags test`` calls ``dag.test()`` on the DAG it parsed) go
through :meth:`ScoringDAG.test`, which adds two things to Airflow 3.3.2's own:

- it refuses a logical date before the DAG's start date (``SCORING_START_DATE``). Airflow would create that run
  without a single task instance (``DagRun.verify_integrity`` skips tasks whose ``start_date`` is after the
  logical date) and mark it successful at once: a "success" that scored nothing.
- it works around apache/airflow#73428 (fix proposed in apache/airflow#73430): ``DAG.test()`` schedules a copy
  of the DAG made by an in-memory serialisation round trip, whose ``deadline`` holds the encoded alerts instead
  of their ``deadline_alert`` ids, and when the run succeeds ``DagRun.update_state`` looks those dicts up with
  ``DeadlineAlertModel.get_by_id`` and crashes (``'dict' object has no attribute 'hex'``), turning a successful
  run into exit code 1. For the duration of ``test()`` only, an encoded alert is decoded directly, as the
  proposed fix does; ids (what the scheduler holds) take Airflow's own path. The scheduler, DAG processor and
  workers never call ``test()`` and are untouched. Remove the workaround once the installed Airflow has the fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import DAG

from sensor_scoring.settings import START_DATE_ENV

_NOT_GIVEN: Any = object()


class ScoringDAG(DAG):
    """The DAG class of ``sensor_scoring``: Airflow's own, but for :meth:`test`."""

    def test(self, run_after: datetime | None = None, logical_date: Any = _NOT_GIVEN, *args: Any, **kwargs: Any) -> Any:
        """``DAG.test()``; refuses a logical date before the start date, and survives the deadline alert.

        Everything after ``logical_date`` is passed on by keyword (``*args`` only keeps the signature Airflow's).
        """
        if args:
            raise TypeError(f"{type(self).__name__}.test() takes run_conf and the later arguments by keyword only")
        if logical_date is not _NOT_GIVEN:
            kwargs["logical_date"] = logical_date
        # no logical date given: Airflow uses the current time; None: a run without one, which has all its tasks
        refuse_before_start(self, datetime.now(timezone.utc) if logical_date is _NOT_GIVEN else logical_date)
        with deadline_alerts_decoded_in_place():
            return super().test(run_after=run_after, **kwargs)


def refuse_before_start(dag: DAG, logical_date: datetime | None) -> None:
    """Raise a ``ValueError`` when Airflow would create a run at ``logical_date`` without any task instance."""
    if logical_date is None or dag.start_date is None:
        return
    moment = logical_date if logical_date.tzinfo else logical_date.replace(tzinfo=timezone.utc)
    if moment < dag.start_date:
        # the hour a run at this logical date scores: the one that ended at or before it
        hour = moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        raise ValueError(
            f"logical date {moment.isoformat()} is before the start date {dag.start_date.isoformat()} of DAG "
            f"{dag.dag_id!r} ({START_DATE_ENV}): Airflow would create that run without any task and report it "
            f"successful, scoring nothing. To score the hour {hour:%Y-%m-%dT%H:%MZ}, set "
            f"{START_DATE_ENV}={hour:%Y-%m-%dT%H:%MZ} (or earlier) and run again."
        )


@contextmanager
def deadline_alerts_decoded_in_place() -> Iterator[None]:
    """While active, ``DeadlineAlertModel.get_by_id`` accepts an encoded alert (a dict) besides an id.

    apache/airflow#73428: only ``DAG.test()`` hands it a dict, from its in-memory copy of the DAG. The dict is
    turned into an unsaved ``DeadlineAlert`` row with the same reference, interval and callback, which is all
    ``DagRun.update_state`` reads (its ``reference_class``, to prune the succeeded run's deadlines).
    """
    from airflow.models.deadline_alert import DeadlineAlert as DeadlineAlertModel

    descriptor = DeadlineAlertModel.__dict__["get_by_id"]  # Airflow's classmethod, restored afterwards
    original = DeadlineAlertModel.get_by_id  # bound to the class, with Airflow's provide_session

    def get_by_id(cls: type[DeadlineAlertModel], deadline_alert_id: Any, **kwargs: Any) -> DeadlineAlertModel:
        if isinstance(deadline_alert_id, Mapping):
            data = deadline_alert_id.get("__var", deadline_alert_id)
            return cls(
                name=data.get("name"),
                reference=data["reference"],
                interval=data["interval"],
                callback_def=data["callback"],
            )
        return original(deadline_alert_id, **kwargs)

    DeadlineAlertModel.get_by_id = classmethod(get_by_id)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        DeadlineAlertModel.get_by_id = descriptor  # type: ignore[method-assign]
