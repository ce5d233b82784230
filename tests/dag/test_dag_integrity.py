"""The DAG file as the scheduler sees it: imports cleanly and cheaply, hourly with a real interval, valid params."""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import timedelta

import pendulum
import pytest

from tests.conftest import REPO

DAG_FILE = REPO / "dags" / "sensor_scoring.py"


def test_dagbag_imports_without_errors(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert sorted(bag.dags) == ["sensor_model_rollback", "sensor_model_training", "sensor_scoring"]


def test_parse_does_no_connection_variable_or_heavy_work():
    """Import the file in a fresh interpreter where any connection or Variable lookup raises."""
    probe = f"""
import sys, importlib.util
from airflow.sdk import BaseHook, Connection, Variable
def boom(*a, **k): raise AssertionError("lookup at parse time")
Connection.get = boom; BaseHook.get_connection = boom; Variable.get = boom
spec = importlib.util.spec_from_file_location("dagfile", {str(DAG_FILE)!r})
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
heavy = [m for m in ("pandas", "numpy", "sklearn", "pyarrow", "azure.storage.blob", "great_expectations",
                     "sensor_scoring.contracts", "sensor_scoring.steps") if m in sys.modules]
print("HEAVY", heavy)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout


def test_schedule_gives_one_hour_data_intervals(sensor_dag):
    """Airflow 3's default cron timetable gives zero-length intervals; this DAG must not."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    timetable = DagSerialization.from_dict(DagSerialization.to_dict(sensor_dag)).timetable
    first = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=pendulum.datetime(2026, 1, 1), latest=None, catchup=True),
    )
    assert first.data_interval.end - first.data_interval.start == timedelta(hours=1)
    assert first.run_after == first.data_interval.end  # runs once its hour is over
    manual = timetable.infer_manual_data_interval(run_after=pendulum.datetime(2026, 11, 25, 16, 20))
    assert (manual.start, manual.end) == (pendulum.datetime(2026, 11, 25, 15), pendulum.datetime(2026, 11, 25, 16))


def test_shape_retries_and_docs(sensor_dag):
    assert sensor_dag.catchup is False
    assert sensor_dag.doc_md and "Triage" in sensor_dag.doc_md
    assert set(sensor_dag.task_dict) == {
        "wait_for_windows",
        "plan_shards",
        "plan_reads",
        "read_windows",
        "score_shard",
        "commit",
        "model_health",
    }
    assert sensor_dag.task_dict["model_health"].upstream_task_ids == {"commit"}
    assert sensor_dag.task_dict["plan_shards"].upstream_task_ids == {"wait_for_windows"}
    # Airflow maps only over a return value: plan_shards returns the shards, plan_reads hands on the read groups
    assert sensor_dag.task_dict["plan_reads"].upstream_task_ids == {"plan_shards"}
    assert sensor_dag.task_dict["read_windows"].upstream_task_ids == {"plan_reads"}
    assert sensor_dag.task_dict["score_shard"].upstream_task_ids == {"plan_shards", "read_windows"}
    assert sensor_dag.task_dict["commit"].upstream_task_ids == {"read_windows", "score_shard"}
    for mapped in ("read_windows", "score_shard"):  # one instance per group of files / shard, named by what it holds
        assert sensor_dag.task_dict[mapped].map_index_template == "{{ shard_label }}"
    assert sensor_dag.task_dict["read_windows"].partial_kwargs["command"] == "read-windows"
    assert "command" not in sensor_dag.task_dict["score_shard"].partial_kwargs  # the operator's own, score-shard
    sensor = sensor_dag.task_dict["wait_for_windows"]
    assert sensor.mode == "reschedule" and sensor.timeout > 0
    assert all(task.retries >= 1 for task in sensor_dag.tasks)


def test_default_params_validate_and_bad_values_are_rejected(sensor_dag):
    from airflow.sdk.exceptions import ParamValidationError

    sensor_dag.params.validate()
    for bad in ({"sensors_per_shard": 0}, {"backend": "spark"}, {"model_version": ""}, {"late_folders": -1}):
        with pytest.raises(ParamValidationError):
            params = copy.deepcopy(sensor_dag.params)
            params.update(bad)
            params.validate()


def test_the_tests_training_params_are_the_training_forms_defaults(airflow_db):
    """tests.support.training's defaults stand for the form's: a changed default changes them too, or fails here."""
    from dev.demo import load_dag
    from tests.support.training import FORM_DEFAULTS, training_params

    form = load_dag(REPO / "dags" / "sensor_model_training.py").params
    assert {name: form[name] for name in FORM_DEFAULTS} == dict(FORM_DEFAULTS)
    assert training_params(nu=0.05)["nu"] == 0.05 and training_params()["devices"] is not FORM_DEFAULTS["devices"]
    with pytest.raises(TypeError, match="no training param holdout"):
        training_params(holdout=2)
