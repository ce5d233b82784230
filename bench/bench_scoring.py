"""Time the scoring of S sensors x 60 one-minute windows (one hour) three ways, on identical data and models.

1. project          ``sensor_scoring.scorer.score`` in-process, vectorised across sensors; also
   project+load     the same, preceded by reading the models from their packed bytes
                    (``sensor_scoring.models.unpack``) and checking every model's digest, as the DAG does.
2. sklearn loop     in-process loop over sensors: each fitted pipeline's ``decision_function`` and
                    ``predict`` on that sensor's 60 windows.
3. original design  one fresh Python process per sensor (``original_worker.py``), each reading the WHOLE
                    hour's windows CSV and unpickling its own model, run sequentially and 2 at a time.

Data and models come from the project's own simulator, aggregator and trainer: ``ceil(S/4)`` devices x 4
tags, 6 training hours, then the next hour is scored. Nothing is cached across runs. Correctness is asserted
inside the run: every approach's scores equal scikit-learn's ``decision_function`` within 1e-9 and its
anomalies equal ``predict == -1``.

In-process timings: each repeat calls the approach enough times to last >= ``--min-time`` seconds and records
the mean per call; the reported figure is the median over ``--repeats`` repeats, and the repeats of the three
in-process approaches are interleaved so that machine noise hits them alike. Process timings: one repeat is
one whole hour (S processes); median over ``--process-repeats`` repeats. The original design's re-reading
of the whole hour is also timed alone, in-process, for every size (it grows with the fleet).

    .venv/bin/python bench/bench_scoring.py [--sizes 10 100 1000] [--process-sizes 10 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn

from sensor_scoring import models as model_store
from sensor_scoring.features import feature_matrix
from sensor_scoring.models.fitting import train_models
from sensor_scoring.models.pack import PACK_SIZE
from sensor_scoring.scorer import score
from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour
from sensor_scoring.windows import aggregate_readings

HERE = Path(__file__).resolve().parent
WORKER = HERE / "original_worker.py"
TAGS = 4
TRAIN_HOURS = 6
FIRST_HOUR = datetime(2026, 1, 5, 0, tzinfo=timezone.utc)
TOLERANCE = 1e-9

PROJECT = "project"
PROJECT_LOAD = "project incl. model load from packs"
SKLEARN = "sklearn loop"
PROC_SEQ = "original design: process per sensor, sequential"
PROC_PAR = "original design: process per sensor, 2 in parallel"
ORDER = (PROJECT, PROJECT_LOAD, SKLEARN, PROC_SEQ, PROC_PAR)


# ---------------------------------------------------------------------------------------------- fleet
class Fleet:
    """S sensors: the scored hour's windows, fitted pipelines, their arrays, packed bytes and digests."""

    def __init__(self, sensors: int, seed: int):
        cfg = SimulationConfig(devices=math.ceil(sensors / TAGS), tags=TAGS, seed=seed)
        keep = set(cfg.sensors()[:sensors])

        def hour_windows(offset: int) -> pd.DataFrame:
            readings, _labels = simulate_hour(cfg, FIRST_HOUR + timedelta(hours=offset))
            windows = aggregate_readings(readings)
            mask = [key in keep for key in zip(windows["device_id"], windows["tag"])]
            return windows.loc[mask].reset_index(drop=True)

        started = time.perf_counter()
        train = pd.concat([hour_windows(h) for h in range(TRAIN_HOURS)], ignore_index=True)
        self.trained = train_models(train)
        self.windows = hour_windows(TRAIN_HOURS)  # the hour after the training hours
        assert isinstance(self.windows.index, pd.RangeIndex) and self.windows.index.start == 0
        self.setup_seconds = time.perf_counter() - started
        self.sensors = sensors
        self.keys = [(m.device_id, m.tag) for m in self.trained]  # sorted by key, as registered
        if len(self.keys) != sensors or set(self.keys) != keep:
            raise RuntimeError(f"expected {sensors} trained sensors, got {len(self.keys)}")
        self.arrays = {key: m.arrays for key, m in zip(self.keys, self.trained)}
        self.pipelines = {key: m.pipeline for key, m in zip(self.keys, self.trained)}
        # What the registry holds: packs of up to PACK_SIZE models, and each model's digest in the index.
        self.packs = [
            model_store._pack_bytes([m.arrays for m in self.trained[start : start + PACK_SIZE]])
            for start in range(0, sensors, PACK_SIZE)
        ]
        self.digests = [m.arrays.digest() for m in self.trained]
        self.support_vectors = [len(m.arrays.dual_coef) for m in self.trained]


