"""A fake Azure Batch account on loopback: the REST endpoints the azure-batch 15 SDK calls, with real processes.

Not a mock of our code: the real SDK (``azure.batch.BatchClient``, sync and aio) talks HTTP to this server,
which answers with the JSON bodies of the Batch REST API (api-version 2025-06-01) and runs each added task's
command line as a local process, with the task's environment settings and nothing else of the test's
environment (as on a Batch node). The container image is recorded, not run: the scorer image is checked by
the image tests. Requests are recorded so tests can assert what the SDK sent.

Authentication, both ways Batch accepts: shared key (the SDK signs every request with HMAC-SHA256 over the verb,
standard headers, ``ocp-*`` headers, account and path; the server recomputes that signature with the fake account
key and answers 403 when it differs, so a client with a wrong key fails here as it would on Azure), and Entra ID
(``Authorization: Bearer``, accepted only over HTTPS as azure-core sends it: start with ``tls=True``; the token must
be an Entra access token for the Batch resource, its claims checked as Azurite's OAuth mode checks them, without
the signature: :func:`token_claims`). The tokens come from the tests' one managed-identity endpoint
(``tests/support/managed_identity.py``), from which the real azure-identity ``ManagedIdentityCredential`` /
``DefaultAzureCredential`` fetch them.
Each recorded request names its ``principal``: ``SharedKey`` or the client id of the identity whose token it bore.
The tasks of a pool that has an identity (:meth:`FakeBatch.add_pool_with_identity`) see the identity endpoint, as
a node's processes see Azure's instance metadata endpoint; :attr:`FakeBatch.node_ca_bundle` is the CA a node trusts
(a loopback storage server's own, as a node trusts the public CAs of Azure's endpoints).

Task definitions are checked as a key-free deployment needs them (:func:`key_material`): a task whose environment
or command line holds ``AccountKey=``, the Batch account key, or a SAS signed with an account key (a ``sig``
without the user-delegation fields ``skoid``, ``sktid``, ...) is refused with 400 ``TaskCarriesAccountKey``.
Tests whose storage is key-authenticated (the shared-key mode, which keeps working) allow key-signed SAS URLs
with ``allow_key_signed_sas = True``; an ``AccountKey=`` is refused always.

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
import re
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from tests.support.managed_identity import BATCH_RESOURCE, ManagedIdentity

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


#: The signed fields only a user delegation SAS carries (the delegating principal and its key's validity).
USER_DELEGATION_FIELDS = ("skoid", "sktid", "skt", "ske", "sks", "skv")
_SAS_QUERY = re.compile(r"(?:[A-Za-z0-9_-]+=[^&\s\"'?;]*&)*sig=[^&\s\"'?;]*(?:&[A-Za-z0-9_-]+=[^&\s\"'?;]*)*")


def key_material(text: str, *, batch_key: str = KEY, allow_key_signed_sas: bool = False) -> list[str]:
    """Why ``text`` (an environment value or a command line of a task) would hand a task an account key: ``[]``
    when it holds none. A SAS is key-signed unless it carries every user-delegation field."""
    found = []
    if "accountkey=" in text.lower():
        found.append("an AccountKey= (a storage account key)")
    if batch_key in text:
        found.append("the Batch account key")
    if not allow_key_signed_sas:
        for match in _SAS_QUERY.finditer(text):
            fields = parse_qs(match.group(0))
            missing = [f for f in USER_DELEGATION_FIELDS if not fields.get(f)]
            if missing:
                found.append(f"a SAS signed with an account key (no {', '.join(missing)})")
    return found


def token_claims(token: str, resource: str = BATCH_RESOURCE) -> dict[str, Any] | None:
    """The claims of an Entra access token for ``resource``, checked as a service checks them except for the
    signature (as Azurite's ``--oauth basic`` does): a JWT, audience, Entra issuer, validity window; else None."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    now = time.time()
    issuers = ("https://sts.windows.net/", "https://login.microsoftonline.com/")
    if not isinstance(claims, dict) or str(claims.get("aud", "")).rstrip("/") != resource.rstrip("/"):
        return None
    if not str(claims.get("iss", "")).startswith(issuers):
        return None
    if not float(claims.get("nbf", 0)) <= now < float(claims.get("exp", 0)):
        return None
    return claims


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (no network): ``(cert.pem, key.pem)``. It is its own CA,
    so clients trust it with ``REQUESTS_CA_BUNDLE`` (or ``connection_verify``) pointing at ``cert.pem``."""
    import ipaddress
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-batch.localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - timedelta(minutes=5))
        .not_valid_after(_now() + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class FakeBatch:
    """The server: start() on a free loopback port, stop() ends every task process and the server. With ``tls``
    it serves HTTPS (a certificate of its own, :attr:`ca_file`), which Entra ID (Bearer) clients require; its
    ``identity`` endpoint is what the nodes of a pool with an identity ask for tokens."""

    def __init__(
        self,
        root: Path,
        *,
        start_delay_s: float = 0.0,
        exec_delay_s: float = 0.0,
        python_dir: str | None = None,
        tls: bool = False,
        identity: ManagedIdentity | None = None,
    ) -> None:
        self.root = Path(root)
        self.tls, self.identity = tls, identity
        self.ca_file: Path | None = None
        self.node_ca_bundle: Path | None = None
        self.allow_key_signed_sas = False
        self.refused_tasks: list[dict[str, Any]] = []
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
        if self.tls:
            self.ca_file, key_file = self_signed_certificate(self.root / "tls")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.ca_file, key_file)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-batch").start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._server.server_address[1]}"

    def connection_json(self, *, entra: bool = False, **extra: str) -> str:
        """An Airflow ``azure_batch`` connection (for AIRFLOW_CONN_AZURE_BATCH_DEFAULT) to this server: with the
        account's shared key, or with ``entra`` none (the provider's hook then uses ``DefaultAzureCredential``)."""
        secret = {} if entra else {"login": ACCOUNT, "password": KEY}
        return json.dumps({"conn_type": "azure_batch", **secret, "extra": {"account_url": self.url, **extra}})

    def add_pool_with_identity(self, pool_id: str, client_id: str, *, name: str = "scoring-pool-identity") -> None:
        """A pool as Azure Resource Manager creates it with a user-assigned identity (the Batch service API cannot):
        its GET shows the identity's resource id and client id."""
        resource = (
            f"/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        )
        self.pools[pool_id] = {
            "id": pool_id,
            "url": f"{self.url}/pools/{pool_id}",
            "state": "active",
            "allocationState": "steady",
            "vmSize": "standard_d2s_v3",
            "identity": {
                "type": "UserAssigned",
                "userAssignedIdentities": [{"resourceId": resource, "clientId": client_id, "principalId": "p-1"}],
            },
        }

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
                pool = self.pools.get(self.jobs.get(task.job, {}).get("poolInfo", {}).get("poolId", ""), {})
                if pool.get("identity") and self.identity is not None:
                    # a node of a pool with an identity answers token requests for it (IMDS on Azure)
                    env |= self.identity.env()
                if self.node_ca_bundle is not None:
                    env["REQUESTS_CA_BUNDLE"] = str(self.node_ca_bundle)
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

    def _principal(self, url) -> str | None:
        """Who sent the request: ``SharedKey``, the client id of a valid Entra token, or None (refused)."""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            claims = token_claims(auth[len("Bearer ") :])
            if not self.fake.tls or claims is None:
                return None
            return str(claims.get("appid") or claims.get("oid") or claims.get("sub") or "?")
        return "SharedKey" if self._signature_ok(url) else None

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
        principal = self._principal(url)
        fake.requests.append(
            {
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "body": body,
                "headers": dict(self.headers.items()),
                "principal": principal,
            }
        )
        if principal is None:
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
                    texts = [body.get("commandLine") or ""]
                    texts += [e.get("value") or "" for e in body.get("environmentSettings") or []]
                    found = [
                        reason
                        for text in texts
                        for reason in key_material(text, allow_key_signed_sas=fake.allow_key_signed_sas)
                    ]
                    if found:
                        fake.refused_tasks.append({"job": job, "id": body["id"], "reasons": found})
                        return self._send(
                            400,
                            _error("TaskCarriesAccountKey", f"the task definition hands the task {'; '.join(found)}"),
                        )
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
def entra_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, managed_identity: ManagedIdentity
) -> Iterator[FakeBatch]:
    """A fake Batch account on HTTPS reached with Entra ID only: the ``azure_batch_default`` connection has no key,
    so the provider's hook uses ``DefaultAzureCredential``, which finds the fake managed identity in this process's
    environment (and trusts the server's certificate through ``REQUESTS_CA_BUNDLE``)."""
    server = FakeBatch(tmp_path / "batch", tls=True, identity=managed_identity).start()
    assert server.ca_file is not None
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
    monkeypatch.setenv("AIRFLOW_CONN_AZURE_BATCH_DEFAULT", server.connection_json(entra=True))
    try:
        yield server
    finally:
        server.stop()


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


