"""Time the fleet page's data (``sensor_scoring.fleet.fleet_view``) for a range of hours at 1k, 10k, 100k sensors.

Claim under test: the fleet page for an hour range at 100k sensors answers in under 2 s, because it reads only the
pre-aggregated health partitions (one row per sensor and hour, a few columns). For each fleet size S, ``--hours``
health partitions are written with the real writer (``steps.health.sensor_health`` on synthetic per-sensor scores,
then ``steps.health.write_health``: the same Parquet and manifest as the DAG's model_health task). Scores are
synthetic (``--windows`` per sensor and hour, a few sensors shifted to drift), since scoring 100k sensors for a day
is what bench_scoring.py measures, not this. Storage is a local directory (no blob server latency mixed in).

Timed, median of ``--repeats``: ``fleet_view`` over all the hours (the first page of 50 devices, 20 most drifting
sensors, quarantine reasons, runs), and as a baseline in the same process, reading the same partitions' bytes
with pyarrow (all columns, no aggregation): the ratio says what the aggregation costs on top of reading.

    .venv/bin/python bench/bench_fleet.py [--sizes 1000 10000 100000] [--hours 24] [--repeats 5]

``--sensor-page``: the sensor page instead (``fleet.sensor_view``: one sensor's rows of an hour's predictions
partition). For each size, one hour's predictions partition of S sensors x ``--windows`` windows (synthetic scores
and aggregates, incompressible like real ones) is written twice: as commit wrote it before (shards of the plan's
sizing in shard order, rows within a shard in landing order, time-major, one row group per shard) and as it writes
it now (``steps.commit.in_key_order`` and ``RowGroups``: key order, row groups of ``ROW_GROUP_ROWS``). For
``--queries`` sensors drawn at random it times and counts the bytes of: the old read (the whole blob, then
pyarrow's filter), the ranged read (``storage.read_parquet_rows``) of the old layout and of the new one, and the
whole ``sensor_view`` of the hour on the new layout. ``--storage azurite`` puts the partitions on a local Azurite
(loopback HTTP) instead of a directory.

    .venv/bin/python bench/bench_fleet.py --sensor-page --sizes 100000 --windows 60 [--storage azurite]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bench_scoring import machine  # noqa: E402

from sensor_scoring import layout, settings as config  # noqa: E402
from sensor_scoring.contracts import PREDICTION_SCHEMA  # noqa: E402
from sensor_scoring.fleet import fleet_view, sensor_view  # noqa: E402
from sensor_scoring.report import fleet_body, page as html_page  # noqa: E402
from sensor_scoring.steps import health  # noqa: E402
from sensor_scoring.steps.commit import RowGroups, in_key_order  # noqa: E402
from sensor_scoring.steps.plan import MAX_SHARD_WINDOWS  # noqa: E402
from sensor_scoring.storage import ROW_GROUP_ROWS, BlobStat, LocalStorage, Storage, read_parquet_rows  # noqa: E402

START = datetime(2026, 11, 24, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
TAGS = 4


def write_hours(storage, containers, sensors: int, hours: int, windows: int, seed: int = 0) -> float:
    """Health partitions for ``hours`` hours of ``sensors`` sensors; returns the seconds writing took."""
    rng = np.random.default_rng(seed)
    devices = np.array([f"dev-{d:06d}" for d in range(-(-sensors // TAGS))])
    device_of = np.repeat(devices, TAGS)[:sensors]
    tag_of = np.tile(np.array([f"tag-{t}" for t in range(TAGS)]), len(devices))[:sensors]
    reference = {
        "device_id": device_of,
        "tag": tag_of,
        "train_rows": 1440,
        "train_flagged_share": 0.02,
        "score_mean": 0.5,
        "score_std": 0.2,
        "edges": [list(np.quantile(rng.normal(0.5, 0.2, 1000), np.linspace(0.1, 0.9, 9)))] * sensors,
        "counts": [[144] * 10] * sensors,
    }
    training = {"v-bench": pd.DataFrame(reference)}
    thresholds = health.Thresholds(psi=0.0, anomaly_excess=0.2, hours=3)
    drifting = rng.choice(sensors, size=max(1, sensors // 1000), replace=False)
    began, previous = time.perf_counter(), None
    for number in range(hours):
        scores = rng.normal(0.5, 0.2, (sensors, windows))
        scores[drifting] -= 1.0  # these sensors' windows are anomalies
        predictions = pd.DataFrame(
            {
                "device_id": np.repeat(device_of, windows),
                "tag": np.repeat(tag_of, windows),
                "score": scores.ravel(),
                "is_anomaly": scores.ravel() <= 0,
                "model_version": "v-bench",
            }
        )
        picked = rng.choice(sensors, size=max(1, sensors // 200), replace=False)
        quarantine = pd.DataFrame({"device_id": device_of[picked], "tag": tag_of[picked]})
        rows = health.sensor_health(predictions, quarantine, training, previous, thresholds)
        reasons = {"negative_std": len(picked) // 2, "no_model": len(picked) - len(picked) // 2}
        health.write_health(storage, containers, START + timedelta(hours=number), rows, "bench", thresholds, 0, reasons)
        previous = rows
    return time.perf_counter() - began


def read_raw(storage, containers, hours: int) -> int:
    """The baseline: every health partition's bytes read and decoded by pyarrow, nothing aggregated."""
    rows = 0
    for number in range(hours):
        data = storage.read_bytes(containers.health, layout.Partition(START + timedelta(hours=number)).data)
        rows += pq.read_table(io.BytesIO(data)).num_rows
    return rows


