"""``ScoreShardOperator``: one mapped instance per shard, on the local or the Azure Batch backend."""
from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, Context

from sensor_scoring_airflow.links import XCOM_KEY, ShardOutputsLink


class ScoreShardOperator(BaseOperator):
    """Scores one shard: ``python -m sensor_scoring score-shard --spec <uri>``, where ``backend`` says.

    ``local``: a child process of the worker, as before. ``azure_batch``: adds the shard's task to the run's
    Batch job (pool and job created when missing), then defers to :class:`BatchTaskTrigger`, so a shard waiting
    on Batch holds no worker slot and all shards of an hour run on Batch at once. It resumes in
    ``execute_complete`` and succeeds or fails on its own task's exit code. The Batch task reaches storage
    only through SAS URLs (read ``models``, read+write ``staging``) that expire after ``SCORING_BATCH_SAS_HOURS``.
    """

    template_fields: Sequence[str] = ("backend",)
    operator_extra_links = (ShardOutputsLink(),)
    ui_color = "#e8f4fd"

    def __init__(self, *, shard: dict[str, Any], backend: str = "local", batch_timeout: timedelta | None = None,
                 poll_interval: float | None = None, max_poll_interval: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard = shard
        self.backend = backend
        self.batch_timeout = batch_timeout
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self._batch: dict[str, str] | None = None  # job and task ids once submitted, for on_kill

    # --- both backends ---
    def _prepare(self, context: Context) -> str:
        """Name the instance by its sensors (map_index_template); return the storage setting of the run."""
        from sensor_scoring_airflow import glue as airflow_glue

        context["shard_label"] = self.shard["label"]  # type: ignore[typeddict-unknown-key]
        setting = airflow_glue.storage_setting()
        return setting

    def execute(self, context: Context) -> dict[str, Any] | None:
        setting = self._prepare(context)
        self._push_link(context, setting)
        if self.backend == "local":
            from sensor_scoring.backends import LocalBackend

            return LocalBackend().run_shard(self.shard["spec_uri"], storage_setting=setting)
        if self.backend == "azure_batch":
            return self._submit_to_batch(context, setting)
        from sensor_scoring.backends import get_backend

        get_backend(self.backend)  # the clear "unknown backend" error
        raise ValueError(f"ScoreShardOperator does not run backend {self.backend!r}")

    def _push_link(self, context: Context, setting: str) -> None:
        from sensor_scoring import layout, settings as config
        from sensor_scoring_airflow import glue as airflow_glue

        try:
            hour = airflow_glue.hour_for(context, context["params"])
            prefix = layout.partition_prefix(hour.start) if hour.end - hour.start == timedelta(hours=1) else ""
            url = outputs_url(setting, config.Containers.from_env().predictions, prefix)
        except Exception as exc:  # a link is a convenience: never fail a shard over it
            self.log.info("No outputs link for this shard: %s", exc)
            return
        if url:
            context["ti"].xcom_push(key=XCOM_KEY, value=url)

    # --- azure_batch ---
    def _submit_to_batch(self, context: Context, setting: str) -> dict[str, Any]:
        from sensor_scoring import backends, storage as st
        from sensor_scoring.backends import azure_batch as batch

        settings = batch.BatchSettings.from_env()
        client = self._client(settings.conn_id)
        containers, version = backends.shard_facts(st.open_storage(setting), self.shard["spec_uri"])
        ti = context["ti"]
        timeout = self.batch_timeout or self.execution_timeout
        submission = batch.submit_shard(
            client, settings, job=batch.job_id(ti.dag_id, ti.run_id), shard=int(self.shard["shard"]),
            spec_uri=self.shard["spec_uri"], spec_version=version, try_number=ti.try_number,
            task_env=backends.batch_task_env(setting, containers, settings.sas_hours),
            max_wall_clock=timeout * 1.1 if timeout else None, label=self.shard["label"],
            sweep_prefix=batch.job_prefix(ti.dag_id),
        )
        self._batch = {"job_id": submission.job_id, "task_id": submission.task_id, "conn_id": settings.conn_id}
        urls = batch.output_file_urls(batch.account_url_of(self._connection(settings.conn_id)),
                                      submission.job_id, submission.task_id)
        self.log.info("Batch job %s, task %s (try %d%s). Output files: stdout %s stderr %s",
                      submission.job_id, submission.task_id, ti.try_number,
                      ", reused" if submission.reused else "", urls["stdout"], urls["stderr"])
        if submission.reused:
            summary = batch.task_summary(client.get_task(submission.job_id, submission.task_id))
            return self._finish(summary, client, setting)
        self.defer(
            trigger=_trigger()(settings.conn_id, submission.job_id, submission.task_id,
                               deadline=_deadline(ti, timeout),
                               poll_interval=self.poll_interval or settings.poll_s,
                               max_poll_interval=self.max_poll_interval or settings.max_poll_s),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resumed by the trigger: judge the shard by its own Batch task's exit code."""
        from sensor_scoring.backends import azure_batch as batch

        setting = self._prepare(context)
        settings = batch.BatchSettings.from_env()
        self._batch = {"job_id": batch.job_id(context["ti"].dag_id, context["ti"].run_id),
                       "task_id": event["task_id"], "conn_id": settings.conn_id}
        if event.get("status") == "timeout":
            event = {**event, "state": "timeout"}
        return self._finish(event, self._client(settings.conn_id), setting)

    def _finish(self, summary: dict[str, Any], client: Any, setting: str) -> dict[str, Any]:
        from sensor_scoring import backends
        from sensor_scoring.backends import azure_batch as batch

        job, task = self._batch["job_id"], self._batch["task_id"]  # type: ignore[index]
        urls = batch.output_file_urls(batch.account_url_of(self._connection(self._batch["conn_id"])), job, task)  # type: ignore[index]
        self.log.info("Batch task %s/%s: state %s, exit code %s, requeued %s time(s), ran %s .. %s on node %s. "
                      "stdout: %s stderr: %s", job, task, summary.get("last_state", summary["state"]),
                      summary["exit_code"], summary.get("requeue_count", 0), summary.get("start_time"),
                      summary.get("end_time"), summary.get("node_id"), urls["stdout"], urls["stderr"])
        if summary["state"] == "completed" and summary["exit_code"] == 0:
            return backends.read_result(self.shard["spec_uri"], setting)
        for name in ("stdout.txt", "stderr.txt"):
            tail = batch.read_task_file_tail(client, job, task, name)
            if tail:
                self.log.error("Tail of %s of Batch task %s:\n%s", name, task, tail)
        backends.check_task_outcome(summary, job=job)
        raise AssertionError("unreachable: check_task_outcome raises for a failed task")

    def on_kill(self) -> None:
        """The worker is told to stop this try (mark failed, clear, timeout): stop its Batch task as well."""
        if not self._batch:
            return
        from sensor_scoring.backends import azure_batch as batch

        self.log.info("Terminating Batch task %s/%s", self._batch["job_id"], self._batch["task_id"])
        batch.terminate_task(self._client(self._batch["conn_id"]), self._batch["job_id"], self._batch["task_id"])

    def _connection(self, conn_id: str) -> Any:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id)

    def _client(self, conn_id: str) -> Any:
        from airflow.providers.microsoft.azure.hooks.batch import AzureBatchHook

        return AzureBatchHook(conn_id).get_conn()


def _deadline(ti: Any, timeout: timedelta | None) -> float | None:
    """When the trigger gives up and terminates the Batch task: shortly before Airflow's own execution
    timeout (counted from the try's start), which would cancel the trigger without a chance to terminate."""
    if not timeout:
        return None
    start = ti.start_date.timestamp() if getattr(ti, "start_date", None) else time.time()
    margin = min(60.0, timeout.total_seconds() * 0.05)
    return max(time.time() + 1.0, start + timeout.total_seconds() - margin)


def _trigger() -> type:
    from sensor_scoring_airflow.triggers import BatchTaskTrigger

    return BatchTaskTrigger


def outputs_url(storage_setting: str, container: str, prefix: str) -> str:
    """A browsable listing of ``container/prefix`` (Azure or Azurite); '' for local-directory storage."""
    from urllib.parse import quote

    from sensor_scoring import storage as st

    if not st.is_connection_string(storage_setting):
        return ""
    from azure.storage.blob import BlobServiceClient

    account = BlobServiceClient.from_connection_string(storage_setting).url.rstrip("/")
    return f"{account}/{container}?restype=container&comp=list&prefix={quote(prefix)}"