# ---------------------------------------------------------------------------------------- approaches
def run_project(fleet: Fleet) -> pd.DataFrame:
    return score(fleet.windows, fleet.arrays)


def run_project_with_load(fleet: Fleet) -> pd.DataFrame:
    loaded = {}
    for number, data in enumerate(fleet.packs):
        base = number * PACK_SIZE
        for row, arrays in enumerate(model_store.unpack(data)):
            if arrays.digest() != fleet.digests[base + row]:
                raise model_store.ModelIntegrityError(f"digest mismatch for {fleet.keys[base + row]}")
            loaded[fleet.keys[base + row]] = arrays
    return score(fleet.windows, loaded)


def run_sklearn_loop(fleet: Fleet) -> pd.DataFrame:
    windows = fleet.windows
    scores = np.empty(len(windows))
    anomalies = np.empty(len(windows), dtype=bool)
    for key, rows in windows.groupby(["device_id", "tag"], sort=True, observed=True):
        pipeline = fleet.pipelines[key]
        features = feature_matrix(rows)
        where = rows.index.to_numpy()  # fleet.windows has a RangeIndex: labels are positions
        scores[where] = pipeline.decision_function(features)
        anomalies[where] = pipeline.predict(features) == -1
    return windows.assign(score=scores, is_anomaly=anomalies)


IN_PROCESS = {PROJECT: run_project, PROJECT_LOAD: run_project_with_load, SKLEARN: run_sklearn_loop}


def check_against_sklearn(fleet: Fleet, scored: pd.DataFrame, label: str) -> float:
    """Assert that ``scored`` (one row per window) matches the pipelines; returns the largest score gap."""
    expected = run_sklearn_loop(fleet)
    keys = ["device_id", "tag", "window_end"]
    merged = expected[keys + ["score", "is_anomaly"]].merge(
        scored[keys + ["score", "is_anomaly"]], on=keys, how="outer", suffixes=("_ref", ""), indicator=True
    )
    assert (merged["_merge"] == "both").all() and len(merged) == len(fleet.windows), f"{label}: rows differ"
    gap = float(np.max(np.abs(merged["score"].to_numpy(float) - merged["score_ref"].to_numpy(float))))
    assert gap <= TOLERANCE, f"{label}: score differs from decision_function by {gap:g} > {TOLERANCE:g}"
    assert (merged["is_anomaly"].astype(bool) == merged["is_anomaly_ref"].astype(bool)).all(), (
        f"{label}: is_anomaly differs from predict == -1"
    )
    return gap


def check_sklearn_loop(fleet: Fleet) -> None:
    """The sklearn loop itself, sensor by sensor, against direct calls (guards the row bookkeeping)."""
    out = run_sklearn_loop(fleet)
    for key, pipeline in fleet.pipelines.items():
        rows = out[(out["device_id"] == key[0]) & (out["tag"] == key[1])]
        assert len(rows) == 60, f"{key}: {len(rows)} windows, expected 60"
        assert np.array_equal(rows["score"].to_numpy(), pipeline.decision_function(feature_matrix(rows)))


def time_in_process(fleet: Fleet, repeats: int, min_time: float) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per call of each in-process approach; repeats interleaved across approaches."""
    loops = {}
    for name, func in IN_PROCESS.items():  # warm up and calibrate the calls per repeat
        func(fleet)
        started = time.perf_counter()
        func(fleet)
        once = max(time.perf_counter() - started, 1e-6)
        loops[name] = max(1, math.ceil(min_time / once))
    samples: dict[str, list[float]] = {name: [] for name in IN_PROCESS}
    for _ in range(repeats):
        for name, func in IN_PROCESS.items():
            started = time.perf_counter()
            for _ in range(loops[name]):
                func(fleet)
            samples[name].append((time.perf_counter() - started) / loops[name])
    return samples, loops


# ----------------------------------------------------------------------------------- original design
def prepare_original(fleet: Fleet, workdir: Path, with_models: bool) -> tuple[Path, dict[tuple[str, str], Path]]:
    """The hour's windows as one CSV (every sensor), and (if asked) one pickled pipeline per sensor."""
    hour_csv = workdir / "hour.csv"
    fleet.windows.to_csv(hour_csv, index=False)
    pickles = {}
    for number, (key, pipeline) in enumerate(fleet.pipelines.items() if with_models else ()):
        path = workdir / "models" / f"model-{number:05d}.pkl"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(pickle.dumps(pipeline))
        pickles[key] = path
    return hour_csv, pickles


