"""A fake Azure Batch account on loopback: the REST endpoints the azure-batch 15 SDK calls, with real processes.

Not a mock of our code: the real SDK (``azure.batch.BatchClient``, sync and aio) talks HTTP to this server,
which answers with the JSON bodies of the Batch REST API (api-version 2025-06-01) and runs each added task's
command line as a local process, with the task's environment settings and nothing else of the test's
environment (as on a Batch node). The container image is recorded, not run: the scorer image is checked by
the image tests. Requests are recorded so tests can assert what the SDK sent.

Authentication: the SDK signs every request with Batch shared-key (HMAC-SHA256 over the verb, standard
headers, ``ocp-*`` headers, account and path). The server recomputes that signature with the fake account
key and answers 403 when it differs, so a client with a wrong key fails here as it would on Azure.

Simulations the tests switch on: ``start_delay_s`` (a task waits in ``active`` as on a pool scaling up from
zero), ``exec_delay_s`` (the process sleeps before exec'ing the command, so it can be killed mid-run),
and :meth:`FakeBatch.preempt` (a spot node is reclaimed: the process is killed and Batch requeues the task).

The :func:`fake_batch` fixture (a pytest plugin of ``tests/conftest.py``) is how every test gets one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest

ACCOUNT = "fakebatch"
KEY = base64.b64encode(b"fake-batch-account-key-for-tests").decode()
SIGNED_HEADERS = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class FakeTask:
    """One Batch task: its request body, state, process and timings."""

    def __init__(self, job: str, body: dict[str, Any], root: Path) -> None:
        self.job, self.body, self.id = job, body, body["id"]
        self.state = "active"
        self.created = self.state_changed = _now()
        self.dir = root / job / self.id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.pids: list[int] = []
        self.exit_code: int | None = None
        self.result: str | None = None
        self.failure: dict[str, Any] | None = None
        self.start_time: datetime | None = None
        self.end_time: datetime | None = None
        self.runs: list[tuple[float, float | None]] = []  # (start, end) per attempt, time.time()
        self.requeues = 0
        self.terminated = False
        self.env: dict[str, str] = {}  # the environment its process got
        self.lock = threading.Lock()

    def as_json(self, base: str) -> dict[str, Any]:
        info: dict[str, Any] = {"retryCount": 0, "requeueCount": self.requeues}
        if self.start_time:
            info["startTime"] = _iso(self.start_time)
        if self.state == "completed":
            info |= {"endTime": _iso(self.end_time), "exitCode": self.exit_code, "result": self.result}
            if self.failure:
                info["failureInfo"] = self.failure
        out = {k: v for k, v in self.body.items()}
        out |= {
            "url": f"{base}/jobs/{self.job}/tasks/{self.id}",
            "eTag": "0x1",
            "creationTime": _iso(self.created),
            "lastModified": _iso(self.state_changed),
            "state": self.state,
            "stateTransitionTime": _iso(self.state_changed),
            "executionInfo": info,
        }
        if self.start_time:
            out["nodeInfo"] = {
                "poolId": "fake",
                "nodeId": "node-1",
                "taskRootDirectory": str(self.dir),
                "taskRootDirectoryUrl": f"{base}/fake-node/{self.job}/{self.id}",
            }
        return out


class FakeBatch:
    """The server: start() on a free loopback port, stop() ends every task process and the server."""

    def __init__(
        self, root: Path, *, start_delay_s: float = 0.0, exec_delay_s: float = 0.0, python_dir: str | None = None
    ) -> None:
        self.root = Path(root)
        self.pools: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[tuple[str, str], FakeTask] = {}
        self.requests: list[dict[str, Any]] = []
        self.start_delay_s, self.exec_delay_s = start_delay_s, exec_delay_s
        # "python" on the task's PATH is this interpreter, as /opt/venv/bin is on the scorer image's PATH
        self.python_dir = python_dir or str(Path(sys.executable).parent)
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle ---
    def start(self) -> FakeBatch:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-batch").start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def connection_json(self) -> str:
        """An Airflow ``azure_batch`` connection (for AIRFLOW_CONN_AZURE_BATCH_DEFAULT) to this server."""
        return json.dumps(
            {"conn_type": "azure_batch", "login": ACCOUNT, "password": KEY, "extra": {"account_url": self.url}}
        )

    def stop(self) -> None:
        with self.lock:
            for task in self.tasks.values():
                self._kill(task)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- task execution ---
    def _launch(self, task: FakeTask) -> None:
        """Run the task after ``start_delay_s`` (node allocation), as its own process group."""

        def run() -> None:
            time.sleep(self.start_delay_s)
            with task.lock:
                if task.state != "active" or task.terminated:
                    return
                argv = shlex.split(task.body["commandLine"])
                if self.exec_delay_s:
                    argv = [
                        sys.executable,
                        "-c",
                        "import os, sys, time; time.sleep(float(sys.argv[1])); os.execvp(sys.argv[2], sys.argv[2:])",
                        str(self.exec_delay_s),
                        *argv,
                    ]
                env = {
                    "PATH": f"{self.python_dir}:/usr/bin:/bin",
                    "HOME": str(task.dir),
                    "LANG": "C.UTF-8",
                    "AZ_BATCH_JOB_ID": task.job,
                    "AZ_BATCH_TASK_ID": task.id,
                    "AZ_BATCH_NODE_ID": "node-1",
                    "AZ_BATCH_TASK_WORKING_DIR": str(task.dir / "wd"),
                }
                env |= {s["name"]: s.get("value", "") for s in task.body.get("environmentSettings") or []}
                task.env = env
                (task.dir / "wd").mkdir(exist_ok=True)
                stdout = open(task.dir / "stdout.txt", "ab")
                stderr = open(task.dir / "stderr.txt", "ab")
                task.proc = subprocess.Popen(
                    argv, env=env, cwd=task.dir / "wd", stdout=stdout, stderr=stderr, start_new_session=True
                )
                stdout.close(), stderr.close()
                task.pids.append(task.proc.pid)
                task.state, task.state_changed = "running", _now()
                task.start_time = task.start_time or _now()
                task.runs.append((time.time(), None))
                proc = task.proc
            code = proc.wait()
            with task.lock:
                if task.proc is not proc or task.state != "running":
                    return  # preempted or terminated: they set the state
                task.runs[-1] = (task.runs[-1][0], time.time())
                self._complete(task, code)

        threading.Thread(target=run, daemon=True, name=f"task-{task.id}").start()

    def _complete(self, task: FakeTask, code: int, failure: dict[str, Any] | None = None) -> None:
        task.exit_code = code if code >= 0 else 128 - code  # a signal as a shell reports it
        task.result = "success" if code == 0 and not failure else "failure"
        task.failure = failure or (
            None
            if code == 0
            else {
                "category": "usererror",
                "code": "FailureExitCode",
                "message": f"The task exited with exit code {task.exit_code}",
            }
        )
        task.state, task.state_changed, task.end_time = "completed", _now(), _now()

    def _kill(self, task: FakeTask) -> int | None:
        proc = task.proc
        if proc is None or proc.poll() is not None:
            return None
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def terminate(self, job: str, task_id: str) -> None:
        task = self.tasks[(job, task_id)]
        with task.lock:
            task.terminated = True
            if task.state == "completed":
                return
            code = self._kill(task)
            if task.runs and task.runs[-1][1] is None:
                task.runs[-1] = (task.runs[-1][0], time.time())
            self._complete(
                task,
                code if code is not None else -signal.SIGTERM,
                {"category": "usererror", "code": "TaskEnded", "message": "Task Was Ended by User Request"},
            )

    def preempt(self, job: str, task_id: str) -> None:
        """A low-priority node is reclaimed: the running process dies and Batch puts the task back in the queue."""
        task = self.tasks[(job, task_id)]
        with task.lock:
            assert task.state == "running", f"can only preempt a running task, {task_id} is {task.state}"
            self._kill(task)
            task.runs[-1] = (task.runs[-1][0], time.time())
            task.proc, task.requeues = None, task.requeues + 1
            task.state, task.state_changed = "active", _now()
        self._launch(task)

    def wait_for(self, predicate, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("fake Batch did not reach the expected state")
            time.sleep(0.05)

    def bodies(self, method: str, path_suffix: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["method"] == method and r["path"].endswith(path_suffix)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client closing its keep-alive socket is normal
            super().handle_error(request, client_address)


def _error(code: str, message: str) -> dict[str, Any]:
    return {
        "odata.metadata": "fake/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
        "code": code,
        "message": {"lang": "en-US", "value": message},
    }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeBatch
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet: requests are recorded instead
        pass

    def _signature_ok(self, url) -> bool:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith(f"SharedKey {ACCOUNT}:"):
            return False
        headers = {k.lower(): v for k, v in self.headers.items() if v}
        if self.command not in ("GET", "HEAD"):
            headers.setdefault("content-length", "0")
        text = self.command + "\n" + "\n".join(headers.get(h, "") for h in SIGNED_HEADERS) + "\n"
        text += "".join(f"{k}:{v}\n" for k, v in sorted((k, v) for k, v in headers.items() if "ocp-" in k))
        text += f"/{ACCOUNT}{url.path}"
        query = parse_qs(url.query)
        for name in sorted(query):
            if query[name][0]:
                text += f"\n{name}:{query[name][0]}"
        expected = base64.b64encode(hmac.new(base64.b64decode(KEY), text.encode(), hashlib.sha256).digest()).decode()
        return hmac.compare_digest(auth.split(":", 1)[1], expected)

    def _send(self, status: int, body: Any = None, *, raw: bytes | None = None) -> None:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("request-id", str(uuid.uuid4()))
        self.send_header("ETag", "0x1")
        self.send_header("Last-Modified", format_datetime(_now(), usegmt=True))
        if status == 201:
            self.send_header("DataServiceId", self.fake.url + self.path.split("?")[0])
        if body is not None and raw is None:
            self.send_header("Content-Type", "application/json;odata=minimalmetadata")
        elif raw is not None:
            self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        fake = self.fake
        fake.requests.append(
            {
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "body": body,
                "headers": dict(self.headers.items()),
            }
        )
        if not self._signature_ok(url):
            return self._send(403, _error("AuthenticationFailed", "Server failed to authenticate the request."))
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        base = fake.url
        with fake.lock:
            match (self.command, parts):
                case ("POST", ["pools"]):
                    if body["id"] in fake.pools:
                        return self._send(409, _error("PoolExists", "The specified pool already exists."))
                    fake.pools[body["id"]] = body | {
                        "state": "active",
                        "allocationState": "steady",
                        "url": f"{base}/pools/{body['id']}",
                    }
                    return self._send(201)
                case ("HEAD" | "GET", ["pools", pool]):
                    if pool not in fake.pools:
                        return self._send(404, _error("PoolNotFound", "The specified pool does not exist."))
                    return self._send(200, fake.pools[pool])
                case ("POST", ["jobs"]):
                    if body["id"] in fake.jobs:
                        return self._send(409, _error("JobExists", "The specified job already exists."))
                    fake.jobs[body["id"]] = body | {
                        "state": "active",
                        "url": f"{base}/jobs/{body['id']}",
                        "creationTime": _iso(_now()),
                    }
                    return self._send(201)
                case ("GET", ["jobs", job]):
                    if job not in fake.jobs:
                        return self._send(404, _error("JobNotFound", "The specified job does not exist."))
                    return self._send(200, fake.jobs[job])
                case ("GET", ["jobs"]):
                    return self._send(200, {"value": list(fake.jobs.values())})
                case ("DELETE", ["jobs", job]):
                    if fake.jobs.pop(job, None) is None:
                        return self._send(404, _error("JobNotFound", "The specified job does not exist."))
                    for key in [k for k in fake.tasks if k[0] == job]:
                        fake._kill(fake.tasks.pop(key))
                    return self._send(202)
                case ("GET", ["jobs", job, "taskcounts"]):
                    states = [t.state for (j, _), t in fake.tasks.items() if j == job]
                    done = [t for (j, _), t in fake.tasks.items() if j == job and t.state == "completed"]
                    counts = {
                        "active": states.count("active") + states.count("preparing"),
                        "running": states.count("running"),
                        "completed": len(done),
                        "succeeded": sum(t.exit_code == 0 for t in done),
                        "failed": sum(t.exit_code != 0 for t in done),
                    }
                    return self._send(200, {"taskCounts": counts, "taskSlotCounts": counts})
                case ("POST", ["jobs", job, "terminate"]):
                    if job not in fake.jobs:
                        return self._send(404, _error("JobNotFound", "The specified job does not exist."))
                    for j, t in list(fake.tasks):
                        if j == job:
                            fake.terminate(j, t)
                    fake.jobs[job]["state"] = "completed"
                    return self._send(202)
                case ("POST", ["jobs", job, "tasks"]):
                    if job not in fake.jobs:
                        return self._send(404, _error("JobNotFound", "The specified job does not exist."))
                    if fake.jobs[job]["state"] != "active":
                        return self._send(
                            409, _error("JobCompleted", "The specified job is already in a completed state.")
                        )
                    if (job, body["id"]) in fake.tasks:
                        return self._send(409, _error("TaskExists", "The specified task already exists."))
                    task = fake.tasks[(job, body["id"])] = FakeTask(job, body, fake.root)
                    fake._launch(task)
                    return self._send(201)
                case ("GET", ["jobs", job, "tasks"]):
                    found = [t.as_json(base) for (j, _), t in fake.tasks.items() if j == job]
                    return self._send(200, {"value": found})
                case ("GET", ["jobs", job, "tasks", task_id]):
                    if (job, task_id) not in fake.tasks:
                        return self._send(404, _error("TaskNotFound", "The specified task does not exist."))
                    return self._send(200, fake.tasks[(job, task_id)].as_json(base))
                case ("POST", ["jobs", job, "tasks", task_id, "terminate"]):
                    if (job, task_id) not in fake.tasks:
                        return self._send(404, _error("TaskNotFound", "The specified task does not exist."))
                    if fake.tasks[(job, task_id)].state == "completed":
                        return self._send(409, _error("TaskCompleted", "The specified task is already completed."))
                    fake.terminate(job, task_id)
                    return self._send(204)
                case ("DELETE", ["jobs", job, "tasks", task_id]):
                    task = fake.tasks.pop((job, task_id), None)
                    if task is None:
                        return self._send(404, _error("TaskNotFound", "The specified task does not exist."))
                    fake._kill(task)
                    return self._send(200)
                case ("GET", ["jobs", job, "tasks", task_id, "files", name]):
                    task = fake.tasks.get((job, task_id))
                    if task is None or not (task.dir / name).is_file():
                        return self._send(404, _error("FileNotFound", "The specified file does not exist."))
                    return self._send(200, raw=(task.dir / name).read_bytes())
        return self._send(
            400, _error("InvalidUri", f"the fake Batch server does not implement {self.command} {url.path}")
        )

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = do_PATCH = _handle


@pytest.fixture
def fake_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatch]:
    """A started fake Batch account, the ``azure_batch_default`` connection of this process; stopped (with every
    task process) at the end. Tests switch its simulations on by setting ``start_delay_s`` / ``exec_delay_s``."""
    server = FakeBatch(tmp_path / "batch").start()
    monkeypatch.setenv("AIRFLOW_CONN_AZURE_BATCH_DEFAULT", server.connection_json())
    try:
        yield server
    finally:
        server.stop()
