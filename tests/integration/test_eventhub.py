"""The Event Hubs sender at the SDK boundary: real azure-eventhub batches and events, no network.

No Event Hub is reachable from the build machines. The producer below has the methods (and keyword names) of
``EventHubProducerClient`` that ``sensor_scoring.tools.eventhub`` calls, checked against the SDK's signatures, and hands
out the SDK's own ``EventDataBatch`` objects, so batch sizing and partition keys are the SDK's AMQP accounting, not
ours.
One test uses the real ``EventHubProducerClient`` itself, with the link size preset and only ``send_batch`` recorded.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import timedelta

import pandas as pd
import pytest
from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient

from sensor_scoring.tools import eventhub
from sensor_scoring.tools.simulate import SimulationConfig
from sensor_scoring.windows import aggregate_readings
from tests.conftest import REPO
from tests.support.helpers import START

# A syntactically valid connection string to a namespace that is never contacted (the key is not a real one).
FAKE_KEY = "c2VjcmV0LWtleS1ub3QtdXNlZC1hbnl3aGVyZQ=="
CONN = f"Endpoint=sb://sensors-ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={FAKE_KEY}"
TS_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")


class RecordingProducer:
    """``EventHubProducerClient``'s create_batch/send_batch/close, returning real ``EventDataBatch`` objects.

    ``link_max_bytes`` plays the link's maximum message size the real client reads from the service
    (1 MB on Standard) when ``max_size_in_bytes`` is not given.
    """

    def __init__(self, link_max_bytes: int = 1024 * 1024) -> None:
        self.link_max_bytes = link_max_bytes
        self.sent: list[EventDataBatch] = []
        self.closed = False

    def create_batch(
        self, *, partition_id: str | None = None, partition_key: str | None = None, max_size_in_bytes: int | None = None
    ) -> EventDataBatch:
        if max_size_in_bytes and max_size_in_bytes > self.link_max_bytes:  # what the real client refuses
            raise ValueError("Max message size exceeds link limit")
        return EventDataBatch(
            max_size_in_bytes=max_size_in_bytes or self.link_max_bytes,
            partition_id=partition_id,
            partition_key=partition_key,
        )

    def send_batch(self, event_data_batch: EventDataBatch, **kwargs: object) -> None:
        assert isinstance(event_data_batch, EventDataBatch) and not kwargs
        assert not self.closed
        self.sent.append(event_data_batch)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> RecordingProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def events(self) -> list[tuple[EventDataBatch, EventData]]:
        # EventDataBatch keeps its events privately; reading them back is the only way to see what was sent.
        return [(batch, event) for batch in self.sent for event in batch._internal_events]


def decoded(producer: RecordingProducer) -> pd.DataFrame:
    rows = [json.loads(event.body_as_str()) for _, event in producer.events()]
    return pd.DataFrame(rows, columns=["ts", "device_id", "tag", "value"])


def simulated(cfg: SimulationConfig, start, end) -> pd.DataFrame:
    return pd.concat([frame for frame, _ in eventhub.readings_between(cfg, start, end)], ignore_index=True)


def key(frame: pd.DataFrame) -> Counter:
    """Readings as a multiset, timestamps compared as instants (the payload rounds up to 100 ns ticks)."""
    ts = pd.to_datetime(frame["ts"], utc=True, format="ISO8601").dt.ceil("100ns")
    return Counter(zip(ts, frame["device_id"], frame["tag"], frame["value"].astype(float)))


def test_the_fake_producer_has_the_sdk_signatures():
    """What the sender calls on the fake must exist with the same keywords on the real client."""
    real = inspect.signature(EventHubProducerClient.create_batch).parameters
    assert {"partition_key", "max_size_in_bytes"} <= set(real)
    assert all(real[name].kind is inspect.Parameter.KEYWORD_ONLY for name in ("partition_key", "max_size_in_bytes"))
    assert list(inspect.signature(EventHubProducerClient.send_batch).parameters)[1] == "event_data_batch"
    assert hasattr(EventHubProducerClient, "close") and hasattr(EventHubProducerClient, "__enter__")
    fake = inspect.signature(RecordingProducer.create_batch).parameters
    assert set(fake) - {"self"} <= set(real)


def test_every_reading_is_sent_once_in_per_device_batches_under_the_limit():
    cfg = SimulationConfig(devices=4, tags=3, seed=3)
    start, end = START, START + timedelta(hours=1)
    producer = RecordingProducer()
    limit = 8 * 1024  # small enough that each device needs several batches
    expected = simulated(cfg, start, end)
    totals = eventhub.send_readings(producer, expected, max_batch_bytes=limit)

    assert totals["events"] == len(expected) == 4 * 3 * 360 and totals["devices"] == 4
    assert totals["batches"] == len(producer.sent) > 4 * 2
    sent = decoded(producer)
    assert key(sent) == key(expected)  # every reading, exactly once, with its exact value
    assert not sent.duplicated(["ts", "device_id", "tag"]).any()

    for batch in producer.sent:
        assert 0 < len(batch) and batch.size_in_bytes <= batch.max_size_in_bytes == limit
    for _batch, event in producer.events():
        body = json.loads(event.body_as_str())
        # the SDK stamps the batch's partition key on each event: it must be the reading's device
        assert event.partition_key == body["device_id"].encode() or event.partition_key == body["device_id"]
        assert event.content_type == "application/json"
    # within a device (one partition), readings go out in time order
    for _, rows in sent.groupby("device_id"):
        assert rows["ts"].is_monotonic_increasing
    # batches are full when split: the first event of a device's next batch would not have fit the previous one
    by_device: dict[str, list[EventDataBatch]] = {}
    for batch in producer.sent:
        by_device.setdefault(json.loads(batch._internal_events[0].body_as_str())["device_id"], []).append(batch)
    for device, batches in by_device.items():
        for full, following in zip(batches, batches[1:]):
            again = EventDataBatch(max_size_in_bytes=limit, partition_key=device)
            for event in full._internal_events:
                again.add(rebuilt(event))
            with pytest.raises(ValueError, match="size limit"):
                again.add(rebuilt(following._internal_events[0]))


def rebuilt(event: EventData) -> EventData:
    copy = EventData(event.body_as_str())
    copy.content_type = event.content_type
    return copy


def test_payload_fields_types_and_stream_analytics_equivalence():
    """Each body is the query's input shape, and aggregating the bodies gives the windows the blob path lands."""
    cfg = SimulationConfig(devices=3, tags=2, seed=11, anomaly_rate=0.6)
    start, end = START + timedelta(minutes=30), START + timedelta(hours=1, minutes=30)
    producer = RecordingProducer()
    eventhub.send_simulated(producer, cfg, start, end)
    for _, event in producer.events():
        body = json.loads(event.body_as_str())
        assert list(body) == ["ts", "device_id", "tag", "value"]
        assert TS_FORMAT.match(body["ts"]), body["ts"]
        assert isinstance(body["device_id"], str) and isinstance(body["tag"], str)
        assert isinstance(body["value"], float)
        assert start <= pd.Timestamp(body["ts"]) <= end
    # The query (infra/stream_analytics/windows.asaql) windows by ts; sensor_scoring.windows.aggregate_readings is its
    # twin. Same windows from the JSON bodies as from the simulator's own readings: nothing lost in the format.
    from_bodies = aggregate_readings(decoded(producer))
    from_readings = aggregate_readings(simulated(cfg, start, end))
    pd.testing.assert_frame_equal(from_bodies, from_readings)


