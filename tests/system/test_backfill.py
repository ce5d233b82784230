"""Backfills as Airflow 3.3 creates them (the code behind the UI, ``airflow backfill create`` and POST /backfills).

What runs in-process here: the DAG as the DAG processor stores it, and Airflow's own ``_create_backfill``, which
the CLI and the REST API call. Running the queued runs needs a scheduler: the end-to-end test against
``airflow standalone`` does that. That re-running an hour replaces its partition is tested in
test_end_to_end.py (``test_rerunning_an_hour_replaces_it_with_one_row_per_window``) and test_rescoring.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

pytestmark = pytest.mark.airflow

H = timedelta(hours=1)
# far from the hours other tests run, so the session's shared metadata DB holds no run of these hours
DAY = datetime(2026, 6, 1, tzinfo=timezone.utc)


@pytest.fixture
def stored_dag(airflow_db):
    """The DAG file parsed from the dags-folder bundle and written to the metadata DB, as the DAG processor does."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    [bundle] = [b for b in manager.get_all_dag_bundles() if b.name == "dags-folder"]
    bundle.initialize()
    bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
    assert not bag.import_errors
    sync_bag_to_db(bag, bundle.name, bundle.version)
    return bag.dags["sensor_scoring"]


def runs_of(backfill_id: int) -> list:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.backfill_id == backfill_id).order_by(DagRun.logical_date).all()
        session.expunge_all()
        return runs


def finish(backfill_id: int) -> None:
    """What the scheduler does once a backfill's runs are done: runs succeed, the backfill is completed."""
    from airflow.models import DagRun
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    with create_session() as session:
        for run in session.query(DagRun).filter(DagRun.backfill_id == backfill_id):
            run.state = DagRunState.SUCCESS
        session.get(Backfill, backfill_id).completed_at = datetime.now(timezone.utc)


def test_backfill_makes_one_run_per_hour_and_reprocesses_on_request(stored_dag):
    from airflow.models.backfill import (
        AlreadyRunningBackfill,
        InvalidBackfillConf,
        ReprocessBehavior,
        _create_backfill,
    )

    assert stored_dag.catchup is False  # backfills do not depend on catchup
    create = dict(dag_id="sensor_scoring", reverse=False, triggering_user_name="test")

    # a bad conf is refused by the params' JSON schema before any run exists
    with pytest.raises(InvalidBackfillConf, match="sensors_per_shard"):
        _create_backfill(
            from_date=DAY, to_date=DAY + 2 * H, max_active_runs=2, dag_run_conf={"sensors_per_shard": 0}, **create
        )

    first = _create_backfill(
        from_date=DAY + H, to_date=DAY + 3 * H, max_active_runs=2, dag_run_conf={"sensors_per_shard": 50}, **create
    )
    assert first.max_active_runs == 2
    runs = runs_of(first.id)
    assert [r.logical_date for r in runs] == [DAY + H, DAY + 2 * H, DAY + 3 * H]  # both ends inclusive
    for run in runs:  # each run is one whole hour: the hour whose partition it replaces
        assert (run.data_interval_start, run.data_interval_end) == (run.logical_date, run.logical_date + H)
        assert str(run.run_type) in ("backfill", "DagRunType.BACKFILL_JOB") and run.conf == {"sensors_per_shard": 50}
        assert str(run.state) in ("queued", "DagRunState.QUEUED")
    with pytest.raises(AlreadyRunningBackfill):  # one backfill per DAG at a time
        _create_backfill(from_date=DAY, to_date=DAY + H, max_active_runs=2, dag_run_conf=None, **create)
    finish(first.id)

    # default reprocess behaviour ("none"): hours that already ran are left alone, only the new hour gets a run
    second = _create_backfill(
        from_date=DAY + H,
        to_date=DAY + 4 * H,
        max_active_runs=2,
        dag_run_conf=None,
        reprocess_behavior=ReprocessBehavior.NONE,
        **create,
    )
    assert [r.logical_date for r in runs_of(second.id)] == [DAY + 4 * H]
    finish(second.id)

    # "reprocess completed" (the UI's "All runs"): the existing run of each hour is cleared and queued again,
    # so an hour still has exactly one DAG run, and that run replaces the hour's partition
    third = _create_backfill(
        from_date=DAY + H,
        to_date=DAY + 2 * H,
        max_active_runs=1,
        dag_run_conf=None,
        reprocess_behavior=ReprocessBehavior.COMPLETED,
        **create,
    )
    again = runs_of(third.id)
    assert [r.run_id for r in again] == [r.run_id for r in runs[:2]]
    assert all(str(r.state) in ("queued", "DagRunState.QUEUED") for r in again)
    finish(third.id)

    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        dates = [
            r.logical_date
            for r in session.query(DagRun).filter(
                DagRun.dag_id == "sensor_scoring", DagRun.logical_date >= DAY, DagRun.logical_date < DAY + 24 * H
            )
        ]
    assert sorted(dates) == [DAY + H, DAY + 2 * H, DAY + 3 * H, DAY + 4 * H]


def test_commits_of_different_runs_never_interleave(stored_dag):
    """A backfill, the hourly run and a rescoring may touch the same hour: their commits run one at a time."""
    assert stored_dag.task_dict["commit"].max_active_tis_per_dag == 1
    assert stored_dag.max_active_runs == 4