def measure(size: int, hours: int, windows: int, repeats: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        storage, containers = LocalStorage(tmp), config.Containers()
        written = write_hours(storage, containers, size, hours, windows)
        end = START + timedelta(hours=hours)
        page, html, raw = [], [], []
        for _ in range(repeats):  # the two take turns, so noise hits them alike
            t0 = time.perf_counter()
            view = fleet_view(storage, containers, START, end)
            page.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            body = html_page("Fleet", fleet_body(view))  # what the page's route returns, but for the link makers
            html.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rows = read_raw(storage, containers, hours)
            raw.append(time.perf_counter() - t0)
        assert rows == size * hours and view.devices_total == -(-size // TAGS) and not view.missing_hours
        assert view.totals["windows"] == size * hours * windows and len(view.drifting) > 0
        bytes_ = sum(b.size for b in storage.list(containers.health))
        return {
            "sensors": size,
            "hours": hours,
            "health_rows": rows,
            "health_bytes": bytes_,
            "write_s": round(written, 2),
            "fleet_view_s": page,
            "fleet_view_median_s": statistics.median(page),
            "html_median_s": statistics.median(html),
            "html_bytes": len(body.encode()),
            "page_median_s": statistics.median([a + b for a, b in zip(page, html)]),
            "raw_read_median_s": statistics.median(raw),
            "ratio_to_raw_read": statistics.median(page) / statistics.median(raw),
        }


# --- the sensor page: one sensor's rows of an hour's predictions partition ---

SENSOR_COLUMNS = ["window_end", "score", "is_anomaly", "model_version"]


class CountingStorage:
    """Counts the requests and bytes that reach a storage (what a page view costs on the wire)."""

    def __init__(self, inner: Storage) -> None:
        self.inner, self.requests, self.bytes = inner, 0, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def stat(self, container: str, path: str) -> BlobStat:
        self.requests += 1
        return self.inner.stat(container, path)

    def read_range(self, container: str, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        data = self.inner.read_range(container, path, offset, length, version)
        self.requests, self.bytes = self.requests + 1, self.bytes + len(data)
        return data

    def read_bytes(self, container: str, path: str) -> bytes:
        data = self.inner.read_bytes(container, path)
        self.requests, self.bytes = self.requests + 1, self.bytes + len(data)
        return data


def shards_of_hour(sensors: int, windows: int, seed: int = 0) -> tuple[list[pd.DataFrame], np.ndarray]:
    """An hour's predictions as the shards hand them to commit: contiguous runs of sensors in (device_id, tag)
    order, as many as keep each under MAX_SHARD_WINDOWS, each in landing order (minute by minute). Returns the
    shards and the sensors' (device_id, tag) names."""
    rng = np.random.default_rng(seed)
    devices = np.array([f"dev-{d:06d}" for d in range(-(-sensors // TAGS))])
    device_of = np.repeat(devices, TAGS)[:sensors]
    tag_of = np.tile(np.array([f"tag-{t}" for t in range(TAGS)]), len(devices))[:sensors]
    per_shard = max(MAX_SHARD_WINDOWS // windows, 1)
    ends = pd.date_range(START + timedelta(minutes=1), periods=windows, freq="min")
    shards = []
    for first in range(0, sensors, per_shard):
        count = min(per_shard, sensors - first)
        n = count * windows
        level = rng.normal(20.0, 2.0, n)
        shards.append(
            pd.DataFrame(
                {  # minute by minute, every sensor of the shard in each minute: the order windows land in
                    "device_id": np.tile(device_of[first : first + count], windows),
                    "tag": np.tile(tag_of[first : first + count], windows),
                    "window_start": np.repeat(ends - pd.Timedelta(minutes=1), count),
                    "window_end": np.repeat(ends, count),
                    "value_avg": level,
                    "value_min": level - rng.random(n),
                    "value_max": level + rng.random(n),
                    "value_std": rng.random(n),
                    "reading_count": rng.integers(50, 61, n),
                    "score": rng.normal(0.5, 0.3, n),
                    "is_anomaly": rng.random(n) < 0.02,
                    "model_version": "v-bench",
                    "run_id": "scheduled__2026-11-24T00:00:00+00:00",
                    "scored_at": pd.Timestamp("2026-11-24T01:05:00Z"),
                }
            )
        )
    return shards, np.stack([device_of, tag_of], axis=1)


def write_partition(path: Path, shards: list[pd.DataFrame], *, new: bool) -> None:
    """The hour's file as commit writes it now (``new``) or wrote it before (one row group a shard, as landed)."""
    writer = pq.ParquetWriter(path, PREDICTION_SCHEMA)
    if not new:
        with writer:
            for rows in shards:
                writer.write_table(pa.Table.from_pandas(rows, schema=PREDICTION_SCHEMA, preserve_index=False))
        return
    groups = RowGroups(writer)
    try:
        for rows in shards:
            groups.add(in_key_order(rows))
        groups.flush()
    finally:
        groups.close()


def old_read(storage: Storage, container: str, path: str, only: list) -> pa.Table:
    """What the sensor page did before: the whole partition's bytes, then pyarrow's filter."""
    return pq.read_table(io.BytesIO(storage.read_bytes(container, path)), columns=SENSOR_COLUMNS, filters=only)


def measure_sensor(size: int, windows: int, queries: int, storage: Storage, where: str) -> dict[str, object]:
    containers = config.Containers()
    shards, names = shards_of_hour(size, windows)
    part = layout.Partition(START).data
    layouts = {"old": "old-layout", "new": containers.predictions}
    files = {}
    with tempfile.TemporaryDirectory(prefix="bench-sensor-") as tmp:
        for kind, container in layouts.items():
            local = Path(tmp) / f"{kind}.parquet"
            write_partition(local, shards, new=kind == "new")
            storage.upload_file(container, part, local)
            meta = pq.ParquetFile(local).metadata
            files[kind] = {
                "bytes": local.stat().st_size,
                "rows": meta.num_rows,
                "row_groups": meta.num_row_groups,
                "footer_bytes": meta.serialized_size,
            }
    picked = names[np.random.default_rng(1).choice(len(names), size=queries, replace=False)]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in ("old_read", "ranged_old_layout", "ranged", "view")}
    for device_id, tag in picked:
        only = [("device_id", "==", str(device_id)), ("tag", "==", str(tag))]
        steps = {
            "old_read": lambda s, o=only: old_read(s, layouts["old"], part, o),
            "ranged_old_layout": lambda s, o=only: read_parquet_rows(s, layouts["old"], part, SENSOR_COLUMNS, o),
            "ranged": lambda s, o=only: read_parquet_rows(s, layouts["new"], part, SENSOR_COLUMNS, o),
            "view": lambda s, d=str(device_id), t=str(tag): sensor_view(s, containers, d, t, START, START + HOUR),
        }
        found = {}
        for name, step in steps.items():
            counting = CountingStorage(storage)
            t0 = time.perf_counter()
            result = step(counting)
            runs[name].append({"s": time.perf_counter() - t0, "bytes": counting.bytes, "requests": counting.requests})
            found[name] = len(result.windows) if name == "view" else result.num_rows
        assert len(set(found.values())) == 1 and found["view"] == windows, found  # the same rows every way
    return {
        "storage": where,
        "sensors": size,
        "windows": windows,
        "shards": len(shards),
        "row_group_rows": ROW_GROUP_ROWS,
        "files": files,
        "queries": [f"{d}/{t}" for d, t in picked],
        "runs": runs,
        "median": {
            name: {key: statistics.median(r[key] for r in rows) for key in ("s", "bytes", "requests")}
            for name, rows in runs.items()
        },
    }


def sensor_main(args: argparse.Namespace) -> None:
    """The sensor page's bench on a directory or on a local Azurite started (and stopped) here."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sensor-store-") as root:
        server = None
        try:
            if args.storage == "azurite":
                from dev.azurite import Azurite
                from sensor_scoring.storage import BlobStorage

                server = Azurite(Path(root) / "azurite").start()
                storage: Storage = BlobStorage(server.connection_string)
            else:
                storage = LocalStorage(root)
            for size in args.sizes:
                results.append(measure_sensor(size, args.windows, args.queries, storage, args.storage))
        finally:
            if server is not None:
                server.stop()
    print("| storage | sensors | partition MB | row groups | read | median s | median MB read | requests |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for name, m in r["median"].items():
            kind = "old" if name in ("old_read", "ranged_old_layout") else "new"
            f = r["files"][kind]
            print(
                f"| {r['storage']} | {r['sensors']:,} | {f['bytes'] / 1e6:.1f} | {f['row_groups']} | {name} "
                f"| {m['s']:.3f} | {m['bytes'] / 1e6:.2f} | {m['requests']:.0f} |"
            )
    info = {**machine(), "pyarrow": pa.__version__}
    args.out.write_text(json.dumps({"command": sys.argv, "machine": info, "results": results}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--windows", type=int, default=12, help="synthetic scored windows per sensor and hour")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/fleet.json (fleet_sensor.json)")
    parser.add_argument("--sensor-page", action="store_true", help="the sensor page's ranged reads instead")
    parser.add_argument("--queries", type=int, default=5, help="sensors looked up (--sensor-page)")
    parser.add_argument("--storage", choices=["directory", "azurite"], default="directory", help="(--sensor-page)")
    args = parser.parse_args()
    name = "fleet_sensor.json" if args.sensor_page else "fleet.json"
    args.out = args.out or REPO / "bench" / "results" / name
    if args.sensor_page:
        if args.storage == "azurite":
            sys.path.insert(0, str(REPO))  # dev.azurite
        sensor_main(args)
        return
    results = [measure(size, args.hours, args.windows, args.repeats) for size in args.sizes]
    print("| sensors | hours | health rows | MB | data, median s | with HTML, median s | raw read, median s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['sensors']:,} | {r['hours']} | {r['health_rows']:,} | {r['health_bytes'] / 1e6:.1f} "
            f"| {r['fleet_view_median_s']:.3f} | {r['page_median_s']:.3f} | {r['raw_read_median_s']:.3f} "
            f"| {r['ratio_to_raw_read']:.2f} |"
        )
    info = {**machine(), "pyarrow": __import__("pyarrow").__version__}
    args.out.write_text(json.dumps({"command": sys.argv, "machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
