"""A local Airflow stack for ``make ui`` and the tests that need a scheduler: the stack the project deploys.

PostgreSQL (a throwaway cluster made with Debian's server binaries, ``dev.postgres``), Azurite, and Airflow 3.3's
scheduler (LocalExecutor), DAG processor, triggerer and API server as separate processes, as docker-compose.yaml
runs them. Every one is a child process in its own process group (``start_new_session=True``), logs to its own
file under ``<home>/logs/``, is watched (``DevStack.check``: a component that exits fails every wait at once with
its name, exit code and log tail) and is stopped through its group (then any straggling descendant by pid), never
by name: other people on the same machine run the same programs. Airflow gets its own AIRFLOW_HOME, the project's
dags/ and plugins/, free ports, a known login (simple auth manager) and the storage connection pointing at this
stack's Azurite.

``python -m dev.devstack`` (``make ui``) runs it in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dev.azurite import REPO, Azurite, free_port
from dev.postgres import Postgres
from sensor_scoring import settings as config, storage as st

DAG_ID = "sensor_scoring"
TERMINAL_STATES = frozenset({"success", "failed"})


def stop_process_group(proc: subprocess.Popen | None, timeout_s: float = 20) -> list[int]:
    """SIGTERM the child's process group, SIGKILL what lingers, and kill any descendant that left the group.

    Airflow's task supervisor puts each task in a process group of its own, so the group of the top
    process does not reach them: all descendants are collected first and killed by pid if still alive.
    Returns the pids of those still running afterwards (none, unless something resists SIGKILL).
    """
    if proc is None:
        return []
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    except psutil.Error:
        descendants = []
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    _, alive = psutil.wait_procs(descendants, timeout=5)
    _signal_group(proc.pid, signal.SIGKILL)  # whatever of the group did not end on SIGTERM
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return [proc.pid] + [p.pid for p in alive]
    return [p.pid for p in alive]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, lines: int = 60) -> str:
    """The last lines of a log file, for error messages that say why something did not come up."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


