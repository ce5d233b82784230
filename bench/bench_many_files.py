"""Time reading an hour landed as many small files against the same windows in three files, on a real Azurite.

Stream Analytics can write one small file per flush; an hour of 84 sensors x 60 windows = 5,040 windows is landed
twice, in two containers: as 5,040 one-window JSON-lines files, and as 3 files (as ``LandingPlan`` does). Each
repeat times, for both landings and interleaved so that machine noise hits them alike:

- ``read``: ``windows.read_owned`` (list the folders, download every blob, parse, keep the owned windows);
- ``load``: ``steps.load.load_and_validate`` (the whole task: read, validate with great-expectations, stage);

with the reader's downloads concurrent (``formats.DOWNLOAD_CONCURRENCY``, the default 8) and, as the baseline in
the same process, one at a time (concurrency 1: what the reader did before). Reported: the median over
``--repeats`` and the ratios many ÷ three files and concurrent ÷ sequential.

    PYTHONPATH=. .venv/bin/python bench/bench_many_files.py [--sensors 84] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench_scoring import machine

from dev.azurite import Azurite
from sensor_scoring import settings as config
from sensor_scoring.steps.interval import Hour
from sensor_scoring.steps.load import load_and_validate
from sensor_scoring.storage import BlobStorage
from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour
from sensor_scoring.windows import LandingPlan, aggregate_readings, formats, land_windows, read_owned, to_asa_json_lines

HERE = Path(__file__).resolve().parent
HOUR = datetime(2026, 1, 5, 3, tzinfo=timezone.utc)


def containers(prefix: str) -> config.Containers:
    names = {name: f"{name}-{prefix}" for name in config.Containers().__dict__}
    return config.Containers(**names)


def land_one_file_per_window(storage: BlobStorage, container: str, windows) -> int:  # type: ignore[no-untyped-def]
    folder = f"{HOUR:%Y/%m/%d/%H}"
    rows = windows.reset_index(drop=True)
    for number in range(len(rows)):
        storage.write_bytes(container, f"{folder}/0_{number:05d}_1.json", to_asa_json_lines(rows.iloc[[number]]))
    return len(rows)


def timed(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "many_files.json"))
    args = parser.parse_args()

    devices = -(-args.sensors // 4)
    readings, _ = simulate_hour(SimulationConfig(devices=devices, tags=4, seed=5), HOUR)
    windows = aggregate_readings(readings)
    windows = windows[windows["window_end"] < HOUR + timedelta(hours=1)].reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp, Azurite(Path(tmp) / "azurite") as azurite:
        os.environ[config.STORAGE_ENV] = azurite.connection_string
        storage = BlobStorage(azurite.connection_string)
        many, three = containers("many"), containers("three")
        files = land_one_file_per_window(storage, many.windows, windows)
        land_windows(storage, three.windows, windows, LandingPlan(files_per_hour=3, late_share=0.0))
        runs = {"many": many, "three": three}
        results: dict[str, list[float]] = {}
        for repeat in range(args.repeats):
            for concurrency in (formats.DOWNLOAD_CONCURRENCY_DEFAULT, 1):
                formats.DOWNLOAD_CONCURRENCY = concurrency
                for label, cont in runs.items():
                    read_key = f"read {label} c{concurrency}"
                    results.setdefault(read_key, []).append(
                        timed(lambda c=cont: read_owned(storage, c.windows, HOUR, HOUR + timedelta(hours=1), 1))
                    )
                    hour = Hour(storage, cont, f"bench-{repeat}-{concurrency}", HOUR, HOUR + timedelta(hours=1))
                    results.setdefault(f"load {label} c{concurrency}", []).append(
                        timed(lambda h=hour: load_and_validate(h, max_quarantine_share=1.0))
                    )
        formats.DOWNLOAD_CONCURRENCY = formats.DOWNLOAD_CONCURRENCY_DEFAULT
    medians = {key: statistics.median(values) for key, values in results.items()}
    c = formats.DOWNLOAD_CONCURRENCY_DEFAULT
    ratios = {
        f"{step} many ÷ three (c{conc})": medians[f"{step} many c{conc}"] / medians[f"{step} three c{conc}"]
        for step in ("read", "load")
        for conc in (c, 1)
    } | {
        f"{step} many c{c} ÷ many c1": medians[f"{step} many c{c}"] / medians[f"{step} many c1"]
        for step in ("read", "load")
    }
    report = {
        "benchmark": "many_files",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "windows": len(windows),
        "files": {"many": files, "three": 3},
        "repeats": args.repeats,
        "median_s": {k: round(v, 3) for k, v in medians.items()},
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in results.items()},
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median_s": report["median_s"], "ratios": report["ratios"]}, indent=2))


if __name__ == "__main__":
    main()
