"""The dev stack's process handling, its PostgreSQL cluster and Airflow environment, without starting Airflow (the
standalone tests do)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from dev.devstack import Component, ComponentDied, DevStack, stop_process_group, tail
from dev.postgres import Postgres

TREE = textwrap.dedent("""
    import signal, subprocess, sys, time
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    sleep = [sys.executable, "-c", ignore]
    same = subprocess.Popen(sleep)                            # in our group, ignores SIGTERM
    own = subprocess.Popen(sleep, start_new_session=True)     # its own group, like an Airflow task
    print(same.pid, own.pid, flush=True)
    time.sleep(600)
""")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_process_group_ends_the_group_and_descendants_in_other_groups(tmp_path: Path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and not any(gone(p) for p in pids)
        assert os.getpgid(pids[0]) == proc.pid and os.getpgid(pids[1]) != proc.pid  # one escaped the group
        assert stop_process_group(proc, timeout_s=3) == []
        assert proc.poll() is not None
        assert all(gone(p) for p in pids), [(p, gone(p)) for p in pids]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stop_process_group_of_nothing_or_an_ended_process_is_quiet():
    assert stop_process_group(None) == []
    ended = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    ended.wait()
    assert stop_process_group(ended) == []


@pytest.fixture
def postgres(tmp_path: Path):
    """A real throwaway PostgreSQL cluster (the dev stack's), deleted afterwards."""
    server = Postgres(tmp_path / "pg", durable=False).start()
    try:
        yield server
    finally:
        server.discard()
    assert server.proc is not None and server.proc.poll() is not None


def test_postgres_cluster_answers_on_loopback_with_a_password_and_stops_by_its_group(postgres: Postgres):
    import psycopg2

    assert postgres.query("select current_database(), current_user") == [("airflow", "airflow")]
    assert postgres.query("show listen_addresses") == [("127.0.0.1",)]
    assert postgres.query("show fsync") == [("off",)]  # a throwaway cluster
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=postgres.port, user="airflow", password="wrong", dbname="airflow")
    assert postgres.url.startswith(
        f"postgresql+psycopg2://airflow:{postgres.password}@127.0.0.1:{postgres.port}/airflow"
    )
    assert (postgres.location / "password").stat().st_mode & 0o077 == 0
    assert os.getpgid(postgres.proc.pid) == postgres.proc.pid  # its own process group
    backends = [p.pid for p in psutil.Process(postgres.proc.pid).children()]  # each left the group (setsid)
    assert backends
    postgres.stop()
    assert postgres.proc.poll() is not None and all(gone(pid) for pid in backends)


def test_postgres_cluster_is_kept_between_starts_unless_discarded(tmp_path: Path):
    server = Postgres(tmp_path / "pg").start()
    try:
        server.query("create table kept (x int)")
        server.stop()
        server = Postgres(tmp_path / "pg").start()
        assert server.query("select count(*) from kept") == [(0,)]
        assert server.query("show fsync") == [("on",)]  # durable by default: make ui keeps its state
    finally:
        server.discard()
    assert not server.data_dir.exists() and not (tmp_path / "pg").exists()


def test_a_dead_component_is_named_with_its_exit_code_and_log_tail(tmp_path: Path, postgres: Postgres):
    stack = DevStack(tmp_path / "stack")
    stack.postgres = postgres
    stack.home.mkdir(parents=True)
    stack.check()  # all alive
    worker = stack._spawn(
        "worker",
        [sys.executable, "-c", "print('\\n'.join(f'line {i}' for i in range(80))); raise SystemExit(3)"],
        os.environ,
    )
    worker.proc.wait(timeout=30)
    with pytest.raises(ComponentDied) as died:
        stack.check()
    assert died.value.name == "worker" and died.value.returncode == 3
    assert "line 79" in str(died.value) and "line 29" not in str(died.value)  # the last 50 lines
    stack.components.clear()
    os.killpg(postgres.proc.pid, signal.SIGKILL)
    postgres.proc.wait(timeout=30)
    with pytest.raises(ComponentDied, match="postgres of the dev stack exited with -9"):
        stack.check()


def test_tracebacks_are_found_in_the_watched_logs_after_a_mark(tmp_path: Path):
    stack = DevStack(tmp_path / "stack")
    stack.home.mkdir(parents=True)
    log = tmp_path / "scheduler.log"
    log.write_text("old\nTraceback (most recent call last):\n  boom\n")
    stack.components["scheduler"] = Component("scheduler", [], log)
    assert list(stack.tracebacks()) == ["scheduler"]
    marks = stack.log_marks()
    assert stack.tracebacks(since=marks) == {}
    with open(log, "a") as out:
        out.write("fine\nTraceback (most recent call last):\n  File x\nObjectDeletedError: gone\n")
    [excerpt] = stack.tracebacks(since=marks)["scheduler"]
    assert "ObjectDeletedError" in excerpt and "boom" not in excerpt


def test_airflow_environment_isolates_home_ports_login_storage_and_database(tmp_path: Path, azurite, postgres):
    stack = DevStack(tmp_path / "stack", username="ops", password="s3cret", airflow_env={"SCORING_TASK_RETRIES": "0"})
    stack.home.mkdir(parents=True)
    stack.azurite = azurite  # the session's Azurite stands in
    stack.postgres = postgres
    env = stack.environment()
    assert env["AIRFLOW_HOME"] == str(stack.home / "airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == postgres.url
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and int(env["AIRFLOW__CORE__PARALLELISM"]) >= 4
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("/dags")
    assert "AIRFLOW__CORE__PLUGINS_FOLDER" not in env  # the Airflow side loads through the installed entry points
    assert env["AIRFLOW__API__PORT"] == str(stack.api_port) and env["AIRFLOW__API__BASE_URL"] == stack.url
    ports = {
        env[k]
        for k in (
            "AIRFLOW__API__PORT",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
        )
    }
    assert len(ports) == 3 and "8080" not in ports and "8793" not in ports
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "ops:admin"
    passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert json.loads(passwords.read_text()) == {"ops": "s3cret"} and passwords.stat().st_mode & 0o077 == 0
    storage = json.loads(env["AIRFLOW_CONN_SCORING_STORAGE"])
    assert storage["conn_type"] == "wasb" and storage["extra"]["connection_string"] == azurite.connection_string
    assert env["SCORING_TASK_RETRIES"] == "0"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)  # an operator's shell finds `airflow`


def test_tail_names_a_missing_log(tmp_path: Path):
    assert "does not exist" in tail(tmp_path / "nope.log")
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert tail(log, 2) == "line 98\nline 99"


@pytest.mark.parametrize("argv", [["--help"], ["ui", "--help"], ["live-simulator", "--help"]])
def test_command_line_help(argv):
    done = subprocess.run([sys.executable, "-m", "dev.devstack", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage:" in done.stdout