def run_original(hour_csv: Path, pickles: dict, outdir: Path, parallel: int) -> float:
    """One process per sensor, ``parallel`` at a time; returns wall seconds for the whole hour."""
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir()

    def job(item):
        number, ((device_id, tag), model) = item
        command = [
            sys.executable,
            str(WORKER),
            str(hour_csv),
            str(model),
            device_id,
            tag,
            str(outdir / f"pred-{number:05d}.csv"),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"worker for {device_id}/{tag} failed: {done.stderr[-2000:]}")

    items = list(enumerate(pickles.items()))
    started = time.perf_counter()
    if parallel == 1:
        for item in items:
            job(item)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(job, items))
    return time.perf_counter() - started


def read_original_outputs(outdir: Path) -> pd.DataFrame:
    frame = pd.concat([pd.read_csv(p) for p in sorted(outdir.glob("pred-*.csv"))], ignore_index=True)
    frame["device_id"] = frame["device_id"].astype("string")
    frame["tag"] = frame["tag"].astype("string")
    frame["window_end"] = pd.to_datetime(frame["window_end"], utc=True).astype("datetime64[ns, UTC]")
    return frame


# -------------------------------------------------------------------------------------------- report
def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(not set)"),
    }


def summarise(results: dict) -> list[dict[str, object]]:
    rows = []
    for size in sorted(results, key=int):
        per = results[size]["approaches"]
        base = per[PROJECT]["median_s"]
        loop = per[SKLEARN]["median_s"]
        for name in ORDER:
            if name not in per:
                continue
            median = per[name]["median_s"]
            per[name]["sensors_per_s"] = int(size) / median
            per[name]["ratio_vs_project"] = median / base
            per[name]["ratio_vs_sklearn_loop"] = median / loop
            rows.append({"approach": name, "sensors": int(size), **per[name]})
    return rows


def markdown_table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| approach | sensors | median s / hour | sensors / s | time ÷ project | time ÷ sklearn loop | repeats |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: (ORDER.index(r["approach"]), r["sensors"])):
        lines.append(
            f"| {row['approach']} | {row['sensors']} | {_fmt(row['median_s'])} | {_fmt(row['sensors_per_s'])} "
            f"| {_fmt(row['ratio_vs_project'])} | {_fmt(row['ratio_vs_sklearn_loop'])} | {len(row['samples_s'])} |"
        )
    return "\n".join(lines)


