"""Where a shard runs. One interface, chosen by name: ``local`` (in the worker) or ``azure_batch``.

Every backend runs the same command, ``python -m sensor_scoring score-shard --spec <uri>``, so a shard behaves the
same on a laptop and on a Batch node, and the shard's result is read back from storage, not from the
process: that is all a remote backend can offer too.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Protocol

from sensor_scoring import settings as config, storage as st

log = logging.getLogger(__name__)


class ShardFailed(RuntimeError):
    """The shard's command ended badly; the message carries its exit code and the tail of its output."""


class Backend(Protocol):
    name: str

    def run_shard(self, spec_uri: str, *, storage_setting: str) -> dict[str, object]:
        """Run one shard to completion and return its result (the shard's ``result.json``)."""
        ...


def shard_command(spec_uri: str, python: str = "python") -> list[str]:
    """The one command line of a shard, shared by every backend."""
    return [python, "-m", "sensor_scoring", "score-shard", "--spec", spec_uri]


class LocalBackend:
    """Runs the shard command as a child process of the worker, streaming its output to the task log.

    A child process rather than a function call: the shard gets a fresh interpreter exactly as on Batch,
    and its memory is returned to the system when it ends.
    """

    name = "local"

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s

    def run_shard(self, spec_uri: str, *, storage_setting: str) -> dict[str, object]:
        env = dict(os.environ)
        env[config.STORAGE_ENV] = storage_setting  # through the environment: never on a command line or log
        command = shard_command(spec_uri, python=sys.executable)
        log.info("Running %s", " ".join(command))
        tail: list[str] = []
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.info("[shard] %s", line.rstrip())
                tail = (tail + [line.rstrip()])[-20:]
            code = proc.wait(timeout=self.timeout_s)
        if code != 0:
            raise ShardFailed(f"shard command exited with code {code}: " + " | ".join(tail[-5:]))
        return read_result(spec_uri, storage_setting)


def read_result(spec_uri: str, storage_setting: str) -> dict[str, object]:
    """The shard's ``result.json``, beside its spec: what every backend returns."""
    from sensor_scoring.steps.score import read_shard_result

    spec_container, spec_path = st.parse_uri(spec_uri)
    output_prefix = st.make_uri(spec_container, spec_path.rsplit("/", 1)[0] + "/")
    return read_shard_result(st.open_storage(storage_setting), output_prefix)


def shard_facts(storage: st.Storage, spec_uri: str) -> tuple[dict[str, str], str]:
    """The containers a shard touches (from its spec) and a version of the spec that changes whenever
    plan_shards rewrites it (its URI and last-modified time): Batch task ids derive from it."""
    container, path = st.parse_uri(spec_uri)
    spec = json.loads(storage.read_bytes(container, path))
    [info] = [b for b in storage.list(container, path) if b.name == path]
    return dict(spec["containers"]), f"{spec_uri}@{info.last_modified.isoformat()}"


def batch_task_env(storage_setting: str, containers: Mapping[str, str], sas_hours: float) -> dict[str, str]:
    """The whole storage access of a Batch task: SAS URLs to read ``models`` and read+write ``staging``,
    expiring after ``sas_hours``. The account key stays in Airflow. A storage retry budget set here is
    forwarded, so a node rides out an outage as the worker would."""
    sas = st.make_sas_setting(storage_setting, read=[containers["models"]], read_write=[containers["staging"]],
                              hours=sas_hours)
    budget = {name: os.environ[name] for name in (st.RETRIES_ENV, st.RETRY_BACKOFF_ENV) if os.environ.get(name)}
    return {config.STORAGE_ENV: sas, **budget}


