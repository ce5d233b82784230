"""What the lookback of context-v1 costs ``steps.load.load_and_validate``: the same hour with and without it.

An hour of S sensors and the hour before are landed (line-separated JSON, ``bench_memory.synthetic_windows``, no late
windows) on a local-directory storage. In one process, after a warm-up run (great-expectations' import, first
suite), the step runs ``--repeats`` times in each of two ways, alternating: as it is, and with its ``with_features``
replaced by the identity (no context read, no derived columns). Then the parts of the context alone are timed:
``features.read_context`` (read the previous hour's folder and the late one, keep the owned windows of its last
``LOOKBACK_MINUTES``, validate them) and ``features.add_features`` on the hour with that context. Medians and their
ratio come from the same process, so a shared machine's load moves both sides alike (the load average is recorded).

    .venv/bin/python bench/bench_context.py [--sensors 10000] [--repeats 3] [--out bench/results/context.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "context.json")
    args = parser.parse_args()

    from bench_memory import HOUR, synthetic_windows
    from bench_scoring import machine

    from sensor_scoring import features, settings as config
    from sensor_scoring.runs.scope import Scope
    from sensor_scoring.steps import load
    from sensor_scoring.storage import LocalStorage
    from sensor_scoring.windows import LandingPlan, land_windows, read_owned

    started_load = [round(x, 2) for x in os.getloadavg()]
    root = Path(tempfile.mkdtemp(prefix="bench-context-"))
    try:
        storage, containers = LocalStorage(root), config.Containers()
        windows = synthetic_windows(args.sensors, HOUR - timedelta(hours=1), hours=2)
        plan = LandingPlan(files_per_hour=max(1, len(windows) // 200_000), late_share=0.0)
        land_windows(storage, containers.windows, windows, plan)

        def run(name: str) -> float:
            began = time.perf_counter()
            load.load_and_validate(Scope(storage, containers, name, HOUR, HOUR + timedelta(hours=1)), late_folders=0)
            return time.perf_counter() - began

        real, real_read = load.with_features, load.read_owned_with_lookback

        def without_lookback(storage, container, start, end, late_folders):  # type: ignore[no-untyped-def]
            return read_owned(storage, container, start, end, late_folders), None

        run("warm-up")
        times: dict[str, list[float]] = {"with_context": [], "without_context": []}
        for i in range(args.repeats):
            load.with_features, load.read_owned_with_lookback = real, real_read
            times["with_context"].append(run(f"with-{i}"))
            # no lookback: the interval's own folders only, and no derived columns
            load.read_owned_with_lookback = without_lookback
            load.with_features = lambda hour, valid, before, **_: valid  # type: ignore[assignment]
            times["without_context"].append(run(f"without-{i}"))
        load.with_features, load.read_owned_with_lookback = real, real_read
        began = time.perf_counter()
        context = features.read_context(storage, containers.windows, HOUR, late_folders=0)
        read_context_s = time.perf_counter() - began
        hour = windows.loc[windows["window_end"] >= HOUR].reset_index(drop=True)
        began = time.perf_counter()
        features.add_features(hour, context)
        add_features_s = time.perf_counter() - began
    finally:
        shutil.rmtree(root)
    medians = {k: round(statistics.median(v), 2) for k, v in times.items()}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {**machine(), "load_average_at_start": started_load},
        "sensors": args.sensors,
        "windows_per_hour": args.sensors * 60,
        "runs_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "median_s": medians,
        "ratio_with_to_without": round(medians["with_context"] / medians["without_context"], 2),
        "read_context_s": round(read_context_s, 2),
        "context_windows": len(context),
        "add_features_s": round(add_features_s, 2),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