class ApiError(RuntimeError):
    """A REST API call answered with an unexpected status (kept in ``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class AirflowApi:
    """The Airflow REST API v2 with a JWT from the simple auth manager's ``/auth/token``."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        timeout_s: float = 30,
        watch: Callable[[], None] | None = None,
    ) -> None:
        import requests

        self.watch = watch or (lambda: None)  # raises when a process behind the API has died (DevStack.check)
        self.base_url = base_url.rstrip("/")
        self.username, self.password = username, password
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            reply = self.session.post(
                f"{self.base_url}/auth/token",
                timeout=self.timeout_s,
                json={"username": self.username, "password": self.password},
            )
            if reply.status_code not in (200, 201):
                raise RuntimeError(f"POST /auth/token -> {reply.status_code}: {reply.text[:500]}")
            self._token = reply.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, *, ok: Iterable[int] = (200, 201), **kwargs: Any) -> Any:
        """One call under ``/api/v2``; a status not in ``ok`` raises with the server's explanation.

        A dead component of the stack raises ``ComponentDied`` first: before the call, and instead of the
        connection error a dead API server gives.
        """
        import requests

        self.watch()
        url = f"{self.base_url}/api/v2/{path.lstrip('/')}"
        extra_headers = kwargs.pop("headers", {})
        try:
            headers = {**extra_headers, "Authorization": f"Bearer {self.token()}"}
            reply = self.session.request(method, url, headers=headers, timeout=self.timeout_s, **kwargs)
        except requests.ConnectionError:
            time.sleep(0.5)  # a process that just died may not have been reaped yet
            self.watch()
            raise
        if reply.status_code == 401:  # token expired: one fresh try
            self._token = None
            headers = {**extra_headers, "Authorization": f"Bearer {self.token()}"}
            reply = self.session.request(method, url, headers=headers, timeout=self.timeout_s, **kwargs)
        if reply.status_code not in set(ok):
            raise ApiError(f"{method} {url} -> {reply.status_code}: {reply.text[:1000]}", reply.status_code)
        return reply.json() if reply.content else None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Mapping[str, Any], **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs)

    def patch(self, path: str, body: Mapping[str, Any], **kwargs: Any) -> Any:
        return self.request("PATCH", path, json=body, **kwargs)

    # the few calls the tests and `make ui` need
    def unpause(self, dag_id: str = DAG_ID) -> dict:
        return self.patch(f"dags/{dag_id}", {"is_paused": False})

    def trigger(
        self,
        conf: Mapping[str, Any] | None = None,
        *,
        dag_id: str = DAG_ID,
        logical_date: datetime | None = None,
        run_id: str | None = None,
    ) -> dict:
        """A manual run; without ``logical_date`` the run has none (the conf's window decides the hours)."""
        body: dict[str, Any] = {
            "conf": dict(conf or {}),
            "logical_date": logical_date.isoformat() if logical_date else None,
        }
        if run_id:
            body["dag_run_id"] = run_id
        return self.post(f"dags/{dag_id}/dagRuns", body)

    def backfill(
        self,
        from_date: datetime,
        to_date: datetime,
        *,
        dag_id: str = DAG_ID,
        conf: Mapping[str, Any] | None = None,
        reprocess: str = "completed",
        max_active_runs: int = 3,
    ) -> dict:
        """A backfill of the runs whose logical date lies in [from_date, to_date] (both inclusive)."""
        body = {
            "dag_id": dag_id,
            "from_date": from_date.isoformat(),
            "to_date": to_date.isoformat(),
            "dag_run_conf": dict(conf or {}),
            "reprocess_behavior": reprocess,
            "max_active_runs": max_active_runs,
        }
        return self.post("backfills", body)

    def run(self, run_id: str, dag_id: str = DAG_ID) -> dict:
        return self.get(f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def runs(self, dag_id: str = DAG_ID, **params: Any) -> list[dict]:
        return self.get(f"dags/{dag_id}/dagRuns", params={"limit": 100, **params})["dag_runs"]

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[dict]:
        return self.get(f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances", params={"limit": 1000})[
            "task_instances"
        ]

    def wait_for_runs(
        self, run_ids: Iterable[str], timeout_s: float = 600, dag_id: str = DAG_ID, poll_s: float = 2
    ) -> dict[str, dict]:
        """Polls until every run is success or failed; on timeout says which runs and tasks were where.

        Each poll goes through ``request``, so a dead scheduler (or any process of the stack) ends the wait at
        once with ``ComponentDied`` instead of after ``timeout_s``.
        """
        pending = set(run_ids)
        done: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            for run_id in sorted(pending):
                run = self.run(run_id, dag_id)
                if run["state"] in TERMINAL_STATES:
                    done[run_id] = run
                    pending.discard(run_id)
            if not pending:
                break
            if time.monotonic() > deadline:
                where = {
                    r: [(t["task_id"], t.get("map_index"), t["state"]) for t in self.task_instances(r, dag_id)]
                    for r in sorted(pending)
                }
                raise TimeoutError(f"runs not finished after {timeout_s}s: {where}")
            time.sleep(poll_s)
        return done


class ComponentDied(RuntimeError):
    """A process of the stack exited: which one, its exit code and the end of its log, raised by every wait."""

    def __init__(self, name: str, returncode: int | None, log: Path) -> None:
        self.name, self.returncode, self.log = name, returncode, log
        super().__init__(
            f"{name} of the dev stack exited with {returncode}; last {DIED_LOG_LINES} lines of {log}:\n"
            f"{tail(log, DIED_LOG_LINES)}"
        )


@dataclass
class Component:
    """One process the stack started, in its own process group, with its own log file."""

    name: str
    command: list[str]
    log: Path
    proc: subprocess.Popen | None = None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


#: The Airflow 3.3 components, as docker-compose.yaml runs them: each its own process, watched on its own.
AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
DIED_LOG_LINES = 50
#: Stopped in this order, after anything else (the simulator): the API server last, as tasks report through it.
STOP_ORDER = ("scheduler", "triggerer", "dag-processor", "api-server")
#: The components whose logs must never hold a traceback (``DevStack.tracebacks``).
TRACEBACK_WATCHED = ("scheduler", "triggerer")
#: Executor slots: several hours of a backfill, the scheduled run and a rescoring at once (2 cores here).
PARALLELISM = 4


@dataclass
class DevStack:
    """PostgreSQL + Azurite + Airflow's scheduler, DAG processor, triggerer and API server (+ a live simulator).

    ``airflow_env`` adds or overrides Airflow's environment (fast scheduler settings, alert connections).
    ``storage_setting`` given: that storage instead of a new Azurite. ``durable=False``: a throwaway database
    (no fsync), deleted by ``stop()``. Every process is watched: ``check()`` raises ``ComponentDied`` as soon as
    one has exited, and every wait of the stack and its API client calls it.
    """

    home: Path
    username: str = "admin"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    api_port: int | None = None
    airflow_env: dict[str, str] = field(default_factory=dict)
    simulator: dict[str, int] | None = None  # {"devices": N, "tags": M}: land new windows every minute
    storage: str | None = None
    durable: bool = True
    azurite: Azurite | None = None
    postgres: Postgres | None = None
    components: dict[str, Component] = field(default_factory=dict)
    _env: dict[str, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.api_port = self.api_port or free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def log_dir(self) -> Path:
        """One log file per process of the stack (Airflow's task logs stay under ``airflow_home/logs``)."""
        return self.home / "logs"

    @property
    def storage_setting(self) -> str:
        if self.storage is not None:
            return self.storage
        assert self.azurite is not None, "start_storage() first"
        return self.azurite.connection_string

    def api(self) -> AirflowApi:
        return AirflowApi(self.url, self.username, self.password, watch=self.check)

    def scoring_env(self) -> dict[str, str]:
        """What a process needs to reach this stack's storage (the simulator, the CLI, the tests)."""
        return {config.STORAGE_ENV: self.storage_setting}

    def environment(self) -> dict[str, str]:
        """Airflow's environment: own home, this stack's PostgreSQL, LocalExecutor, project dags/plugins, free
        ports, known login. Made once, so the CLI (``airflow_cli``) sees what the running stack sees."""
        if self._env is not None:
            return dict(self._env)
        assert self.postgres is not None, "start_database() first"
        self.home.mkdir(parents=True, exist_ok=True)
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({self.username: self.password}))
        passwords.chmod(0o600)
        venv_bin = str(Path(sys.executable).parent)  # an operator's shell finds `airflow` on PATH
        env = dict(os.environ)  # the caller's AIRFLOW_CONN_* (alert channels) and AIRFLOW__* settings pass through
        env.update(
            {
                "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url,
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.url,  # the execution API (task -> server) is {BASE_URL}/execution/
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                config.STORAGE_ENV: self.storage_setting,
            }
        )
        if st.parse_setting(self.storage_setting).kind == "connection_string":
            # blob storage as a deployment has it: the wasb connection, read by the provider's WasbHook; a local
            # directory is no wasb connection, so the tasks take SCORING_STORAGE
            env["AIRFLOW_CONN_SCORING_STORAGE"] = json.dumps(
                {"conn_type": "wasb", "extra": {"connection_string": self.storage_setting}}
            )
        env.update(self.airflow_env)
        self._env = env
        return dict(env)

    def airflow_cli(self, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
        """``airflow <args>`` against this stack's metadata DB, as an operator on the machine would run it."""
        self.check()
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.environment(),
            cwd=self.airflow_home,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def start_storage(self) -> DevStack:
        """Azurite alone (unless the stack was given a storage), so data can be seeded before Airflow starts."""
        if self.azurite is None and self.storage is None:
            atexit.register(self.stop)  # a last resort; callers stop the stack in their own finally
            self.home.mkdir(parents=True, exist_ok=True)
            self.azurite = Azurite(self.home / "azurite").start()
        return self

    def start_database(self) -> DevStack:
        """This stack's PostgreSQL cluster (created on first start), migrated to Airflow's schema."""
        if self.postgres is None:
            atexit.register(self.stop)
            self.postgres = Postgres(self.home / "postgres", durable=self.durable).start()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.airflow_home.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / "db-migrate.log"
            with open(log, "ab") as out:
                done = subprocess.run(
                    [sys.executable, "-m", "airflow", "db", "migrate"],
                    env=self.environment(),
                    cwd=self.airflow_home,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=600,
                )
            if done.returncode != 0:
                raise RuntimeError(f"airflow db migrate exited with {done.returncode}; log ({log}):\n{tail(log)}")
        return self

    def start(self, timeout_s: float = 300) -> DevStack:
        """Starts what is not running yet and waits until the API is healthy and the DAG is parsed."""
        try:
            self.start_storage()
            self.start_database()
            if self.simulator and "simulator" not in self.components:
                self._spawn(
                    "simulator",
                    [
                        sys.executable,
                        "-m",
                        "dev.devstack",
                        "live-simulator",
                        "--devices",
                        str(self.simulator["devices"]),
                        "--tags",
                        str(self.simulator["tags"]),
                    ],
                    os.environ | self.scoring_env(),
                )
            for name in AIRFLOW_COMPONENTS:
                if name not in self.components:
                    self._spawn(name, [sys.executable, "-m", "airflow", name], self.environment())
            self.wait_until_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, command: list[str], env: Mapping[str, str]) -> Component:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        component = Component(name, command, self.log_dir / f"{name}.log")
        with open(component.log, "ab") as log:
            component.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=self.airflow_home,
                start_new_session=True,
            )
        self.components[name] = component
        return component

    def restart(self, name: str, extra_env: Mapping[str, str] | None = None) -> None:
        """Start a component again (after it died or was stopped), with its earlier command and log;
        ``extra_env`` overrides its environment this once (a benchmark switching a worker setting)."""
        old = self.components.pop(name)
        stop_process_group(old.proc, timeout_s=10)
        env = self.environment() if name in AIRFLOW_COMPONENTS else os.environ | self.scoring_env()
        self._spawn(name, old.command, {**env, **(extra_env or {})})

    def pid(self, name: str) -> int:
        proc = self.components[name].proc
        assert proc is not None
        return proc.pid

    def check(self) -> None:
        """Raises ``ComponentDied`` for the first process of the stack that has exited, else returns."""
        if self.postgres is not None and self.postgres.proc is not None and self.postgres.proc.poll() is not None:
            raise ComponentDied("postgres", self.postgres.proc.returncode, self.postgres.log_path)
        if self.azurite is not None and self.azurite.proc is not None and self.azurite.proc.poll() is not None:
            raise ComponentDied("azurite", self.azurite.proc.returncode, self.azurite.location / "azurite.log")
        for component in self.components.values():
            if (code := component.exited()) is not None:
                raise ComponentDied(component.name, code, component.log)

    def logs(self) -> dict[str, Path]:
        """Each component's log file by name."""
        return {name: c.log for name, c in self.components.items()}

    def log_marks(self) -> dict[str, int]:
        """How far each component's log has been written: pass to ``tracebacks`` to see only what came after."""
        return {name: c.log.stat().st_size if c.log.exists() else 0 for name, c in self.components.items()}

    def tracebacks(
        self, since: Mapping[str, int] | None = None, names: Iterable[str] = TRACEBACK_WATCHED
    ) -> dict[str, list[str]]:
        """The Python tracebacks these components logged (after ``since``), each with the lines around it.

        A traceback in the scheduler's or the triggerer's own log is a crash or a bug being swallowed, never
        part of a healthy run: task errors go to the task logs under ``airflow_home/logs``.
        """
        found: dict[str, list[str]] = {}
        for name in names:
            component = self.components.get(name)
            if component is None or not component.log.exists():
                continue
            with open(component.log, "rb") as log:
                log.seek((since or {}).get(name, 0))
                lines = log.read().decode(errors="replace").splitlines()
            hits = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
            if hits:
                found[name] = ["\n".join(lines[max(0, i - 3) : i + 40]) for i in hits]
        return found

    def wait_until_ready(self, timeout_s: float) -> None:
        """Healthy metadatabase, scheduler, DAG processor and triggerer, and the DAG known to the API."""
        import requests

        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            self.check()
            try:
                health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
                unhealthy = [
                    name for name, part in health.items() if isinstance(part, dict) and part.get("status") != "healthy"
                ]
                if unhealthy:
                    last = f"unhealthy: {unhealthy}"
                else:
                    self.api().get(f"dags/{DAG_ID}")
                    return
            except ComponentDied:
                raise
            except Exception as exc:  # not listening yet, or the DAG is not parsed yet
                last = f"{type(exc).__name__}: {exc}"[:300]
            time.sleep(2)
        errors = ""
        try:
            errors = json.dumps(self.api().get("importErrors"))[:2000]
        except Exception:
            pass
        tails = "\n".join(f"--- {name} ({c.log}):\n{tail(c.log, 20)}" for name, c in self.components.items())
        raise TimeoutError(f"Airflow at {self.url} not ready within {timeout_s}s ({last}) {errors}\n{tails}")

    def stop(self) -> list[int]:
        """Stops Airflow's components, the simulator, PostgreSQL and Azurite, each through its own process group.

        Airflow first (it holds connections to the database), scheduler first and API server last. A throwaway
        stack (``durable=False``) deletes its database. Returns the pids that survived (none, normally), so tests
        can insist that nothing leaked.
        """
        survivors: list[int] = []
        # the scheduler first, so that no task starts or loses its API server while the stack goes down
        order = sorted(self.components.values(), key=lambda c: STOP_ORDER.index(c.name) if c.name in STOP_ORDER else -1)
        for component in order:
            survivors += stop_process_group(component.proc)
        if self.postgres is not None:
            if self.durable:
                self.postgres.stop()
            else:
                self.postgres.discard()
            if self.postgres.proc is not None and self.postgres.proc.poll() is None:
                survivors.append(self.postgres.proc.pid)
        if self.azurite is not None:
            self.azurite.stop()
            if self.azurite.proc is not None and self.azurite.proc.poll() is None:
                survivors.append(self.azurite.proc.pid)
        return survivors

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def seed(
    storage_setting: str, *, devices: int, tags: int, hours: int, now: datetime | None = None
) -> dict[str, object]:
    """Simulated windows for the last ``hours`` hours up to now, and a promoted model version if none exists."""
    from dev.demo import ensure_data, train_models
    from sensor_scoring.models import registry
    from sensor_scoring.storage import open_storage

    storage, containers = open_storage(storage_setting), config.Containers.from_env()
    now = now or datetime.now(timezone.utc)
    latest = now.replace(minute=0, second=0, microsecond=0)
    first = latest - timedelta(hours=hours)
    landed = ensure_data(storage, containers, devices, tags, first, now)
    try:
        version = registry.resolve_version(storage, containers.models, registry.PRODUCTION_ALIAS)
    except LookupError:
        # the training DAG's steps, promoted by the demo's policy; the range's last hour held back
        trained = train_models(storage, containers, first, latest)
        if not trained["promoted"]:
            raise RuntimeError(f"model version {trained['version']} {trained['reason']}") from None
        version = str(trained["version"])
    return {"hours": landed["hours"], "windows": landed["windows"], "model_version": version}