def test_adjacent_ranges_and_follow_send_each_reading_exactly_once():
    cfg = SimulationConfig(devices=2, tags=2, seed=5)
    producer = RecordingProducer()
    clock = iter(
        [
            START + timedelta(minutes=17),
            START + timedelta(minutes=17),
            START + timedelta(minutes=61, seconds=5),
            START + timedelta(minutes=95),
        ]
    )
    sleeps: list[float] = []
    totals = eventhub.follow(
        producer, cfg, START, interval_s=30, now=lambda: next(clock), sleep=sleeps.append, rounds=4
    )
    assert sleeps == [30, 30, 30] and totals["rounds"] == 4
    expected = simulated(cfg, START, START + timedelta(minutes=95))
    assert totals["events"] == len(expected)
    assert key(decoded(producer)) == key(expected)


def test_a_reading_that_cannot_fit_an_empty_batch_is_a_clear_error():
    producer = RecordingProducer()
    readings = simulated(SimulationConfig(devices=1, tags=1), START, START + timedelta(minutes=2))
    with pytest.raises(ValueError, match=r"one reading of dev-0000 .* does not fit an empty batch of 60 bytes"):
        eventhub.send_readings(producer, readings, max_batch_bytes=60)
    bad = readings.head(2).assign(value=[1.0, float("nan")])
    with pytest.raises(ValueError, match="dev-0000/temperature .* non-finite"):
        eventhub.send_readings(RecordingProducer(), bad)


