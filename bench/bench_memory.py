"""The synthetic hours, cloned models and child-process launcher the memory benchmarks share, and the peak memory
of ``model_health`` at 100k and 300k sensors (every other task kind of the hour: ``bench_tasks.py``).

The hour's windows are synthetic (vectorised; value, spread, count per sensor-minute), because simulating
100k sensors' raw readings would dominate the run; the models are ``--base-models`` real OneClassSVM
pipelines trained by ``sensor_scoring.models.train_models`` and registered under every sensor's name (a model's
size is what it is). A measured command runs in a fresh child of a small launcher (LAUNCHER), which reports the
child's own peak resident set.

Model health: an hour of S sensors x 60 windows committed as ``commit`` leaves it, built
directly with pyarrow (predictions written by a ``ParquetWriter``, one row group per ``--health-row-group``
sensors, as commit writes a shard's rows; a quarantine partition of one sensor in a hundred quarantined
``no_model`` plus rows without a key; the version's training statistics, per hour of day too; the hour before's
health, where those sensors were scored: lost models), then
``steps.health.model_health`` of that hour run in a fresh child (the launcher); its peak RSS, wall time and
a floor (a child that only imports the step) go to ``--health-out``.

    .venv/bin/python bench/bench_memory.py [--health-sizes 100000 300000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sensor_scoring import layout, settings as config, storage as st
from sensor_scoring.contracts import PREDICTION_SCHEMA, QUARANTINE_SCHEMA
from sensor_scoring.models import fitting, registry, stats as model_stats
from sensor_scoring.steps import health
from sensor_scoring.storage import LocalStorage
from sensor_scoring.tools.simulate import TAG_NAMES

HERE = Path(__file__).resolve().parent
HOUR = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)
TAGS = 4


def synthetic_windows(sensors: int, start: datetime, hours: int = 1, seed: int = 0) -> pd.DataFrame:
    """``sensors`` sensors (``sensors/4`` devices x 4 tags) x 60 windows per hour, contract dtypes."""
    rng = np.random.default_rng(seed)
    per = 60 * hours
    sensor = np.repeat(np.arange(sensors), per)
    minute = np.tile(np.arange(per), sensors)
    base = rng.uniform(10, 100, sensors)[sensor]
    avg = base + rng.normal(0, 1, len(sensor))
    std = np.abs(rng.normal(0.5, 0.1, len(sensor)))
    frame = pd.DataFrame(
        {
            "device_id": pd.Series(sensor // TAGS).map("dev-{:06d}".format).astype("string"),
            "tag": pd.Series(np.array(TAG_NAMES[:TAGS])[sensor % TAGS]).astype("string"),
            "window_end": pd.Timestamp(start) + pd.to_timedelta(minute, unit="min"),
            "value_avg": avg,
            "value_min": avg - 2 * std,
            "value_max": avg + 2 * std,
            "value_std": std,
            "reading_count": np.full(len(sensor), 6, dtype="int64"),
        }
    )
    frame["window_end"] = frame["window_end"].astype("datetime64[ns, UTC]")
    return frame


def base_models(count: int) -> list[fitting.TrainedModel]:
    history = synthetic_windows(count, HOUR - timedelta(hours=3), hours=3, seed=1)
    return fitting.train_models(history)


def register_for(
    storage: st.Storage,
    container: str,
    sensors: pd.DataFrame,
    base: list[fitting.TrainedModel],
    version: str,
    *,
    promote: bool = False,
) -> None:
    """Every sensor of the hour gets one of the real base models, under its own name."""
    clones = [
        fitting.TrainedModel(
            device_id=d,
            tag=t,
            pipeline=None,
            arrays=base[i % len(base)].arrays,
            rows=base[0].rows,
            train_start=base[0].train_start,
            train_end=base[0].train_end,
            flagged_share=0.0,
        )
        for i, (d, t) in enumerate(sensors.itertuples(index=False, name=None))
    ]
    registry.register(storage, container, clones, version=version, params={"bench": "clones"}, promote=promote)


#: A small launcher runs each measured command and reports its child's peak RSS. Why not measure from here:
#: Linux charges a child the RSS high-water mark of the process it was forked from (kept across exec), so a
#: child forked by this big benchmark process would report this process's size. Forked from the launcher
#: (about 10 MiB), the shard's figure is its own.
LAUNCHER = """
import os, subprocess, sys, time
began = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, time.perf_counter() - began)
"""


def child_peak_rss(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one run of ``command``, as the kernel accounts that process."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], env=env, capture_output=True, text=True)
    code, kib, wall = done.stdout.split()
    if done.returncode != 0 or int(code) != 0:
        raise RuntimeError(f"{command} exited {code}: {done.stderr[-2000:]}")
    return int(kib) / 1024, float(wall)  # Linux reports KiB


#: What the child runs: the step, on the hour given, with the settings' default thresholds.
HEALTH_CHILD = """
import sys
from datetime import datetime, timedelta
from sensor_scoring import settings as config
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps import health
from sensor_scoring.storage import LocalStorage
h = datetime.fromisoformat(sys.argv[2])
scope = Scope(LocalStorage(sys.argv[1]), config.Containers(), "bench-health", h, h + timedelta(hours=1))
if sys.argv[3] == "run":
    health.model_health(scope, health.Thresholds.from_settings(config.Settings.from_env({})))
