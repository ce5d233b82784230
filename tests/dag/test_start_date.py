"""``SCORING_START_DATE`` and what becomes of a run of an hour before it, in-process (the CLI paths are in
test_airflow_cli.py).

Airflow 3.3.2 creates a non-backfill run whose logical date precedes the DAG's start date without any task
instance and marks it successful. Every way such a run can come about must fail or alert instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sensor_scoring import settings as config
from sensor_scoring_airflow import context as airflow_context
from tests.conftest import REPO

H = timedelta(hours=1)
LATE_START = "2026-06-01T00:00Z"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", datetime(2000, 1, 1, tzinfo=timezone.utc)),
        ("2018-08-28", datetime(2018, 8, 28, tzinfo=timezone.utc)),
        ("2018-08-28T23:00Z", datetime(2018, 8, 28, 23, tzinfo=timezone.utc)),
        ("2018-08-29T01:00:00+02:00", datetime(2018, 8, 28, 23, tzinfo=timezone.utc)),
        ("2018-08-28 23:00", datetime(2018, 8, 28, 23, tzinfo=timezone.utc)),
    ],
)
def test_start_date_setting(monkeypatch, raw, expected):
    monkeypatch.setenv(config.START_DATE_ENV, raw)
    assert config.start_date() == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("soon", "SCORING_START_DATE='soon' is not an ISO date or time"),
        ("2018-13-01", "is not an ISO date or time"),
        ("2018-08-28T23:30Z", "SCORING_START_DATE='2018-08-28T23:30Z' is not on a whole UTC hour"),
    ],
)
def test_bad_start_dates_fail_the_parse_naming_the_variable(monkeypatch, raw, message, airflow_db):
    monkeypatch.setenv(config.START_DATE_ENV, raw)
    with pytest.raises(ValueError, match=message):
        config.start_date()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    errors = list(bag.import_errors.values())  # every DAG file reads the setting at parse time
    assert len(errors) == len(list((REPO / "dags").glob("*.py")))
    assert all(message in error for error in errors) and not bag.dags


def test_the_setting_is_the_dags_and_its_tasks_start_date(monkeypatch, airflow_db):
    from dev.demo import load_dag

    monkeypatch.setenv(config.START_DATE_ENV, LATE_START)
    dag = load_dag(REPO / "dags" / "sensor_scoring.py")
    start = datetime(2026, 6, 1, tzinfo=timezone.utc)
    assert dag.start_date == start and dag.default_args["start_date"] == start  # default_args: `dags trigger` checks it
    assert {task.start_date for task in dag.tasks} == {start}
    assert dag.deadline  # in-process runs keep the deadline alert (ScoringDAG.test copes with it)
    monkeypatch.delenv(config.START_DATE_ENV)
    assert load_dag(REPO / "dags" / "sensor_scoring.py").start_date == datetime(2000, 1, 1, tzinfo=timezone.utc)


def test_dag_test_refuses_a_logical_date_before_the_start_date(monkeypatch, airflow_db):
    """What ``airflow dags test`` and the demo/tests' ``dag.test()`` get, before any run exists."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    from dev.demo import load_dag

    monkeypatch.setenv(config.START_DATE_ENV, LATE_START)
    dag = load_dag(REPO / "dags" / "sensor_scoring.py")
    for logical in (datetime(2026, 5, 31, 23, tzinfo=timezone.utc), datetime(2026, 5, 31, 23, 30)):
        with pytest.raises(
            ValueError,
            match=r"before the start date 2026-06-01T00:00:00\+00:00 of DAG 'sensor_scoring' "
            r"\(SCORING_START_DATE\).*SCORING_START_DATE=2026-05-31T22:00Z",
        ):
            dag.test(logical_date=logical)
    with create_session() as session:
        assert (
            not session.query(DagRun)
            .filter(
                DagRun.logical_date < datetime(2026, 6, 1, tzinfo=timezone.utc),
                DagRun.logical_date > datetime(2026, 5, 31, tzinfo=timezone.utc),
            )
            .all()
        )


