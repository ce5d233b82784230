"""Ranged reads: ``Storage.stat``/``read_range`` and the ``BlobFile`` over them on a directory, on the real Azurite
by connection string and by SAS; and the sensor page reading one sensor's row groups of an hour the pipeline
committed on Azurite, compared byte for byte with reading the whole partitions.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sensor_scoring import fleet, layout, storage as st
from sensor_scoring.contracts import REASON_COLUMN
from sensor_scoring.storage.ranged import READ_AHEAD, TAIL, BlobFile, read_parquet_rows
from tests.support.helpers import START, fleet_windows, run_steps

H = timedelta(hours=1)
DATA = os.urandom(3 * 2**20 + 12_345)  # longer than the tail and several read-aheads; odd length


@pytest.fixture(
    params=["local", pytest.param("azurite", marks=pytest.mark.azurite), pytest.param("sas", marks=pytest.mark.azurite)]
)
def any_storage(request, tmp_path, box) -> st.Storage:
    if request.param == "local":
        return st.LocalStorage(tmp_path)
    blob, containers, azurite = (request.getfixturevalue(name) for name in ("blob", "containers", "azurite"))
    if request.param == "azurite":
        return blob
    blob.write_bytes(box, "created.txt", b"")  # the container exists before a SAS is signed for it
    return st.open_storage(st.make_sas_setting(azurite.connection_string, read=[], read_write=[box], hours=1))


@pytest.fixture
def box(containers) -> str:
    """A container of the test's own: tests sharing the session's Azurite never see each other's blobs."""
    return containers.staging