"""


def _names(count: int, pattern: str) -> pa.Array:
    return pa.array([pattern.format(n) for n in range(count)], pa.string())


def write_committed_hour(root: Path, sensors: int, version: str, row_group: int, seed: int = 0) -> int:
    """An hour of ``sensors`` x 60 windows committed (predictions, quarantine, the predictions manifest) and the
    version's training statistics, written directly (vectorised); returns the predictions file's bytes."""
    storage, containers, part = LocalStorage(root), config.Containers(), layout.Partition(HOUR)
    rng = np.random.default_rng(seed)
    devices, tags = _names(sensors // TAGS + 1, "dev-{:06d}"), pa.array(TAG_NAMES[:TAGS], pa.string())
    local = root / f"predictions-{sensors}.parquet"
    minute = np.arange(60)
    ends = (np.datetime64(HOUR.replace(tzinfo=None), "us") + minute.astype("timedelta64[m]")).astype("datetime64[us]")
    with pq.ParquetWriter(local, PREDICTION_SCHEMA) as writer:
        for first in range(0, sensors, row_group):
            sensor = np.repeat(np.arange(first, min(first + row_group, sensors)), 60)
            rows = len(sensor)
            avg = rng.uniform(10, 100, rows)
            score = rng.normal(0.3, 0.2, rows)
            end = np.tile(ends, rows // 60)
            columns = {
                "device_id": devices.take(pa.array(sensor // TAGS)),
                "tag": tags.take(pa.array(sensor % TAGS)),
                "window_start": end - np.timedelta64(1, "m"),
                "window_end": end,
                "value_avg": avg,
                "value_min": avg - 1,
                "value_max": avg + 1,
                "value_std": np.full(rows, 0.5),
                "reading_count": np.full(rows, 6, dtype="int64"),
                "score": score,
                "is_anomaly": score <= 0,
                "model_version": pa.array([version] * rows, pa.string()),
                "run_id": pa.array(["bench"] * rows, pa.string()),
                "scored_at": end,
            }
            writer.write_table(pa.table(columns, schema=PREDICTION_SCHEMA))
    storage.upload_file(containers.predictions, part.data, local)
    size = local.stat().st_size
    local.unlink()
    lost = max(1, sensors // 100)  # sensors without a model: every window quarantined no_model
    sensor = np.repeat(np.arange(sensors, sensors + lost), 60)
    quarantine = pd.DataFrame(
        {
            "device_id": [f"dev-{n // TAGS:06d}-x" for n in sensor] + [None] * 60,
            "tag": [TAG_NAMES[n % TAGS] for n in sensor] + [None] * 60,
            "window_end": pd.Timestamp(HOUR) + pd.to_timedelta(np.tile(minute, lost + 1), unit="min"),
            "value_avg": 1.0,
            "value_min": 0.0,
            "value_max": 2.0,
            "value_std": 0.5,
            "reading_count": 6.0,
            "source_file": "bench.json",
            "reason": ["no_model"] * len(sensor) + ["null_key"] * 60,
            "run_id": "bench",
        }
    )
    storage.write_bytes(containers.quarantine, part.data, st.parquet_bytes(quarantine, QUARANTINE_SCHEMA))
    storage.write_bytes(containers.predictions, part.manifest, json.dumps({"model_version": version}).encode())
    # the hour before's health: every sensor scored (those now without a model too: lost models), a few drifting
    before = pa.concat_arrays(
        [
            devices.take(pa.array(np.arange(sensors) // TAGS)),
            pa.array(quarantine["device_id"][:-60:60].tolist(), pa.string()),
        ]
    )
    tags_before = pa.concat_arrays(
        [tags.take(pa.array(np.arange(sensors) % TAGS)), pa.array(quarantine["tag"][:-60:60].tolist(), pa.string())]
    )
    rows = len(before)
    drifting = rng.random(rows) < 0.001
    previous = {
        "device_id": before,
        "tag": tags_before,
        "model_version": pa.array([version] * rows, pa.string()),
        "windows": np.full(rows, 60, dtype="int64"),
        "anomalies": np.where(drifting, 30, 1).astype("int64"),
        "anomaly_rate": np.where(drifting, 0.5, 1 / 60),
        "train_flagged_share": np.full(rows, 0.02),
        "expected_rate": np.full(rows, 0.02),
        "p_value": np.where(drifting, 1e-9, 0.7),
        "psi": np.full(rows, 0.01),
        "score_mean": np.full(rows, 0.3),
        "quarantined": np.zeros(rows, dtype="int64"),
        "quarantine_share": np.zeros(rows),
        "drifting": drifting,
        "drift_hours": drifting.astype("int64"),
        "status": pa.array(["ok"] * rows, pa.string()),
    }
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(previous, schema=health.HEALTH_SCHEMA), sink)
    storage.write_bytes(
        containers.health, layout.Partition(HOUR - timedelta(hours=1)).data, sink.getvalue().to_pybytes()
    )
    bins = model_stats.BINS
    edges = np.quantile(rng.normal(0.3, 0.2, 10_000), np.linspace(0, 1, bins + 1)[1:-1])

    def lists(values: np.ndarray, width: int) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(np.arange(0, len(values) + 1, width, dtype="int32")), values)

    stats = pa.table(
        {
            "device_id": devices.take(pa.array(np.arange(sensors) // TAGS)),
            "tag": tags.take(pa.array(np.arange(sensors) % TAGS)),
            "train_rows": np.full(sensors, 24 * 60 * 7, dtype="int64"),
            "train_flagged_share": np.full(sensors, 0.02),
            "score_mean": np.full(sensors, 0.3),
            "score_std": np.full(sensors, 0.2),
            "edges": lists(np.tile(edges, sensors), bins - 1),
            "counts": lists(np.full(sensors * bins, 1008, dtype="int64"), bins),
            "hourly_counts": lists(lists(np.full(sensors * 24 * bins, 42, dtype="int64"), bins), 24),
            "hourly_flagged_share": lists(np.full(sensors * 24, 0.02), 24),
            "false_alarm_rate": np.full(sensors, 0.02),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(stats, sink)
    storage.write_bytes(containers.models, model_stats.stats_path(version), sink.getvalue().to_pybytes())
    return size


def measure_health(root: Path, sensors: int, row_group: int, repeats: int) -> dict:
    """Peak RSS and wall time of ``model_health`` of a committed hour of ``sensors`` sensors, in a fresh child."""
    began = time.perf_counter()
    size = write_committed_hour(root, sensors, f"v{sensors}", row_group)
    build_s = time.perf_counter() - began
    env = {**os.environ, config.STORAGE_ENV: str(root)}
    command = [sys.executable, "-c", HEALTH_CHILD, str(root), HOUR.isoformat()]
    floor = statistics.median(child_peak_rss([*command, "import"], env)[0] for _ in range(repeats))
    runs = [child_peak_rss([*command, "run"], env) for _ in range(repeats)]
    manifest = health.read_manifest(LocalStorage(root), config.Containers(), HOUR)
    assert manifest is not None and manifest.windows == sensors * 60, manifest
    return {
        "hour_sensors": sensors,
        "hour_windows": sensors * 60,
        "predictions_bytes": size,
        "row_group_sensors": row_group,
        "build_s": round(build_s, 1),
        "floor_mib": round(floor, 1),
        "peak_rss_mib_median": round(statistics.median(r for r, _ in runs), 1),
        "wall_s_median": round(statistics.median(w for _, w in runs), 1),
        "samples_mib": [round(r, 1) for r, _ in runs],
        "samples_s": [round(w, 1) for _, w in runs],
        "health": {
            "sensors": manifest.sensors,
            "quarantined": manifest.quarantined,
            "drifting": manifest.drifting,
            "models_lost": manifest.models_lost,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=["health"], default=["health"])
    parser.add_argument("--health-sizes", type=int, nargs="*", default=[100_000, 300_000])
    parser.add_argument("--health-row-group", type=int, default=4000, help="sensors per row group of predictions")
    parser.add_argument("--health-repeats", type=int, default=2)
    parser.add_argument("--health-out", type=Path, default=HERE / "results" / "health_memory.json")
    args = parser.parse_args()
    health_memory(args)


def health_memory(args: argparse.Namespace) -> None:
    results: dict[str, object] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "by_hour_size": [],
    }
    for sensors in args.health_sizes:
        with tempfile.TemporaryDirectory(prefix="bench-health-") as tmp:
            row = measure_health(Path(tmp), sensors, args.health_row_group, args.health_repeats)
        results["by_hour_size"].append(row)  # type: ignore[attr-defined]
        print(json.dumps(row), flush=True)
    args.health_out.parent.mkdir(parents=True, exist_ok=True)
    args.health_out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.health_out}")


if __name__ == "__main__":
    main()