def reread_table(results: dict) -> str:
    """The original design's second cost: every one of the S jobs re-reads the whole hour."""
    lines = [
        "| sensors | hour CSV bytes | re-read + filter, per job (ms) | x S jobs (s per hour) |",
        "|---:|---:|---:|---:|",
    ]
    for size in sorted(results, key=int):
        entry = results[size]
        per_job = entry["reread_whole_hour_per_job_s"]
        lines.append(f"| {size} | {entry['hour_csv_bytes']:,} | {_fmt(per_job * 1e3)} | {_fmt(per_job * int(size))} |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    """Three significant digits, thousands separated; no exponents."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.3g}" if value >= 10 else f"{value:.2f}"
    return f"{value:.3g}"


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10, 100, 1000],
        help="sensor counts for the in-process approaches (default: 10 100 1000)",
    )
    parser.add_argument(
        "--process-sizes",
        type=int,
        nargs="*",
        default=[10, 50],
        help="sensor counts for the process-per-sensor original design (default: 10 50; "
        "~1 s per process); these sizes are timed in-process too, for the ratios",
    )
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the in-process timings (default 5)")
    parser.add_argument(
        "--process-repeats",
        type=int,
        default=3,
        help="repeats of each process-per-sensor hour (default 3: each repeat is a whole hour)",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=0.2,
        help="an in-process repeat calls the approach until it lasts at least this (s)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "latest.json",
        help="JSON results file (default bench/results/latest.json)",
    )
    args = parser.parse_args(argv)

    command = shlex.join([os.path.relpath(sys.executable), *sys.argv]) if argv is None else None
    info = machine()
    print(
        f"# {info['cpu_model']} x{info['cpu_count']}, {info['platform']}, python {info['python']}, "
        f"numpy {info['numpy']}, scikit-learn {info['scikit-learn']}",
        flush=True,
    )
    started_all = time.perf_counter()
    results: dict[str, dict] = {}
    for size in sorted(set(args.sizes) | set(args.process_sizes)):
        fleet = Fleet(size, args.seed)
        entry = results[str(size)] = {
            "windows": len(fleet.windows),
            "setup_s (simulate + train, not timed below)": round(fleet.setup_seconds, 2),
            "support_vectors_median": statistics.median(fleet.support_vectors),
            "support_vectors_max": max(fleet.support_vectors),
            "packs": len(fleet.packs),
            "approaches": {},
        }
        check_sklearn_loop(fleet)
        gaps = {name: check_against_sklearn(fleet, IN_PROCESS[name](fleet), name) for name in (PROJECT, PROJECT_LOAD)}
        samples, loops = time_in_process(fleet, args.repeats, args.min_time)
        for name, values in samples.items():
            entry["approaches"][name] = {
                "median_s": statistics.median(values),
                "samples_s": values,
                "calls_per_repeat": loops[name],
                "max_score_gap": gaps.get(name, "reference"),
            }
        print(
            f"S={size}: {len(fleet.windows)} windows, setup {fleet.setup_seconds:.1f} s; "
            + ", ".join(f"{n} {statistics.median(v) * 1e3:.2f} ms" for n, v in samples.items()),
            flush=True,
        )

        with tempfile.TemporaryDirectory(prefix="bench-original-") as tmp:
            workdir = Path(tmp)
            hour_csv, pickles = prepare_original(fleet, workdir, with_models=size in args.process_sizes)
            entry["hour_csv_bytes"] = hour_csv.stat().st_size
            # The original design's second cost, alone and in-process: every job re-reads the whole hour
            # and keeps its own sensor's rows. Measured for every size, as it grows with the fleet.
            device_id, tag = fleet.keys[0]
            reads = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                whole = pd.read_csv(hour_csv)
                whole[(whole["device_id"] == device_id) & (whole["tag"] == tag)]
                reads.append(time.perf_counter() - t0)
            entry["reread_whole_hour_per_job_s"] = statistics.median(reads)
            print(
                f"S={size}: re-reading the whole hour ({entry['hour_csv_bytes']:,} bytes of CSV) "
                f"costs {entry['reread_whole_hour_per_job_s'] * 1e3:.1f} ms per job",
                flush=True,
            )
            if size in args.process_sizes:
                proc: dict[str, list[float]] = {PROC_SEQ: [], PROC_PAR: []}
                gaps = {}
                for _ in range(args.process_repeats):  # interleave sequential and parallel hours
                    for name, parallel in ((PROC_SEQ, 1), (PROC_PAR, 2)):
                        outdir = workdir / "predictions"
                        proc[name].append(run_original(hour_csv, pickles, outdir, parallel))
                        gaps[name] = max(
                            gaps.get(name, 0.0), check_against_sklearn(fleet, read_original_outputs(outdir), name)
                        )
                for name, values in proc.items():
                    entry["approaches"][name] = {
                        "median_s": statistics.median(values),
                        "samples_s": values,
                        "calls_per_repeat": 1,
                        "max_score_gap": gaps[name],
                    }
                print(
                    f"S={size}: " + ", ".join(f"{n} {statistics.median(v):.2f} s" for n, v in proc.items()), flush=True
                )

    rows = summarise(results)
    table = markdown_table(rows)
    reread = reread_table(results)
    report = {
        "command": command or "bench_scoring.main(...)",
        "cwd": os.getcwd(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_run_s": round(time.perf_counter() - started_all, 1),
        "machine": info,
        "settings": {
            "sizes": args.sizes,
            "process_sizes": args.process_sizes,
            "repeats": args.repeats,
            "process_repeats": args.process_repeats,
            "min_time_s": args.min_time,
            "seed": args.seed,
            "tags": TAGS,
            "train_hours": TRAIN_HOURS,
            "windows_per_sensor": 60,
            "tolerance": TOLERANCE,
            "pack_size": PACK_SIZE,
        },
        "sizes": results,
        "table_markdown": table,
        "reread_table_markdown": reread,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table)
    print()
    print(reread)
    print(
        f"\nAll scores matched scikit-learn within {TOLERANCE:g}. Results: {args.out} (total {report['total_run_s']} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
