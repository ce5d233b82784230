"""``steps.load.load_and_validate`` on hours of 1k, 10k and 100k sensors: where its time goes, and its peak memory.

Claim under test: validating an hour costs one great-expectations import and one suite run per hour, and the
step's peak resident memory at 100k sensors x 60 windows stays within 2 GiB. For each size S the hour is landed
as Stream Analytics writes it (line-separated JSON, files of about ``--file-windows`` windows, no late windows)
on a local-directory storage (``LocalStorage``: no blob server's memory or latency mixed in), then a fresh child
process (this script with ``--child``) times, in order:

- ``gx_import_s``: importing great-expectations and the project's suite module, before the step, so the step
  itself finds it imported (it imports it lazily, once per process);
- the step, ``load_and_validate(hour, late_folders=0)``, split into ``read_s`` (``read_owned_with_lookback``:
  list, read and parse the files of the hour and of its lookback, keep the owned windows; timed by wrapping the
  step's own reference to it), ``suite_s`` (the
  suite's own time from the validation report: building the suite, the context on first use, the validation)
  and ``rest_s`` (selection, duplicate collapse, casting, staging the Parquet and the report);
- ``suite_runs``: how many times the step ran the suite (counted by wrapping ``run_suite``): 1 per hour.

The child's peak RSS is ``ru_maxrss`` from ``os.wait4``. The hour's windows are ``bench_memory.synthetic_windows``
(vectorised, contract types); validation does not care how realistic the values are, only how many.

    .venv/bin/python bench/bench_load.py [--sizes 1000 10000 100000] [--file-windows 100000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(root: Path, sensors: int) -> None:
    """Run the step once on the landed hour and print its timings as one JSON line."""
    began = time.perf_counter()
    from sensor_scoring import settings as config, storage as st
    from sensor_scoring.contracts import ValidationReport
    from sensor_scoring.runs.scope import Scope
    from sensor_scoring.steps import load
    from sensor_scoring.storage import LocalStorage

    imports_s = time.perf_counter() - began
    import_began = time.perf_counter()
    from sensor_scoring.validation import expectations  # imports great-expectations

    gx_import_s = time.perf_counter() - import_began
    read_s: list[float] = []
    suite_runs: list[int] = []
    read_peak_kib: list[int] = []
    real_read, real_suite = load.read_owned_with_lookback, expectations.run_suite

    def timed_read(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real_read(*args, **kwargs)
        finally:
            read_s.append(time.perf_counter() - t)
            read_peak_kib.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    def counted_suite(*args, **kwargs):
        suite_runs.append(1)
        return real_suite(*args, **kwargs)

    load.read_owned_with_lookback = timed_read
    expectations.run_suite = counted_suite
    storage = LocalStorage(root)
    containers = config.Containers()
    from bench_memory import HOUR

    hour = Scope(storage, containers, f"load-{sensors}", HOUR, HOUR + timedelta(hours=1))
    step_began = time.perf_counter()
    summary = load.load_and_validate(hour, late_folders=0)
    step_s = time.perf_counter() - step_began
    report = ValidationReport.from_json(
        storage.read_bytes(*st.parse_uri(summary.validation_report)), source=summary.validation_report
    )
    if summary.valid + summary.quarantined + summary.duplicates != summary.landed:
        raise SystemExit(f"accounting does not close: {summary}")
    print(
        json.dumps(
            {
                "imports_s": round(imports_s, 3),
                "gx_import_s": round(gx_import_s, 3),
                "step_s": round(step_s, 3),
                "read_s": round(sum(read_s), 3),
                "suite_s": round(report.seconds, 3),
                "rest_s": round(step_s - sum(read_s) - report.seconds, 3),
                "peak_rss_after_read_mib": round(max(read_peak_kib) / 1024, 1),
                "suite_runs": len(suite_runs),
                "files_read": summary.files_read,
                "landed": summary.landed,
                "valid": summary.valid,
                "quarantined": summary.quarantined,
                "expectations": len(report.expectations),
            }
        )
    )


def measure(root: Path, sensors: int, file_windows: int) -> dict:
    from bench_memory import HOUR, synthetic_windows

    from sensor_scoring import settings as config
    from sensor_scoring.storage import LocalStorage
    from sensor_scoring.windows import LandingPlan, land_windows

    windows = synthetic_windows(sensors, HOUR)
    files = max(1, math.ceil(len(windows) / file_windows))
    land_began = time.perf_counter()
    land_windows(
        LocalStorage(root), config.Containers().windows, windows, LandingPlan(files_per_hour=files, late_share=0.0)
    )
    land_s = time.perf_counter() - land_began
    landed_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    del windows
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(root), str(sensors)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child for {sensors} sensors failed ({proc.returncode})")
    row = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "sensors": sensors,
        "windows": sensors * 60,
        "landed_files": files,
        "landed_mib": round(landed_bytes / 2**20, 1),
        "land_s": round(land_s, 2),
        "child_wall_s": round(time.perf_counter() - began, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        **row,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--file-windows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "load.json")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "SENSORS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]))
        return
    from bench_scoring import machine

    from sensor_scoring.windows import read_landed_files

    results: dict = {
        "machine": {**machine(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "reader": f"{read_landed_files.__module__}.read_landed_files",
        "runs": [],
    }
    for sensors in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
            row = measure(Path(tmp), sensors, args.file_windows)
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