#: The client id of Airflow's user-assigned identity (the workers', the triggerer's) in the key-free tests.
AIRFLOW_IDENTITY = "11111111-2222-3333-4444-555555555555"
#: The client id of the Batch pool's user-assigned identity in the key-free tests.
POOL_IDENTITY = "99999999-8888-7777-6666-555555555555"
#: The pool the key-free tests' tasks run on: made with the pool identity, as Azure Resource Manager makes it.
IDENTITY_POOL = "scoring-identity-pool"


@dataclass
class KeylessAzure:
    """Azure as a deployment without keys has it: the Batch account reached with Entra ID, storage on Azurite's
    OAuth mode, one managed-identity endpoint issuing both kinds of token, a pool with its own identity."""

    batch: FakeBatch
    azurite: Any  # dev.azurite.Azurite, in its OAuth mode with its debug log
    identity: ManagedIdentity

    @property
    def storage_url(self) -> str:
        return str(self.azurite.account_url)


@pytest.fixture
def keyless_azure(
    entra_batch: FakeBatch,
    oauth_azurite: Any,
    managed_identity: ManagedIdentity,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> KeylessAzure:
    """No key anywhere: this process runs as :data:`AIRFLOW_IDENTITY` (``AZURE_CLIENT_ID``, as on an AKS node or
    VM with a user-assigned identity), ``SCORING_STORAGE`` is Azurite's account URL, the Batch connection has no
    key, and ``SCORING_BATCH_POOL_IDENTITY_CLIENT_ID`` names the identity of the pool :data:`IDENTITY_POOL`, whose
    nodes reach the same endpoint and trust Azurite's CA. This process trusts both servers' CAs (one bundle)."""
    from sensor_scoring import settings as config
    from sensor_scoring.storage import blob as blob_module

    assert entra_batch.ca_file is not None and oauth_azurite.ca_bundle is not None
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(entra_batch.ca_file.read_bytes() + oauth_azurite.ca_bundle.read_bytes())
    for name, value in {
        "REQUESTS_CA_BUNDLE": str(bundle),
        "AZURE_CLIENT_ID": AIRFLOW_IDENTITY,
        config.STORAGE_ENV: oauth_azurite.account_url,
        "SCORING_BATCH_POOL_ID": IDENTITY_POOL,
        "SCORING_BATCH_POOL_IDENTITY_CLIENT_ID": POOL_IDENTITY,
    }.items():
        monkeypatch.setenv(name, value)
    # credentials are cached per process: this test's identity, not an earlier test's
    monkeypatch.setattr(blob_module, "_CREDENTIALS", {})
    monkeypatch.setattr(blob_module, "_DEFAULT_CREDENTIAL", [])
    entra_batch.add_pool_with_identity(IDENTITY_POOL, POOL_IDENTITY)
    entra_batch.node_ca_bundle = oauth_azurite.ca_bundle
    entra_batch.allow_key_signed_sas = False
    return KeylessAzure(entra_batch, oauth_azurite, managed_identity)