class Counting:
    """A storage that counts the requests and bytes of the ranged reads (and whole reads) going through it."""

    def __init__(self, inner: st.Storage) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.bytes_read = 0
        self.whole: list[tuple[str, str]] = []
        self.ranges: list[tuple[str, int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stat(self, container: str, path: str) -> st.BlobStat:
        self.calls["stat"] += 1
        return self.inner.stat(container, path)

    def read_range(self, container: str, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        self.calls["read_range"] += 1
        self.ranges.append((container, offset, length))
        data = self.inner.read_range(container, path, offset, length, version)
        self.bytes_read += len(data)
        return data

    def read_bytes(self, container: str, path: str) -> bytes:
        self.calls["read_bytes"] += 1
        self.whole.append((container, path))
        return self.inner.read_bytes(container, path)


def test_read_range_at_offsets_past_the_end_and_of_a_missing_blob(any_storage, box):
    s = any_storage
    s.write_bytes(box, "r/blob.bin", DATA)
    stat = s.stat(box, "r/blob.bin")
    assert stat.size == len(DATA) and stat.version
    for offset, length in [(0, 1), (1, 100), (2**20 - 7, 70_000), (len(DATA) - 10, 10), (len(DATA) - 10, 1000)]:
        assert s.read_range(box, "r/blob.bin", offset, length) == DATA[offset : offset + length]
    assert s.read_range(box, "r/blob.bin", len(DATA), 10) == b""  # from the end on: nothing
    assert s.read_range(box, "r/blob.bin", len(DATA) + 5, 10) == b""
    assert s.read_range(box, "r/blob.bin", 3, 0) == b""
    assert s.read_range(box, "r/blob.bin", 5, 5, stat.version) == DATA[5:10]
    with pytest.raises(ValueError, match="non-negative"):
        s.read_range(box, "r/blob.bin", -1, 5)
    with pytest.raises(FileNotFoundError):
        s.stat(box, "r/missing.bin")
    with pytest.raises(FileNotFoundError):
        s.read_range(box, "r/missing.bin", 0, 5)
    with pytest.raises(ValueError, match="not a plain relative name"):
        s.read_range(box, "../r/blob.bin", 0, 5)


def test_a_version_read_after_the_blob_was_written_again_is_refused(any_storage, box):
    s = any_storage
    s.write_bytes(box, "r/blob.bin", DATA)
    before = s.stat(box, "r/blob.bin").version
    s.write_bytes(box, "r/blob.bin", DATA[::-1])
    assert s.stat(box, "r/blob.bin").version != before
    with pytest.raises(st.GenerationMismatch):
        s.read_range(box, "r/blob.bin", 0, 10, before)


def test_blob_file_reads_seeks_and_ends_like_a_file(any_storage, box):
    s = Counting(any_storage)
    any_storage.write_bytes(box, "f/blob.bin", DATA)
    with BlobFile(s, box, "f/blob.bin") as file:
        assert file.size() == len(DATA) and file.seekable() and file.readable() and file.tell() == 0
        assert file.read(10) == DATA[:10] and file.tell() == 10
        assert file.read(100) == DATA[10:110]  # within the first read-ahead: no request
        assert file.requests == 1 and file.bytes_fetched == READ_AHEAD
        file.seek(2**20 + 3)
        big = 2 * READ_AHEAD + 1
        assert file.read(big) == DATA[2**20 + 3 : 2**20 + 3 + big]  # a long read is fetched exactly
        assert file.requests == 2 and file.bytes_fetched == READ_AHEAD + big
        assert file.seek(-64 * 1024, io.SEEK_END) == len(DATA) - 64 * 1024
        assert file.read(64 * 1024) == DATA[-64 * 1024 :]  # a footer read fetches the whole tail once
        file.seek(-TAIL, io.SEEK_END)
        assert file.read(TAIL - 64 * 1024) == DATA[-TAIL : -64 * 1024]
        assert file.requests == 3 and file.bytes_fetched == READ_AHEAD + big + TAIL
        assert file.seek(0, io.SEEK_END) == len(DATA) and file.read(5) == b"" and file.read() == b""  # at the end
        file.seek(len(DATA) + 100)
        assert file.read(5) == b"" and file.tell() == len(DATA) + 100
        file.seek(-3, io.SEEK_END)
        assert file.read() == DATA[-3:]
        file.seek(10)
        assert file.seek(5, io.SEEK_CUR) == 15 and file.read(3) == DATA[15:18]
        buffer = bytearray(7)
        assert file.readinto(buffer) == 7 and bytes(buffer) == DATA[18:25]
        with pytest.raises(ValueError, match="before the start"):
            file.seek(-1)
    with pytest.raises(ValueError, match="closed"):
        file.read(1)
    assert s.calls["stat"] == 1 and s.calls["read_range"] == 3 and s.calls["read_bytes"] == 0


def test_blob_file_of_a_blob_written_meanwhile_fails_rather_than_mixing_versions(any_storage, box):
    any_storage.write_bytes(box, "f/blob.bin", DATA)
    with BlobFile(any_storage, box, "f/blob.bin") as file:
        assert file.read(10) == DATA[:10]
        any_storage.write_bytes(box, "f/blob.bin", DATA[::-1])
        file.seek(2 * 2**20)
        with pytest.raises(st.GenerationMismatch):
            file.read(10)


def _key_ordered(sensors: int, windows: int = 60) -> pa.Table:
    """``sensors`` sensors (4 tags a device) x ``windows`` windows in key order, random scores (incompressible)."""
    sensor = np.repeat(np.arange(sensors), windows)
    minutes = np.tile(np.arange(1, windows + 1), sensors)
    return pa.table(
        {
            "device_id": pa.array(np.char.add("dev-", np.char.zfill((sensor // 4).astype(str), 5))),
            "tag": pa.array(np.char.add("tag-", (sensor % 4).astype(str))),
            "window_end": pa.array(np.datetime64(START.replace(tzinfo=None), "ms") + minutes * np.timedelta64(1, "m")),
            "score": np.random.default_rng(sensors).normal(size=sensors * windows),
        }
    )


def test_a_parquet_read_through_blob_file_fetches_only_the_row_groups_that_can_hold_the_rows(any_storage, box):
    """pyarrow reads the footer, prunes row groups by their statistics and fetches the chunks of the rest."""
    table = _key_ordered(20_000)  # 1.2M rows in 150 row groups of 8,000 (~11 MB)
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=8000)
    any_storage.write_bytes(box, "p/part.parquet", sink.getvalue())
    s = Counting(any_storage)
    only = [("device_id", "==", "dev-00123"), ("tag", "==", "tag-2")]
    rows = read_parquet_rows(s, box, "p/part.parquet", ["window_end", "score"], only)
    whole = pq.read_table(io.BytesIO(sink.getvalue()), columns=["window_end", "score"], filters=only)
    assert rows is not None and rows.num_rows == 60 and rows.equals(whole)
    assert s.calls["stat"] == 1 and s.calls["read_range"] <= 4 and s.calls["read_bytes"] == 0
    # the footer's tail, then the two columns' chunks of the one row group holding the sensor (at least a read-ahead)
    assert s.bytes_read <= TAIL + READ_AHEAD + 8000 * 8 * 2 < len(sink.getvalue()) / 10
    assert read_parquet_rows(s, box, "p/nothing.parquet", ["score"], only) is None


def test_a_partition_replaced_while_it_is_read_is_read_again_from_its_new_version(any_storage, box):
    old = _key_ordered(2000)  # ~1 MB: more than the tail, so the row groups are a request of their own
    new = old.set_column(3, "score", pa.array([-1.0] * old.num_rows))
    for name, table in (("old", old), ("new", new)):
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=6000)
        any_storage.write_bytes(box, f"p/{name}.parquet", sink.getvalue())
    replacement = any_storage.read_bytes(box, "p/new.parquet")
    any_storage.write_bytes(box, "p/part.parquet", any_storage.read_bytes(box, "p/old.parquet"))

    class ReplacedAfterTheFooter(Counting):
        def read_range(self, container, path, offset, length, version=None):
            data = super().read_range(container, path, offset, length, version)
            if self.calls["read_range"] == 1:  # a commit lands between the footer and the row groups
                self.inner.write_bytes(box, "p/part.parquet", replacement)
            return data

    s = ReplacedAfterTheFooter(any_storage)
    rows = read_parquet_rows(s, box, "p/part.parquet", ["score"], [("device_id", "==", "dev-00003")])
    assert rows is not None and rows.column("score").to_pylist() == [-1.0] * 240 and s.calls["stat"] == 2
    assert any_storage.stat(box, "p/old.parquet").size > TAIL


# --- the sensor page on an hour the pipeline committed on Azurite ---


@pytest.mark.azurite
def test_sensor_page_reads_a_fraction_of_the_partitions_and_the_same_rows(blob, containers, monkeypatch):
    """An hour of 160 sensors committed by the pipeline's steps in shards of 23 sensors, in row groups of 600 rows
    (10 sensors; ``ROW_GROUP_ROWS``, the tail and the read-ahead made small so a small hour is read as a large one
    is): every row group names a narrow range of devices, and the sensor page reads a sixth of the bytes at most
    while giving exactly the rows, quarantined rows and health that reading the whole partitions gives."""
    from sensor_scoring.steps.health import model_health
    from sensor_scoring.windows import land_windows
    from tests.support.training import train_and_register

    # an hour of 160 sensors scaled like one of 100k: row groups of 600 rows, reads ahead and tails of 16 kB
    monkeypatch.setattr(st, "ROW_GROUP_ROWS", 600)
    monkeypatch.setattr("sensor_scoring.storage.base.ROW_GROUP_ROWS", 600)
    monkeypatch.setattr("sensor_scoring.storage.ranged.TAIL", 16 * 1024)
    monkeypatch.setattr("sensor_scoring.storage.ranged.READ_AHEAD", 16 * 1024)
    windows = fleet_windows(devices=40, tags=4, hours=4, seed=5)
    sensor = ("dev-0017", str(windows["tag"].iloc[0]))
    bad = windows.index[(windows["device_id"] == sensor[0]) & (windows["tag"] == sensor[1])]
    windows.loc[bad[-3], "value_std"] = -1.0  # quarantined in the scored hour
    land_windows(blob, containers.windows, windows)
    train_and_register(blob, containers, START, START + 3 * H, version="v1", promote=True)
    from sensor_scoring.runs.scope import Scope

    hour = Scope(blob, containers, "run-ranged", START + 3 * H, START + 4 * H)
    [manifest] = run_steps(hour, sensors_per_shard=23)
    model_health(hour)
    part = layout.Partition(START + 3 * H).data
    data = blob.read_bytes(containers.predictions, part)
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    assert manifest.counts.scored == meta.num_rows > 9000 and meta.num_row_groups == -(-meta.num_rows // 600)
    ranges = [meta.row_group(g).column(0).statistics for g in range(meta.num_row_groups)]
    assert all(r.has_min_max for r in ranges)
    assert all(a.max <= b.min for a, b in zip(ranges, ranges[1:])), "row groups in device order, not overlapping"

    s = Counting(blob)
    view = fleet.sensor_view(s, containers, *sensor, START + 3 * H, START + 4 * H)
    size = blob.stat(containers.predictions, part).size
    assert s.calls["stat"] == 3 and s.calls["read_range"] <= 3 * 4
    assert {c for c, _ in s.whole} == {containers.models}  # whole: the model version's manifest and index only
    # predictions: the footer (pyarrow asks for the last 64 kB first), then only byte ranges that start in a row
    # group whose statistics can hold the sensor: one or two of the 16
    footer, *chunks = [(offset, length) for c, offset, length in s.ranges if c == containers.predictions]
    assert footer[0] + footer[1] == size and chunks
    holding = [g for g, r in enumerate(ranges) if r.min <= sensor[0] <= r.max]
    assert 1 <= len(holding) <= 2
    assert all(any(_starts_in(meta.row_group(g), offset) for g in holding) for offset, _ in chunks), (chunks, holding)
    assert sum(length for _, length in chunks) < size / 6 and s.bytes_read < size / 3

    # the old path: every partition read whole, then filtered
    only = [("device_id", "==", sensor[0]), ("tag", "==", sensor[1])]
    columns = ["window_end", "score", "is_anomaly", "model_version"]
    whole = pq.read_table(io.BytesIO(data), columns=columns, filters=only).to_pandas().sort_values("window_end")
    assert len(view.windows) > 30 and view.windows.equals(whole.reset_index(drop=True))
    q_data = blob.read_bytes(containers.quarantine, part)
    q_cols = ["window_end", REASON_COLUMN, "source_file", "run_id"]
    q_whole = pq.read_table(io.BytesIO(q_data), columns=q_cols, filters=only).to_pandas()
    assert len(view.quarantined) == 1 and view.quarantined.equals(q_whole.reset_index(drop=True))
    h_data = blob.read_bytes(containers.health, part)
    h_whole = pq.read_table(io.BytesIO(h_data), filters=only).to_pandas()
    assert len(view.health) == len(h_whole) == 1
    assert int(view.health["windows"].iloc[0]) == int(h_whole["windows"].iloc[0]) == len(whole)


def _starts_in(group: pq.RowGroupMetaData, offset: int) -> bool:
    """Whether ``offset`` is within a row group's column chunks (they are written one after the other)."""
    chunks = [group.column(i) for i in range(group.num_columns)]
    first = min(c.dictionary_page_offset or c.data_page_offset for c in chunks)
    return first <= offset < first + sum(c.total_compressed_size for c in chunks)
