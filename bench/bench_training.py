"""Time and peak memory of one training shard: the real ``train-shard`` command on a shard cut by the real ``gather``.

For each shard size S (sensors): S sensors x ``--hours`` simulated hours are landed in a local-directory storage,
``steps.training.gather`` validates them and stages one shard of S sensors (holding back the last hour; with
``refit``, the default, the shard fits twice: the judged models before the held-back hour, then the registered
ones on the whole range; each size is measured both ways in the same run), then
``python -m sensor_scoring train-shard --spec <uri>`` runs in a fresh process, ``--repeats`` times, started by
``bench_memory``'s launcher (so its peak RSS is its own). Reports the median wall time, seconds per sensor and the
median peak RSS; a fleet's training time is its shard count times the per-shard figure, divided by the shards run
at once (every shard is one process: the local backend runs mapped instances on the workers' slots, Azure Batch
on the pool's nodes).

    .venv/bin/python bench/bench_training.py [--sizes 100 500] [--hours 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import child_peak_rss  # noqa: E402

from sensor_scoring import settings as config  # noqa: E402
from sensor_scoring.runs.scope import Scope  # noqa: E402
from sensor_scoring.steps.training import gather  # noqa: E402
from sensor_scoring.storage import LocalStorage  # noqa: E402
from sensor_scoring.tools.simulate import SimulationConfig, simulate_to_storage  # noqa: E402

START = datetime(2026, 11, 24, tzinfo=timezone.utc)


def measure(size: int, hours: int, repeats: int, refit: bool) -> dict[str, object]:
    root = tempfile.mkdtemp(prefix="bench-training-")
    storage, containers = LocalStorage(root), config.Containers()
    cfg = SimulationConfig(devices=-(-size // 4), tags=4, seed=1, anomaly_rate=0.0)
    simulate_to_storage(
        storage,
        cfg,
        START,
        START + timedelta(hours=hours),
        windows_container=containers.windows,
        labels_container=containers.labels,
    )
    run = Scope(storage, containers, f"bench-{size}", START, START + timedelta(hours=hours))
    [shard] = gather(
        run, holdout_hours=1, sensors_per_shard=10**9, nu=0.02, min_rows=30, threshold_mads=5.0, refit=refit
    )
    env = {**os.environ, config.STORAGE_ENV: root}
    command = [sys.executable, "-m", "sensor_scoring", "train-shard", "--spec", shard.spec_uri]
    runs = [child_peak_rss(command, env) for _ in range(repeats)]
    wall = statistics.median(w for _, w in runs)
    return {
        "refit": refit,
        "sensors": shard.sensors,
        "windows": shard.windows,
        "seconds": round(wall, 2),
        "seconds_per_sensor": round(wall / shard.sensors, 4),
        "peak_rss_mib": round(statistics.median(m for m, _ in runs), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/training.json")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        for refit in (False, True):
            rows.append(measure(size, args.hours, args.repeats, refit))
            print(json.dumps(rows[-1]), flush=True)
    result = {"machine": platform.platform(), "cpus": os.cpu_count(), "hours": args.hours, "shards": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
