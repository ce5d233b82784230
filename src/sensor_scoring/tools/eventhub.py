"""Send simulated sensor readings to an Azure Event Hub, as the devices of a real deployment would.

This feeds the Stream Analytics job of ``infra/stream_analytics/windows.asaql``: one JSON event per reading,
``{"ts": "...Z", "device_id": ..., "tag": ..., "value": ...}``, the input its ``TIMESTAMP BY ts`` query reads.
Events are batched per device with ``partition_key=device_id``, so one device's readings stay in order on one
partition (Stream Analytics orders events within a partition; across partitions only by timestamp).

azure-eventhub is imported lazily: the scorer image does not ship it, and ``python -m sensor_scoring`` without an
Event Hub must not pay for the import. No real Event Hub was used to build this: tests/integration/test_eventhub.py
checks it at the SDK boundary (the SDK's own batches and client, no network).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from sensor_scoring.settings import EVENTHUB_CONNECTION_ENV, EVENTHUB_NAME_ENV
from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour
from sensor_scoring.windows import HOUR, hour_floor

if TYPE_CHECKING:
    from azure.eventhub import EventDataBatch

log = logging.getLogger(__name__)

#: Content type set on every event; Stream Analytics' input is configured as JSON, UTF-8.
CONTENT_TYPE = "application/json"
CONNECTION_FORMAT = (
    "Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=<policy>;"
    "SharedAccessKey=<key>[;EntityPath=<event hub>]"
)


class EventHubConfigError(ValueError):
    """A connection string or hub name that cannot work; raised before any network call, never echoing the key."""


class Producer(Protocol):
    """The part of ``azure.eventhub.EventHubProducerClient`` this module uses (tests implement it too)."""

    def create_batch(
        self, *, partition_key: str | None = None, max_size_in_bytes: int | None = None
    ) -> EventDataBatch: ...

    def send_batch(self, event_data_batch: EventDataBatch) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EventHubTarget:
    """Where readings go. ``repr`` shows the namespace and hub only: the connection string holds a key."""

    connection_string: str = field(repr=False)
    eventhub_name: str
    namespace: str

    def open(self) -> Producer:
        """The SDK's producer client; it connects on the first batch, not here."""
        from azure.eventhub import EventHubProducerClient

        return EventHubProducerClient.from_connection_string(self.connection_string, eventhub_name=self.eventhub_name)


def target_from(connection_string: str | None, eventhub_name: str | None = None) -> EventHubTarget:
    """Check a connection string and hub name with the SDK's own parser, before anything connects.

    The hub comes from ``eventhub_name`` or the string's ``EntityPath``; both given and different is refused,
    because the SDK would silently prefer the argument and send to a hub the key may not be scoped to.
    """
    if not connection_string or not connection_string.strip():
        raise EventHubConfigError(
            f"no Event Hubs connection string: pass --eventhub-connection-string or set {EVENTHUB_CONNECTION_ENV} "
            f"({CONNECTION_FORMAT})"
        )
    from azure.eventhub import parse_connection_string

    try:
        props = parse_connection_string(connection_string.strip())
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # The SDK's messages name the missing part, never the key; the string itself is not repeated.
        raise EventHubConfigError(
            f"Event Hubs connection string is malformed: {exc} Expected {CONNECTION_FORMAT}"
        ) from None
    entity = props.eventhub_name
    if eventhub_name and entity and eventhub_name != entity:
        raise EventHubConfigError(
            f"Event Hub name {eventhub_name!r} differs from EntityPath {entity!r} of the connection string"
        )
    hub = eventhub_name or entity
    if not hub:
        raise EventHubConfigError(
            f"no Event Hub name: pass --eventhub-name, set {EVENTHUB_NAME_ENV}, or use a connection string with "
            "EntityPath"
        )
    return EventHubTarget(connection_string.strip(), hub, props.fully_qualified_namespace)