def live_simulator(devices: int, tags: int, every_s: float = 60) -> None:
    """Lands the current hour's windows so far every minute, like a Stream Analytics job would."""
    from dev.demo import ensure_data
    from sensor_scoring.storage import open_storage

    storage, containers = open_storage(), config.Containers.from_env()
    while True:
        now = datetime.now(timezone.utc)
        current = now.replace(minute=0, second=0, microsecond=0)
        done = ensure_data(storage, containers, devices, tags, current - timedelta(hours=1), now)
        print(f"{now:%H:%M:%S} landed {done['windows']} window(s) in {done['hours']} hour(s)", flush=True)
        time.sleep(every_s)


@contextmanager
def stop_on_signals(signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Turns these signals into KeyboardInterrupt while inside, so ``finally`` blocks stop the children.

    SIGINT too: a process started in the background by a shell inherits SIGINT ignored, and would then
    never see Ctrl-C. Only possible in the main thread; elsewhere this does nothing.
    """

    def _interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_ui(home: Path, *, port: int | None, devices: int, tags: int, hours: int) -> None:
    """``make ui``: the stack in the foreground with a known login, until Ctrl-C (or SIGTERM)."""
    with stop_on_signals():
        _run_ui(home, port=port, devices=devices, tags=tags, hours=hours)


def _run_ui(home: Path, *, port: int | None, devices: int, tags: int, hours: int) -> None:
    stack = DevStack(
        home, username="admin", password="admin", api_port=port, simulator={"devices": devices, "tags": tags}
    )
    try:
        stack.start_storage()
        print(
            f"Azurite on 127.0.0.1:{stack.azurite.port}; landing {hours} h of windows for "
            f"{devices} devices x {tags} sensors and training a model if none ...",
            flush=True,
        )
        seeded = seed(stack.storage_setting, devices=devices, tags=tags, hours=hours)
        print(f"  {seeded['hours']} hour(s) landed, model version {seeded['model_version']} (alias production)")
        print(
            f"Starting PostgreSQL and Airflow's scheduler, DAG processor, triggerer and API server "
            f"(home {stack.airflow_home}, logs in {stack.log_dir}) ...",
            flush=True,
        )
        stack.start()
        stack.api().unpause()
        print(
            f"""
Airflow UI   {stack.url}
Login        {stack.username} / {stack.password}
DAG          {stack.url}/dags/{DAG_ID} (unpaused; hourly runs score the last complete hour)
Storage      Azurite, {stack.storage_setting.split("BlobEndpoint=")[-1].rstrip(";")} (data in {stack.azurite.location})
Database     PostgreSQL on 127.0.0.1:{stack.postgres.port} (cluster in {stack.postgres.location})
Simulator    lands the current hour's windows every minute (log {stack.log_dir / "simulator.log"})
Press Ctrl-C to stop everything.""",
            flush=True,
        )
        while True:
            stack.check()  # a component that died ends `make ui` with its name, exit code and log
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nStopping ...", flush=True)
    finally:
        stack.stop()
        print(f"Stopped Airflow, the simulator, PostgreSQL and Azurite (state kept in {stack.home})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.devstack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    ui = sub.add_parser("ui", help="the stack in the foreground (default)")
    ui.add_argument("--home", type=Path, default=REPO / ".airflow" / "ui")
    ui.add_argument("--port", type=int, default=None, help="api-server port (default: a free one)")
    ui.add_argument("--devices", type=int, default=10)
    ui.add_argument("--tags", type=int, default=3)
    ui.add_argument("--hours", type=int, default=6, help="past hours of windows to land before starting")
    sim = sub.add_parser("live-simulator", help="land the current hour's windows every minute (SCORING_STORAGE)")
    sim.add_argument("--devices", type=int, default=10)
    sim.add_argument("--tags", type=int, default=3)
    sim.add_argument("--every", type=float, default=60)
    args = parser.parse_args(argv)
    if args.command == "live-simulator":
        live_simulator(args.devices, args.tags, args.every)
        return 0
    if args.command is None:
        args = ui.parse_args([])
    run_ui(args.home, port=args.port, devices=args.devices, tags=args.tags, hours=args.hours)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
