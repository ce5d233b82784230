"""``ScoringDAG``: Airflow's ``DAG`` with a ``test()`` that survives the deadline alert, for ``dag.test()`` and
``airflow dags test`` alike (``airflow dags test`` calls ``dag.test()`` on the DAG it parsed).

It works around apache/airflow#73428 (fix proposed in apache/airflow#73430): ``DAG.test()`` schedules a copy of
the DAG made by an in-memory serialisation round trip, whose ``deadline`` holds the encoded alerts instead of
their ``deadline_alert`` ids, and when the run succeeds ``DagRun.update_state`` looks those dicts up with
``DeadlineAlertModel.get_by_id`` and crashes (``'dict' object has no attribute 'hex'``), turning a successful run
into exit code 1. For the duration of ``test()`` only, an encoded alert is decoded directly, as the proposed fix
does; ids (what the scheduler holds) take Airflow's own path. The scheduler, DAG processor and workers never call
``test()`` and are untouched. Remove the workaround once the installed Airflow has the fix.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from airflow.sdk import DAG

_NOT_GIVEN: Any = object()


class ScoringDAG(DAG):
    """The DAG class of ``sensor_scoring``: Airflow's own, but for :meth:`test`."""

    def test(self, run_after: datetime | None = None, logical_date: Any = _NOT_GIVEN, **kwargs: Any) -> Any:
        """``DAG.test()``, surviving the deadline alert when the run succeeds."""
        if logical_date is not _NOT_GIVEN:
            kwargs["logical_date"] = logical_date
        with deadline_alerts_decoded_in_place():
            return super().test(run_after=run_after, **kwargs)


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
            return cls(name=data.get("name"), reference=data["reference"], interval=data["interval"],
                       callback_def=data["callback"])
        return original(deadline_alert_id, **kwargs)

    DeadlineAlertModel.get_by_id = classmethod(get_by_id)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        DeadlineAlertModel.get_by_id = descriptor  # type: ignore[method-assign]
