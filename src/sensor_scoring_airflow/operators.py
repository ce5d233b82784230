"""``ShardOperator``: one mapped instance per shard, on the local or the Azure Batch backend."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, Context

from sensor_scoring_airflow.links import XCOM_KEY, ShardOutputsLink


class ShardOperator(BaseOperator):
    """Runs one shard of a run's work, ``python -m sensor_scoring <command> --spec <uri>``, where ``backend`` says:
    the hour's reading, scoring, or the training DAG's fits (``command``), all through the same backends.

    ``local``: in the task's own process (the step the command calls), or the command as a child process with
    ``SCORING_LOCAL_SHARDS=process`` (:class:`~sensor_scoring.backends.local.LocalBackend`). ``azure_batch``: adds
    the shard's task to the run's Batch job (pool and job created when missing), then defers to
    :class:`BatchTaskTrigger`, so a shard waiting on Batch holds no worker slot and all shards of an hour run on
    Batch at once. It resumes in ``execute_complete`` and succeeds or fails on its own task's exit code. The Batch
    task reaches storage as the pool's managed identity (``SCORING_BATCH_POOL_IDENTITY_CLIENT_ID``), or through
    SAS URLs (read ``models``, read+write ``staging``) that expire after ``SCORING_BATCH_SAS_HOURS``; never with
    a key. The Batch account is reached through the provider's ``AzureBatchHook`` (shared key or Entra ID).
    """

    template_fields: Sequence[str] = ("backend",)
    operator_extra_links = (ShardOutputsLink(),)
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        shard: dict[str, Any],
        backend: str = "local",
        batch_timeout: timedelta | None = None,
        poll_interval: float | None = None,
        max_poll_interval: float | None = None,
        command: str = "score-shard",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.command = command  # train-shard: the training DAG's shards, through the same backends
        self.shard = shard
        self.backend = backend
        self.batch_timeout = batch_timeout
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self._batch: dict[str, str] | None = None  # job and task ids once submitted, for on_kill

    # --- both backends ---
    def _prepare(self, context: Context) -> str:
        """Name the instance by its sensors (map_index_template); return the storage setting of the run."""
        from sensor_scoring_airflow.connections import storage_setting

        context["shard_label"] = self.shard["label"]  # type: ignore[typeddict-unknown-key]
        setting = storage_setting()
        return setting

    def execute(self, context: Context) -> dict[str, Any] | None:
        setting = self._prepare(context)
        self._push_link(context, setting)
        if self.backend == "azure_batch":
            return self._submit_to_batch(context, setting)
        from sensor_scoring.backends import ShardFailed, get_backend
        from sensor_scoring.contracts import DataError
        from sensor_scoring.windows import WindowSchemaError

        try:
            return get_backend(self.backend).run_shard(
                self.shard["spec_uri"], storage_setting=setting, command=self.command
            )
        except ShardFailed as exc:  # bad input (a file breaking the window contract) does not change by retrying
            if isinstance(exc.__cause__, (DataError, WindowSchemaError)):
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(str(exc)) from exc
            raise

    def _push_link(self, context: Context, setting: str) -> None:
        from sensor_scoring import layout, settings as config, storage as st
        from sensor_scoring_airflow import context as airflow_context

        try:
            if self.command == "score-shard":  # the hour's partition, where the shard's predictions end up
                hour = airflow_context.hour_for(context, context["params"])
                prefix = layout.partition_prefix(hour.start) if hour.end - hour.start == timedelta(hours=1) else ""
                container = config.current().containers.predictions
            else:  # any other command (train-shard): the folder its spec and outputs are staged in
                container, spec_path = st.parse_uri(self.shard["spec_uri"])
                prefix = spec_path.rpartition("/")[0] + "/"
            url = outputs_url(setting, container, prefix)
        except Exception as exc:  # a link is a convenience: never fail a shard over it
            self.log.info("No outputs link for this shard: %s", exc)
            return
        if url:
            context["ti"].xcom_push(key=XCOM_KEY, value=url)

    # --- azure_batch ---
    def _submit_to_batch(self, context: Context, setting: str) -> dict[str, Any]:
        """:func:`~sensor_scoring.backends.azure_batch.submit_shard` (the one submission path) to the run's job,
        with the client of the ``azure_batch`` connection (``AzureBatchHook``), then defer to the trigger."""
        from sensor_scoring import settings as config
        from sensor_scoring.backends import azure_batch as batch
        from sensor_scoring_airflow.batch import batch_account_url, batch_client
        from sensor_scoring_airflow.triggers import BatchTaskTrigger

        settings = config.current().batch
        client = batch_client(settings.conn_id)
        ti = context["ti"]
        timeout = self.batch_timeout or self.execution_timeout
        submission = batch.submit_shard(
            client,
            settings,
            setting,
            self.shard["spec_uri"],
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            try_number=ti.try_number,
            max_wall_clock=timeout * 1.1 if timeout else None,
            label=self.shard["label"],
            command=self.command,
        )
        self._batch = {"job_id": submission.job_id, "task_id": submission.task_id, "conn_id": settings.conn_id}
        urls = batch.output_file_urls(batch_account_url(settings.conn_id), submission.job_id, submission.task_id)
        self.log.info(
            "Batch job %s, task %s (try %d%s). Output files: stdout %s stderr %s",
            submission.job_id,
            submission.task_id,
            ti.try_number,
            ", reused" if submission.reused else "",
            urls["stdout"],
            urls["stderr"],
        )
        if submission.reused:
            summary = batch.task_summary(client.get_task(submission.job_id, submission.task_id))
            return self._finish({"status": "completed", **summary}, setting)
        self.defer(
            trigger=BatchTaskTrigger(
                settings.conn_id,
                submission.job_id,
                submission.task_id,
                deadline=_deadline(ti, timeout),
                poll_interval=self.poll_interval or settings.poll_s,
                max_poll_interval=self.max_poll_interval or settings.max_poll_s,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resumed by the trigger: judge the shard by its own Batch task's exit code."""
        from sensor_scoring import settings as config
        from sensor_scoring.backends import azure_batch as batch

        setting = self._prepare(context)
        self._batch = {
            "job_id": batch.job_id(context["ti"].dag_id, context["ti"].run_id),
            "task_id": event["task_id"],
            "conn_id": config.current().batch.conn_id,
        }
        return self._finish(event, setting)

    def _finish(self, event: dict[str, Any], setting: str) -> dict[str, Any]:
        """The verdict of :func:`~sensor_scoring.backends.azure_batch.check_outcome`, then the shard's result."""
        from sensor_scoring.backends import azure_batch as batch, read_result
        from sensor_scoring_airflow.batch import batch_account_url, batch_client

        assert self._batch is not None
        conn_id = self._batch["conn_id"]
        batch.check_outcome(
            batch_client(conn_id), self._batch["job_id"], event, account_url=batch_account_url(conn_id), log=self.log
        )
        return read_result(self.shard["spec_uri"], setting, self.command)

    def on_kill(self) -> None:
        """The worker is told to stop this try (mark failed, clear, timeout): stop its Batch task as well."""
        if not self._batch:
            return
        from sensor_scoring.backends import azure_batch as batch
        from sensor_scoring_airflow.batch import batch_client

        self.log.info("Terminating Batch task %s/%s", self._batch["job_id"], self._batch["task_id"])
        batch.terminate_task(batch_client(self._batch["conn_id"]), self._batch["job_id"], self._batch["task_id"])


def _deadline(ti: Any, timeout: timedelta | None) -> float | None:
    """When the trigger gives up and terminates the Batch task: shortly before Airflow's own execution
    timeout (counted from the try's start), which would cancel the trigger without a chance to terminate."""
    if not timeout:
        return None
    start = ti.start_date.timestamp() if getattr(ti, "start_date", None) else time.time()
    margin = min(60.0, timeout.total_seconds() * 0.05)
    return max(time.time() + 1.0, start + timeout.total_seconds() - margin)


def outputs_url(storage_setting: str, container: str, prefix: str) -> str:
    """A browsable listing of ``container/prefix`` (Azure or Azurite); '' for local-directory or SAS storage."""
    from urllib.parse import quote

    from sensor_scoring import storage as st

    parsed = st.parse_setting(storage_setting)
    if parsed.kind == "account_url":  # Entra ID: the account's URL, opened with the viewer's own sign-in
        account = parsed.value
    elif parsed.kind == "connection_string":
        from azure.storage.blob import BlobServiceClient

        account = BlobServiceClient.from_connection_string(storage_setting).url.partition("?")[0].rstrip("/")
    else:
        return ""
    return f"{account}/{container}?restype=container&comp=list&prefix={quote(prefix)}"
