"""The trigger a Batch shard defers to: polls its own Batch task, never the pool or the job."""
from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

CLASSPATH = "sensor_scoring_airflow.triggers.BatchTaskTrigger"


class BatchTaskTrigger(BaseTrigger):
    """Waits for one Batch task to complete, polling with exponential backoff, in the triggerer's event loop.

    Fires one event: ``{"status": "completed", ...task summary}`` when the task completed (whatever its exit
    code: the operator judges it), or ``{"status": "timeout", ...}`` after terminating a task that outlived
    ``deadline`` (epoch seconds). ``on_kill`` (a user cleared or marked the deferred task) terminates the task.
    """

    def __init__(self, conn_id: str, job_id: str, task_id: str, *, deadline: float | None = None,
                 poll_interval: float = 10.0, max_poll_interval: float = 120.0) -> None:
        super().__init__()
        self.conn_id, self.job_id, self.batch_task_id = conn_id, job_id, task_id
        self.deadline, self.poll_interval, self.max_poll_interval = deadline, poll_interval, max_poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return CLASSPATH, {"conn_id": self.conn_id, "job_id": self.job_id, "task_id": self.batch_task_id,
                           "deadline": self.deadline, "poll_interval": self.poll_interval,
                           "max_poll_interval": self.max_poll_interval}

    async def _client(self):
        from airflow.sdk import BaseHook

        batch = await asyncio.to_thread(importlib.import_module, "sensor_scoring.backends.azure_batch")

        conn = await BaseHook.aget_connection(self.conn_id)
        # built in a thread: the first build imports the SDK, which would block the triggerer's event loop
        return await asyncio.to_thread(batch.async_client_from_connection, conn)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # the client is closed before the event is yielded: a single-event trigger is not resumed afterwards
        async with await self._client() as client:
            payload = await self._wait(client)
        yield TriggerEvent(payload)

    async def _wait(self, client) -> dict[str, Any]:
        from sensor_scoring.backends import azure_batch as batch

        delay, requeues = self.poll_interval, 0
        while True:
            summary = batch.task_summary(await client.get_task(self.job_id, self.batch_task_id))
            if summary["requeue_count"] > requeues:
                requeues = summary["requeue_count"]
                self.log.warning("Batch task %s was requeued by Batch (node preempted or lost), %d time(s); "
                                 "waiting for it to run again", self.batch_task_id, requeues)
            if summary["state"] == "completed":
                return {"status": "completed", **summary}
            if self.deadline is not None and time.time() > self.deadline:
                self.log.warning("Batch task %s still %s at its deadline: terminating it",
                                 self.batch_task_id, summary["state"])
                await self._terminate(client)
                return {"status": "timeout", "last_state": summary["state"], **summary}
            self.log.info("Batch task %s/%s is %s; next check in %.1fs",
                          self.job_id, self.batch_task_id, summary["state"], delay)
            pause = delay if self.deadline is None else max(0.0, min(delay, self.deadline - time.time() + 0.01))
            await asyncio.sleep(pause)
            delay = min(delay * 2, self.max_poll_interval)

    async def _terminate(self, client) -> None:
        from azure.core.exceptions import HttpResponseError

        try:
            await client.terminate_task(self.job_id, self.batch_task_id)
        except HttpResponseError as exc:  # completed or deleted meanwhile: nothing left to stop
            self.log.info("Terminate of Batch task %s refused: %s", self.batch_task_id, exc.message)

    async def on_kill(self) -> None:
        """A user cleared or marked the deferred shard: stop its Batch task too (not on triggerer restarts)."""
        self.log.info("Terminating Batch task %s/%s (task killed by a user)", self.job_id, self.batch_task_id)
        async with await self._client() as client:
            await self._terminate(client)
