"""Peak memory of a shard process at 1k, 10k and 100k sensors in the hour, and the validation time of an hour.

Claim under test: a shard's peak memory depends on the shard's size (``sensors_per_shard``), not on how many
sensors the hour holds. For each hour size S the hour is staged as ``load_and_validate`` leaves it
(``valid.parquet`` in the run's staging folder), models are registered for all S sensors, the real
``steps.plan.plan_shards`` cuts the hour into shards of a fixed size, and the first, middle and last shard are
each run as the real shard command, ``python -m sensor_scoring score-shard --spec <uri>``, in a fresh child process.
The child's peak resident set (``ru_maxrss`` from ``os.wait4``, taken by a small launcher: see LAUNCHER) is
recorded; each shard is run ``--repeats`` times and the median is reported. A second series keeps the hour at 10k
sensors and varies the shard size. A floor is measured too: a child that only imports what the shard command imports.

The hour's windows are synthetic (vectorised; value, spread, count per sensor-minute), because simulating
100k sensors' raw readings would dominate the run; the models are ``--base-models`` real OneClassSVM
pipelines trained by ``sensor_scoring.models.train_models`` and registered under every sensor's name (the shard
cannot tell, and a model's size is what it is). Storage is a local directory (``SCORING_STORAGE=<dir>``), so
no blob server's memory or latency is mixed in.

Validation time: S sensors x 60 windows landed as Stream Analytics line-separated JSON (3 files) and read,
parsed, validated by the great-expectations suite and staged by ``steps.load.load_and_validate``; the suite's
own time is reported apart (from the validation report).

    .venv/bin/python bench/bench_memory.py [--sizes 1000 10000 100000] [--shard-size 250] [--repeats 3]
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

from sensor_scoring import layout, settings as config, storage as st
from sensor_scoring.backends import shard_command
from sensor_scoring.contracts import ValidationReport
from sensor_scoring.models import fitting, registry
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps.load import load_and_validate
from sensor_scoring.steps.plan import plan_shards
from sensor_scoring.storage import LocalStorage
from sensor_scoring.tools.simulate import TAG_NAMES
from sensor_scoring.windows import LandingPlan, land_windows

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


def measure_hour(root: Path, sensors: int, shard_size: int, repeats: int, base: list[fitting.TrainedModel]) -> dict:
    storage = LocalStorage(root)
    containers = config.Containers()
    hour = Scope(storage, containers, f"bench-{sensors}-{shard_size}", HOUR, HOUR + timedelta(hours=1))
    windows = synthetic_windows(sensors, HOUR)
    version = f"v{sensors}"
    if not storage.list(containers.models, f"versions/{version}/"):
        register_for(storage, containers.models, windows[["device_id", "tag"]].drop_duplicates(), base, version)
    run = layout.Run(hour.run_key)
    storage.write_bytes(containers.staging, run.valid, st.parquet_bytes(windows))
    began = time.perf_counter()
    shards = plan_shards(hour, model_version=version, sensors_per_shard=shard_size)
    plan_s = time.perf_counter() - began
    picks = sorted({0, len(shards) // 2, len(shards) - 1})
    env = {**os.environ, config.STORAGE_ENV: str(root)}
    samples: dict[int, list[float]] = {}
    seconds: list[float] = []
    for _ in range(repeats):
        for number in picks:
            rss, wall = child_peak_rss(shard_command(shards[number].spec_uri, python=sys.executable), env)
            samples.setdefault(number, []).append(rss)
            seconds.append(wall)
    input_bytes = [(root / containers.staging / run.shard(n).input).stat().st_size for n in picks]
    storage.delete_prefix(containers.staging, run.prefix)
    medians = [statistics.median(v) for v in samples.values()]
    return {
        "hour_sensors": sensors,
        "hour_windows": len(windows),
        "shard_size": shard_size,
        "shards": len(shards),
        "measured_shards": picks,
        "windows_per_shard": [shards[n].windows for n in picks],
        "shard_input_bytes": input_bytes,
        "plan_shards_s": round(plan_s, 2),
        "peak_rss_mib_median": round(statistics.median(medians), 1),
        "peak_rss_mib_min": round(min(min(v) for v in samples.values()), 1),
        "peak_rss_mib_max": round(max(max(v) for v in samples.values()), 1),
        "shard_wall_s_median": round(statistics.median(seconds), 2),
        "samples_mib": {str(k): [round(x, 1) for x in v] for k, v in samples.items()},
    }


def measure_floor(repeats: int) -> float:
    probe = [
        sys.executable,
        "-c",
        "import sensor_scoring.cli, sensor_scoring.steps.score, sensor_scoring.storage",
    ]  # the shard's imports
    return round(statistics.median(child_peak_rss(probe, dict(os.environ))[0] for _ in range(repeats)), 1)


def measure_validation(root: Path, sensors: int, repeats: int) -> dict:
    storage = LocalStorage(root)
    containers = config.Containers()
    land_windows(storage, containers.windows, synthetic_windows(sensors, HOUR), LandingPlan(late_share=0.0))
    totals, suite = [], []
    for r in range(repeats):
        hour = Scope(storage, containers, f"validate-{sensors}-{r}", HOUR, HOUR + timedelta(hours=1))
        began = time.perf_counter()
        summary = load_and_validate(hour, late_folders=0)
        totals.append(time.perf_counter() - began)
        report = ValidationReport.from_json(
            storage.read_bytes(*st.parse_uri(summary.validation_report)), source=summary.validation_report
        )
        suite.append(report.seconds)
        assert summary.valid == sensors * 60, summary
        storage.delete_prefix(containers.staging, layout.staging_prefix(hour.run_key))
    return {
        "hour_sensors": sensors,
        "windows": sensors * 60,
        "expectations": len(report.expectations),
        "load_and_validate_s_median": round(statistics.median(totals), 2),
        "suite_s_median": round(statistics.median(suite), 2),
        "samples_load_and_validate_s": [round(x, 2) for x in totals],
        "samples_suite_s": suite,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--shard-sizes-at", type=int, default=10_000, help="hour size of the shard-size series")
    parser.add_argument("--shard-sizes", type=int, nargs="*", default=[50, 250, 1000, 2500])
    parser.add_argument("--validate-sizes", type=int, nargs="*", default=[1000, 10_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base-models", type=int, default=100)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "memory.json")
    args = parser.parse_args()
    began = time.perf_counter()
    base = base_models(args.base_models)
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "support_vectors_median": statistics.median(len(m.arrays.dual_coef) for m in base),
        "floor_mib": measure_floor(args.repeats),
        "by_hour_size": [],
        "by_shard_size": [],
        "validation": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for sensors in args.sizes:
            row = measure_hour(Path(tmp), sensors, args.shard_size, args.repeats, base)
            results["by_hour_size"].append(row)
            print(json.dumps(row), flush=True)
        for size in args.shard_sizes:
            row = measure_hour(Path(tmp), args.shard_sizes_at, size, args.repeats, base)
            results["by_shard_size"].append(row)
            print(json.dumps(row), flush=True)
    for sensors in args.validate_sizes:
        with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
            row = measure_validation(Path(tmp), sensors, args.repeats)
            results["validation"].append(row)
            print(json.dumps(row), flush=True)
    results["total_s"] = round(time.perf_counter() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"floor {results['floor_mib']} MiB; wrote {args.out} in {results['total_s']} s")


if __name__ == "__main__":
    main()
