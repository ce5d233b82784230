"""`make demo`'s code path, small: simulate, train, one DAG run and the summary; what it prints, and its log.

The demo tells its story in one line per step; Airflow's logs go to ``$AIRFLOW_HOME/demo.log`` unless verbose.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from dev.demo import DemoFailed, Progress, Story, default_log_path, run_demo
from tests.conftest import REPO

STEPS = ("Storage", "Windows", "Models", "Airflow", "DAG run", "Partition", "Log")
TASKS = ("wait_for_windows", "plan_shards", "read_windows", "score_shard", "commit", "model_health")
AIRFLOW_LINES = ("[DAG TEST]", "Task started", "[info", "Pushing xcom")  # what Airflow's own logs look like
MAX_LINES = 40  # a warm `make demo`, make's echo of its command included


def steps_of(out: str) -> dict[str, list[str]]:
    return {step: [line for line in out.splitlines() if line.startswith(f"{step} ")] for step in STEPS}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_in_place_on_a_terminal_and_is_one_line_elsewhere():
    for out, live in ((Terminal(), True), (io.StringIO(), False)):
        story = Story(out, live=live)
        bar = story.progress("Windows", "hours")
        for done in range(25):
            bar(done, 24)
        bar.finish("24 hour(s) landed")
        text = out.getvalue()
        assert text.count("\n") == 1 and text.replace("\x1b[K", "").endswith("[" + "#" * 24 + "] 24 hour(s) landed\n")
        if live:  # drawn at 0, redrawn (carriage return, clear to the end of the line) at most 10 times a second
            assert text.startswith("Windows      [....") and text.count("\r") >= 2 and "\x1b[K\n" in text
        else:
            assert text == "Windows      [" + "#" * 24 + "] 24 hour(s) landed\n"
    assert (
        Progress(Story(io.StringIO(), live=False), "Models", "sensors", done=3, total=6).bar()
        == "[" + "#" * 12 + "." * 12 + "]"
    )


@pytest.mark.azurite
@pytest.mark.airflow
def test_demo_tells_one_line_per_step_and_leaves_airflow_in_its_log(blob, containers, airflow_db, capsys):
    # cold and verbose: everything is made, and Airflow's logs come through as they always did
    first = run_demo(devices=3, tags=2, hours=4, sensors_per_shard=4, verbose=True)
    out = capsys.readouterr().out
    assert first["dag_run_state"] == "success"
    assert first["sensors_scored"] == 6 and first["windows_scored"] == 360 and first["windows_read"] == 360
    assert first["quarantined"] == 0 and "anomalies found" in out and "6 model(s) trained" in out
    assert first["labelled_anomalies_flagged"] <= first["labelled_anomalies"]
    assert "Task started" in out and "Pushing xcom" in out

    # warm and quiet: the story, the summary, and the log's name
    second = run_demo(devices=3, tags=2, hours=4, sensors_per_shard=4)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) < MAX_LINES - 1, out
    steps = steps_of(out)
    assert all(len(found) == 1 for found in steps.values()), steps
    # only the live current hour again (two if the clock passed an hour between the runs)
    assert " 1 hour(s) landed" in steps["Windows"][0] or " 2 hour(s) landed" in steps["Windows"][0]
    assert f"version {first['model_version']} reused" in steps["Models"][0]
    assert (
        steps["DAG run"][0].startswith("DAG run      success in ") and "score_shard x2 > commit" in steps["DAG run"][0]
    )
    assert not [line for line in lines if any(mark in line for mark in AIRFLOW_LINES)], out
    assert second["windows_scored"] == 360 and second["model_version"] == first["model_version"]

    log = default_log_path()
    assert str(log) in steps["Log"][0] and log.is_file()
    text = log.read_text()
    for task in TASKS:
        assert f"[DAG TEST] starting task_id={task}" in text
    assert "Task started" in text and "Performing upgrade to the metadata database" in text  # dag.test and db migrate
    assert "demo: DAG run      success" in text  # the story too, for finding one's way in the log


@pytest.mark.azurite
@pytest.mark.airflow
def test_a_failed_run_shows_the_error_of_the_log(blob, containers, airflow_db, capsys, monkeypatch):
    from sensor_scoring.steps import plan

    def plan_shards(*args, **kwargs):
        raise LookupError("no model alias or version named 'nope'")

    monkeypatch.setattr(plan, "plan_shards", plan_shards)  # the DAG calls it in-process (dag.test)
    with pytest.raises(DemoFailed, match="DAG run failed"):
        run_demo(devices=1, tags=1, hours=2, sensors_per_shard=4)
    out = capsys.readouterr().out
    [run] = steps_of(out)["DAG run"]
    assert run.startswith("DAG run      failed in ") and "plan_shards failed > " in run
    assert f"{default_log_path()} has " in out
    assert "  | plan_shards: Task failed with exception" in out
    assert "  | LookupError: no model alias or version named 'nope'" in out
    assert len(out.splitlines()) < MAX_LINES - 1, out


def test_an_error_before_the_dag_run_is_named_and_its_traceback_logged(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCORING_STORAGE", str(tmp_path))  # a local directory: no Azurite needed to fail
    with pytest.raises(ValueError, match="tags <= 8"):
        run_demo(devices=1, tags=9, hours=2)
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "Storage      SCORING_STORAGE from the environment (no Azurite started)",
        "Failed       ValueError: need devices >= 1 and 1 <= tags <= 8",
        f"  {default_log_path()} has 0 warnings, 0 errors",
    ]
    assert "Traceback (most recent call last)" in default_log_path().read_text()


@pytest.mark.azurite
@pytest.mark.airflow
def test_python_m_scoring_demo_prints_only_its_story(blob, containers, airflow_db):
    """The command itself, its stdout and stderr read from the file descriptors: nothing else gets through."""
    from dev.demo import ensure_data
    from tests.support.training import train_and_register

    # what a first run leaves (windows and a promoted model), so that the command's run is the warm one
    now = datetime.now(UTC)
    latest = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    ensure_data(blob, containers, 2, 1, latest - timedelta(hours=1), now)
    train_and_register(blob, containers, latest - timedelta(hours=1), latest, promote=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # as from a shell, not pytest
    done = subprocess.run(
        [sys.executable, "-m", "dev.demo", "--devices", "2", "--tags", "1", "--hours", "2", "--sensors-per-shard", "1"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) + 1 < MAX_LINES, done.stdout  # + make's echo of the command
    steps = steps_of(done.stdout)
    assert all(len(found) == 1 for found in steps.values()), done.stdout
    assert "score_shard x2" in steps["DAG run"][0] and "reused" in steps["Models"][0]
    assert not [line for line in lines if any(mark in line for mark in AIRFLOW_LINES)], done.stdout
    assert "[DAG TEST] starting task_id=commit" in default_log_path().read_text()
