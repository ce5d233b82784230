"""The trigger a Batch shard defers to: polls its own Batch task, never the pool or the job."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from azure.batch import BatchClient

CLASSPATH = "sensor_scoring_airflow.triggers.BatchTaskTrigger"


class BatchTaskTrigger(BaseTrigger):
    """Waits for one Batch task in the triggerer's event loop, by the decisions of
    :func:`sensor_scoring.backends.azure_batch.poll_step` (the synchronous backend's too): exponential backoff,
    and termination of a task that outlives ``deadline`` (epoch seconds).

    Fires one event, the finished wait's: ``{"status": "completed" | "timeout", ...task summary}``; the operator
    judges it. ``on_kill`` (a user cleared or marked the deferred task) terminates the task. The Batch account is
    reached through the provider's ``AzureBatchHook``, as the operator reaches it.
    """

    def __init__(
        self,
        conn_id: str,
        job_id: str,
        task_id: str,
        *,
        deadline: float | None = None,
        poll_interval: float = 10.0,
        max_poll_interval: float = 120.0,
    ) -> None:
        super().__init__()
        self.conn_id, self.job_id, self.batch_task_id = conn_id, job_id, task_id
        self.deadline, self.poll_interval, self.max_poll_interval = deadline, poll_interval, max_poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return CLASSPATH, {
            "conn_id": self.conn_id,
            "job_id": self.job_id,
            "task_id": self.batch_task_id,
            "deadline": self.deadline,
            "poll_interval": self.poll_interval,
            "max_poll_interval": self.max_poll_interval,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # the client is closed before the event is yielded: a single-event trigger is not resumed afterwards
        client = await self._client()
        try:
            payload = await self._wait(client)
        finally:
            await asyncio.to_thread(client.close)
        yield TriggerEvent(payload)

    async def _client(self) -> BatchClient:
        """The client of the connection, as ``AzureBatchHook`` builds it (shared key or Entra ID). The hook's client
        is synchronous: it is made, and every call of it runs, in a thread, so the event loop never blocks."""
        from sensor_scoring_airflow.batch import batch_client

        return await asyncio.to_thread(batch_client, self.conn_id)

    async def _wait(self, client: BatchClient) -> dict[str, Any]:
        # imported in a thread: the first import loads the SDK, which would block the triggerer's event loop
        batch = await asyncio.to_thread(importlib.import_module, "sensor_scoring.backends.azure_batch")
        poll = batch.Poll(self.job_id, self.batch_task_id, self.poll_interval, self.max_poll_interval, self.deadline)
        while True:
            task = await asyncio.to_thread(client.get_task, self.job_id, self.batch_task_id)
            step = batch.poll_step(poll, batch.task_summary(task), now=time.time(), log=self.log)
            if step.terminate:
                await asyncio.to_thread(batch.terminate_task, client, self.job_id, self.batch_task_id)
            if step.event is not None:
                return dict(step.event)
            await asyncio.sleep(step.sleep_s)

    async def on_kill(self) -> None:
        """A user cleared or marked the deferred shard: stop its Batch task too (not on triggerer restarts)."""
        self.log.info("Terminating Batch task %s/%s (task killed by a user)", self.job_id, self.batch_task_id)
        client = await self._client()
        try:
            batch = await asyncio.to_thread(importlib.import_module, "sensor_scoring.backends.azure_batch")
            await asyncio.to_thread(batch.terminate_task, client, self.job_id, self.batch_task_id)
        finally:
            await asyncio.to_thread(client.close)