class AzureBatchBackend:
    """Runs the shard command as an Azure Batch task and waits for it here, polling with backoff.

    For use outside Airflow (scripts, the contract tests). Inside Airflow the deferrable ``ScoreShardOperator``
    (plugins/) runs the same steps but waits in the triggerer, holding no worker slot.
    """

    name = "azure_batch"

    def __init__(self, client: Any = None, settings: Any = None, *, job: str | None = None, try_number: int = 1,
                 poll_s: float = 5.0, max_poll_s: float = 60.0, timeout_s: float | None = None) -> None:
        from sensor_scoring.backends import azure_batch as batch

        self.settings = settings or batch.BatchSettings.from_env()
        self._client = client
        self.job = job
        self.try_number = try_number
        self.poll_s, self.max_poll_s, self.timeout_s = poll_s, max_poll_s, timeout_s

    @property
    def client(self) -> Any:
        if self._client is None:
            from airflow.providers.microsoft.azure.hooks.batch import AzureBatchHook

            self._client = AzureBatchHook(self.settings.conn_id).get_conn()
        return self._client

    def submit(self, spec_uri: str, *, storage_setting: str, shard: int, label: str = "") -> Any:
        from sensor_scoring.backends import azure_batch as batch

        containers, version = shard_facts(st.open_storage(storage_setting), spec_uri)
        job = self.job or batch.job_id("scoring", spec_uri.rsplit("/", 2)[0])
        wall = timedelta(seconds=self.timeout_s * 1.1) if self.timeout_s else None
        return batch.submit_shard(
            self.client, self.settings, job=job, shard=shard, spec_uri=spec_uri, spec_version=version,
            try_number=self.try_number, task_env=batch_task_env(storage_setting, containers, self.settings.sas_hours),
            max_wall_clock=wall, label=label, sweep_prefix=batch.job_prefix("scoring") if self.job is None else None,
        )

    def wait(self, job: str, task: str) -> dict[str, Any]:
        """Poll the task with exponential backoff until it completes; terminate it on timeout."""
        from sensor_scoring.backends import azure_batch as batch

        delay, started = self.poll_s, time.monotonic()
        while True:
            summary = batch.task_summary(self.client.get_task(job, task))
            if summary["state"] == "completed":
                return summary
            if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                batch.terminate_task(self.client, job, task)
                return summary | {"state": "timeout", "last_state": summary["state"]}
            time.sleep(delay)
            delay = min(delay * 2, self.max_poll_s)

    def run_shard(self, spec_uri: str, *, storage_setting: str) -> dict[str, object]:
        container, path = st.parse_uri(spec_uri)
        shard = int(json.loads(st.open_storage(storage_setting).read_bytes(container, path))["shard"])
        submission = self.submit(spec_uri, storage_setting=storage_setting, shard=shard)
        if not submission.reused:
            check_task_outcome(self.wait(submission.job_id, submission.task_id), client=self.client,
                               job=submission.job_id)
        return read_result(spec_uri, storage_setting)


def check_task_outcome(summary: Mapping[str, Any], *, client: Any = None, job: str = "") -> None:
    """Raise ShardFailed unless the Batch task completed with exit code 0 (its own code, not the job's)."""
    from sensor_scoring.backends import azure_batch as batch

    if summary["state"] == "completed" and summary["exit_code"] == 0:
        return
    tail = batch.read_task_file_tail(client, job, summary["task_id"], "stderr.txt", lines=5) if client else ""
    if summary["state"] == "timeout":
        raise ShardFailed(f"Batch task {summary['task_id']} did not finish in time (was {summary.get('last_state', '?')}); "
                          "it was terminated")
    raise ShardFailed(f"Batch task {summary['task_id']} exited with code {summary['exit_code']}"
                      f" (failure: {summary.get('failure')})" + (": " + " | ".join(tail.splitlines()) if tail else ""))


BACKENDS: Mapping[str, type] = {"local": LocalBackend, "azure_batch": AzureBatchBackend}
PLANNED: dict[str, str] = {}


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``; a clear error for unknown or not-yet-built ones."""
    if name in BACKENDS:
        return BACKENDS[name]()
    if name in PLANNED:
        raise NotImplementedError(PLANNED[name])
    raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