def test_tasks_fail_without_retry_for_hours_before_the_start_date(monkeypatch, airflow_db):
    """A backfill run has every task despite the start date, and window params can name any hour: the first task
    fails at once (AirflowFailException: no retries), naming the setting."""
    from airflow.sdk.exceptions import AirflowFailException

    from dev.demo import load_dag

    monkeypatch.setenv(config.START_DATE_ENV, LATE_START)
    dag = load_dag(REPO / "dags" / "sensor_scoring.py")
    start = datetime(2026, 6, 1, tzinfo=timezone.utc)
    backfill = {
        "dag": dag,
        "run_id": "backfill__x",
        "data_interval_start": start - 2 * H,
        "data_interval_end": start - H,
    }
    with pytest.raises(
        AirflowFailException,
        match=r"ValueError: the run's hours start at 2026-05-31T22:00:00\+00:00, "
        r"before the DAG's start date .*set SCORING_START_DATE to "
        r"2026-05-31T22:00Z or earlier",
    ):
        airflow_context.hour_for(backfill, {})
    rescoring = {
        "dag": dag,
        "run_id": "manual__x",
        "data_interval_start": start + H,
        "data_interval_end": start + 2 * H,
    }
    with pytest.raises(AirflowFailException, match="before the DAG's start date"):
        airflow_context.hour_for(rescoring, {"window_start": "2026-05-31T23:00Z", "window_end": "2026-06-01T01:00Z"})
    # the start date's own hour, and later ones, are scored
    assert (
        airflow_context.hour_for({**backfill, "data_interval_start": start, "data_interval_end": start + H}, {}).start
        == start
    )
    assert airflow_context.hour_for(rescoring, {}).start == start + H


@pytest.mark.airflow
def test_a_rest_or_ui_run_before_the_start_date_alerts_as_empty(monkeypatch, airflow_db, alert_connections):
    """The REST API and the UI's trigger form create a run at any logical date (no start-date check in 3.3.2):
    Airflow gives it no task and marks it successful; its success callback, run as the DAG processor runs it,
    alerts ``dag_run_empty``. A run with tasks stays silent."""
    import structlog
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, DagBag, sync_bag_to_db
    from airflow.dag_processing.processor import _execute_dag_callbacks
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    smtp, http = alert_connections
    monkeypatch.setenv(config.START_DATE_ENV, LATE_START)
    # store this parse even if an earlier test stored the DAG less than 30 s ago (Airflow skips such a write)
    monkeypatch.setenv("AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL", "0")
    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    [bundle] = [b for b in manager.get_all_dag_bundles() if b.name == "dags-folder"]
    bundle.initialize()
    sync_bag_to_db(
        BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name),
        bundle.name,
        bundle.version,
    )  # the DAG as the DAG processor stores it with this setting

    import pendulum

    logical = pendulum.datetime(2026, 5, 20, 7, tz="UTC")  # before the start date; no other test uses this day
    with create_session() as session:
        dag = SerializedDagModel.get_dag("sensor_scoring", session=session)
        run = dag.create_dagrun(  # what POST /api/v2/dags/{id}/dagRuns does (routes/public/dag_run.py)
            run_id="manual__before-start",
            logical_date=logical,
            run_after=datetime.now(timezone.utc),
            data_interval=dag.timetable.infer_manual_data_interval(run_after=logical),
            conf={},
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name="test",
            state=DagRunState.QUEUED,
            session=session,
        )
        assert run.get_task_instances(session=session) == []  # Airflow made no task for it
        run.set_state(DagRunState.RUNNING)  # what the scheduler does next
        _, callback = run.update_state(session=session, execute_callbacks=False)
        assert run.state == DagRunState.SUCCESS and callback is not None and not callback.is_failure_callback
        session.delete(run)

    _execute_dag_callbacks(DagBag(dag_folder=str(REPO / "dags")), callback, structlog.get_logger())
    [post] = [p["json"] for p in http.received]
    assert post["event"] == "dag_run_empty" and post["run_id"] == "manual__before-start"
    assert post["error"].startswith("no task ran, nothing was scored") and "2026-06-01T00:00:00+00:00" in post["error"]
    assert post["log_url"].endswith("/dags/sensor_scoring/runs/manual__before-start")
    assert post["text"].startswith("[dag_run_empty] DAG run succeeded without running a task")
    assert smtp.messages[-1][1]["Subject"].startswith("[sensor_scoring] dag_run_empty")

    # an ordinary success hands the callback the last task that succeeded (context "ti"): no alert
    from sensor_scoring_airflow.alerts import EmptyRunNotifier

    EmptyRunNotifier().notify({"dag": dag, "run_id": "scheduled__x", "reason": "success", "ti": object()})
    assert len(http.received) == 1
