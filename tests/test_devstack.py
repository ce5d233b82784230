"""The dev stack's process handling and Airflow environment, without starting Airflow (the standalone tests do)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from scoring.devstack import DevStack, stop_process_group, tail

TREE = textwrap.dedent("""
    import signal, subprocess, sys, time
    sleep = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
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


def test_airflow_environment_isolates_home_ports_login_and_storage(tmp_path: Path, azurite):
    stack = DevStack(tmp_path / "stack", username="ops", password="s3cret", airflow_env={"SCORING_TASK_RETRIES": "0"})
    stack.home.mkdir(parents=True)
    stack.azurite = azurite  # the session's Azurite stands in: nothing is started here
    env = stack.environment()
    assert env["AIRFLOW_HOME"] == str(stack.home / "airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{stack.home / 'airflow' / 'airflow.db'}"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("/dags") and env["AIRFLOW__CORE__PLUGINS_FOLDER"].endswith("/plugins")
    assert env["AIRFLOW__API__PORT"] == str(stack.api_port) and env["AIRFLOW__API__BASE_URL"] == stack.url
    ports = {env[k] for k in ("AIRFLOW__API__PORT", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
                              "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT")}
    assert len(ports) == 3 and "8080" not in ports and "8793" not in ports
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "ops:admin"
    passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert json.loads(passwords.read_text()) == {"ops": "s3cret"} and passwords.stat().st_mode & 0o077 == 0
    storage = json.loads(env["AIRFLOW_CONN_SCORING_STORAGE"])
    assert storage["conn_type"] == "wasb" and storage["extra"]["connection_string"] == azurite.connection_string
    assert env["SCORING_TASK_RETRIES"] == "0"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)  # standalone starts `airflow` from PATH


def test_tail_names_a_missing_log(tmp_path: Path):
    assert "does not exist" in tail(tmp_path / "nope.log")
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert tail(log, 2) == "line 98\nline 99"


@pytest.mark.parametrize("argv", [["--help"], ["ui", "--help"], ["live-simulator", "--help"]])
def test_command_line_help(argv):
    done = subprocess.run([sys.executable, "-m", "scoring.devstack", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage:" in done.stdout