def format_ts(ts: pd.Series) -> pd.Series:
    """ISO 8601 UTC with 7 fractional digits (.NET ticks, what Stream Analytics keeps).

    Rounded *up* to the tick: a window is (end - 1 min, end], so rounding up never moves a reading into an
    earlier window, while rounding down could move one sitting just after a minute boundary.
    """
    ts = pd.to_datetime(ts, utc=True).dt.ceil("100ns")
    return ts.dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + (ts.dt.nanosecond // 100).astype(str) + "Z"


def reading_bodies(readings: pd.DataFrame) -> Iterator[bytes]:
    """One JSON body per reading, in the frame's order; a non-finite value is refused (JSON has no NaN)."""
    frame = pd.DataFrame(
        {
            "ts": format_ts(readings["ts"]),
            "device_id": readings["device_id"].astype(str),
            "tag": readings["tag"].astype(str),
            "value": readings["value"].astype("float64"),
        }
    )
    for ts, device, tag, value in frame.itertuples(index=False, name=None):
        if not math.isfinite(value):
            raise ValueError(f"reading of {device}/{tag} at {ts} has a non-finite value {value!r}")
        yield json.dumps(
            {"ts": ts, "device_id": device, "tag": tag, "value": float(value)}, separators=(",", ":")
        ).encode()


def send_readings(producer: Producer, readings: pd.DataFrame, *, max_batch_bytes: int | None = None) -> dict[str, int]:
    """Send every reading once, in batches that each hold one device (``partition_key``) and fit the limit.

    A batch is filled until the SDK's ``add`` reports it full (its own AMQP size accounting), then sent and
    replaced by a new one for the same device.
    """
    from azure.eventhub import EventData

    events = batches = 0

    def send(batch: EventDataBatch) -> None:
        nonlocal batches
        producer.send_batch(batch)
        batches += 1

    ordered = readings.sort_values(["device_id", "ts", "tag"], kind="stable")
    for device, rows in ordered.groupby("device_id", sort=True, observed=True):
        device = str(device)
        batch = producer.create_batch(partition_key=device, max_size_in_bytes=max_batch_bytes)
        for body in reading_bodies(rows):
            event = EventData(body)
            event.content_type = CONTENT_TYPE
            try:
                batch.add(event)
            except ValueError:
                if len(batch) == 0:
                    raise ValueError(
                        f"one reading of {device} ({len(body)} bytes) does not fit an empty batch "
                        f"of {batch.max_size_in_bytes} bytes"
                    ) from None
                send(batch)
                batch = producer.create_batch(partition_key=device, max_size_in_bytes=max_batch_bytes)
                batch.add(event)
            events += 1
        if len(batch):
            send(batch)
    return {"events": events, "batches": batches, "devices": int(ordered["device_id"].nunique())}


def readings_between(cfg: SimulationConfig, start: datetime, end: datetime) -> Iterator[tuple[pd.DataFrame, int]]:
    """The simulated readings with ``start <= ts < end``, hour by hour, with each hour's count of labelled windows.

    ``simulate_hour(H)`` holds the readings in (H - 1 min, H + 59 min], so the hours partition time: two calls
    over adjacent ranges yield every reading exactly once, which is what a live sender needs.
    """
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    hour = hour_floor(start)
    while hour - timedelta(minutes=1) < end:
        readings, labels = simulate_hour(cfg, hour)
        keep = (readings["ts"] >= lo) & (readings["ts"] < hi)
        labelled = int(((labels["window_end"] > lo) & (labels["window_end"] - pd.Timedelta(minutes=1) < hi)).sum())
        if keep.any():
            yield readings.loc[keep].reset_index(drop=True), labelled
        hour += HOUR


def send_simulated(
    producer: Producer, cfg: SimulationConfig, start: datetime, end: datetime, *, max_batch_bytes: int | None = None
) -> dict[str, int]:
    """Simulate [start, end) and send its readings, an hour at a time (memory stays one hour's worth)."""
    totals = {"events": 0, "batches": 0, "hours": 0, "anomalous_windows": 0}
    for readings, labelled in readings_between(cfg, start, end):
        sent = send_readings(producer, readings, max_batch_bytes=max_batch_bytes)
        totals["events"] += sent["events"]
        totals["batches"] += sent["batches"]
        totals["hours"] += 1
        totals["anomalous_windows"] += labelled
    return totals


def follow(
    producer: Producer,
    cfg: SimulationConfig,
    start: datetime,
    *,
    interval_s: float,
    now: Callable[[], datetime],
    sleep: Callable[[float], Any] = time.sleep,
    rounds: int | None = None,
) -> dict[str, int]:
    """Stream like live devices: every ``interval_s`` send the readings of [last sent, now).

    Each round covers [previous end, now), so nothing is sent twice and nothing skipped, however late a round
    runs. ``rounds`` bounds the loop (tests); ``None`` runs until interrupted.
    """
    totals = {"events": 0, "batches": 0, "rounds": 0}
    sent_until = start
    while rounds is None or totals["rounds"] < rounds:
        until = now()
        if until > sent_until:
            done = send_simulated(producer, cfg, sent_until, until)
            totals["events"] += done["events"]
            totals["batches"] += done["batches"]
            log.info("sent %d readings up to %s", done["events"], until.isoformat())
            sent_until = until
        totals["rounds"] += 1
        if rounds is None or totals["rounds"] < rounds:
            sleep(interval_s)
    return totals