@pytest.mark.parametrize(
    "conn, hub, message",
    [
        ("", "hub", "no Event Hubs connection string"),
        ("not a connection string", "hub", "connection string is malformed"),
        ("Endpoint=sb://sensors-ns.servicebus.windows.net/;SharedAccessKeyName=send", "hub", "malformed"),
        (f"SharedAccessKeyName=send;SharedAccessKey={FAKE_KEY}", "hub", "malformed"),
        (CONN, None, "no Event Hub name"),
        (CONN + ";EntityPath=readings", "other", "differs from EntityPath 'readings'"),
    ],
)
def test_bad_connection_settings_fail_before_any_network_without_echoing_the_key(conn, hub, message):
    with pytest.raises(eventhub.EventHubConfigError, match=message) as caught:
        eventhub.target_from(conn, hub)
    assert FAKE_KEY not in str(caught.value)


def test_a_good_connection_string_opens_the_real_client_without_connecting():
    target = eventhub.target_from(CONN + ";EntityPath=readings")
    assert (target.eventhub_name, target.namespace) == ("readings", "sensors-ns.servicebus.windows.net")
    assert FAKE_KEY not in repr(target)
    client = target.open()
    try:
        assert isinstance(client, EventHubProducerClient)
        assert client.eventhub_name == "readings"
        assert client._address.hostname == "sensors-ns.servicebus.windows.net"  # no public accessor
    finally:
        client.close()


def test_cli_refuses_a_bad_connection_string_with_a_message_not_a_traceback():
    env = dict(
        os.environ,
        SCORING_EVENTHUB_CONNECTION=f"Endpoint=nowhere;SharedAccessKey={FAKE_KEY}",
        SCORING_EVENTHUB_NAME="readings",
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor_scoring",
            "simulate",
            "--eventhub",
            "--start",
            START.isoformat(),
            "--end",
            (START + timedelta(hours=1)).isoformat(),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode != 0
    assert "simulate: Event Hubs connection string is malformed" in done.stderr
    assert "Traceback" not in done.stderr and FAKE_KEY not in done.stderr + done.stdout
    follow_alone = subprocess.run(
        [sys.executable, "-m", "sensor_scoring", "simulate", "--start", START.isoformat(), "--follow", "10"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert follow_alone.returncode != 0 and "--follow streams to an Event Hub" in follow_alone.stderr


def test_the_real_clients_create_batch_sizes_the_batches_from_the_link():
    """The SDK's own EventHubProducerClient.create_batch, told the link's size as the service would (no network):
    only send_batch is replaced, by a recorder."""
    client = eventhub.target_from(CONN, "readings").open()
    client._max_message_size_on_link = 256 * 1024  # what a Basic-tier hub announces on the link (Standard: 1 MB)
    sent: list[EventDataBatch] = []
    client.send_batch = sent.append
    cfg = SimulationConfig(devices=3, tags=3, seed=2)
    with client:
        totals = eventhub.send_simulated(client, cfg, START, START + timedelta(hours=1))
        with pytest.raises(ValueError, match="too large"):  # the real client refuses more than the link allows
            eventhub.send_readings(client, simulated(cfg, START, START + timedelta(minutes=1)), max_batch_bytes=10**6)
    assert totals["events"] == 3 * 3 * 360 == sum(len(batch) for batch in sent)
    assert all(batch.max_size_in_bytes == 256 * 1024 >= batch.size_in_bytes for batch in sent)
    for batch in sent:
        devices = {json.loads(event.body_as_str())["device_id"] for event in batch._internal_events}
        assert len(devices) == 1 and batch._partition_key == devices.pop()
