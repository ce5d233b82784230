"""A whole hour through a real Airflow scheduler, from landed to committed, against the bare kernel on the same data.

For each hour size S (``--sizes``): S sensors x 60 windows, landed as Stream Analytics line-separated JSON (files
of ``--file-windows`` windows) in the dev stack's Azurite; one model version registered and promoted to
``production`` for every sensor (``--base-models`` real OneClassSVM pipelines cloned under every sensor's name, as
bench_memory does); then the dev stack (``dev.devstack.DevStack``: PostgreSQL, the LocalExecutor scheduler, DAG
processor, triggerer, API server) is started, the hour is triggered through the REST API and waited for.

Recorded per run: the e2e wall time (the trigger's POST to the run's success, and the run's own start and end),
each task instance's start and end from the REST API, summed per stage, the mapped task count, and each task
process's peak RSS. The peak RSS is sampled from /proc (``VmHWM``, the kernel's high-water mark of the process,
so a sample taken any time before the process ends has seen its peak up to then) of every descendant of the
scheduler every ``--sample-s``; a task process is recognised by the title Airflow's task runner gives it (``airflow
worker -- <task instance id>``) and a shard child (``SCORING_LOCAL_SHARDS=process``) by its command line
(``read-windows`` or ``score-shard``). Each mapped instance's own time (``read_windows`` and ``score_shard``) comes
from its task log (``Shard done in ... s``, the local backend's line), so its overhead is its duration minus that.
The slice sizes are recorded with the run: the read groups' bytes (``steps.load.READ_GROUP_BYTES``) and the
shards' windows (``steps.plan.MAX_SHARD_WINDOWS``), and how many of each the hour was cut into.

At the sizes in ``--compare-at`` the hour is run a second time with ``SCORING_LOCAL_SHARDS=process`` (the
scheduler restarted with it), to see what scoring in the task's own process saves per shard.

After the stack has stopped, in this process on the same windows and models: ``scorer.score`` (the whole bare
scoring of the hour's frame, no I/O) and ``scorer.decision_function``; the scikit-learn loop (one
``pipeline.decision_function`` per sensor, ``bench_kernel.sklearn_loop``) on the first ``--sklearn-sample``
sensors, scaled up to S; and the numba fused single-thread reference (``bench_kernel.reference``), each the
median of ``--repeats`` after a warm-up, with the largest absolute difference to scikit-learn.

    PYTHONPATH=. .venv/bin/python bench/bench_hour.py [--sizes 1000 10000 100000] [--compare-at 10000]

(``make bench-hour``; the repository root on the path for ``dev``, the dev stack, which is not installed.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bench_kernel import reference, sklearn_loop, timed
from bench_memory import HOUR, base_models, register_for, synthetic_windows
from bench_scoring import machine

from dev.devstack import DAG_ID, DevStack, stop_on_signals
from sensor_scoring import settings as config
from sensor_scoring.features import feature_matrix
from sensor_scoring.models import fitting
from sensor_scoring.scorer import decision_function, score, sensor_codes
from sensor_scoring.steps.load import READ_GROUP_BYTES
from sensor_scoring.steps.plan import MAX_SHARD_WINDOWS
from sensor_scoring.storage import BlobStorage
from sensor_scoring.windows import LandingPlan, land_windows

HERE = Path(__file__).resolve().parent
VERSION = "v-hour"
#: No retries (a failing task fails the benchmark at once); every other Airflow setting is the stack's default.
AIRFLOW_ENV = {config.TASK_RETRIES_ENV: "0", config.RETRY_DELAY_ENV: "1"}
TASK_TITLE = re.compile(r"airflow worker -- ([0-9a-f-]{36})")
SHARD_DONE = re.compile(r"Shard done in ([0-9.]+) s")


class ProcSampler(threading.Thread):
    """Every ``every_s``: the descendants of ``root`` with their title, parent and ``VmHWM`` (KiB)."""

    def __init__(self, root: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.root, self.every_s = root, every_s
        self.seen: dict[int, dict[str, Any]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.done.is_set():
            try:
                procs = psutil.Process(self.root).children(recursive=True)
            except psutil.Error:
                procs = []
            for proc in procs:
                try:
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                    title = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                except OSError:
                    continue
                hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0)
                entry = self.seen.setdefault(proc.pid, {"ppid": proc.ppid(), "title": title, "hwm_kib": 0})
                entry["hwm_kib"] = max(entry["hwm_kib"], hwm)
                if TASK_TITLE.search(title):
                    entry["title"] = title  # the task runner retitles itself after its fork
            self.done.wait(self.every_s)

    def stop(self) -> dict[int, dict[str, Any]]:
        self.done.set()
        self.join(timeout=10)
        return self.seen


def land_hour(storage: BlobStorage, containers: config.Containers, windows: pd.DataFrame, file_windows: int) -> dict:
    files = max(1, math.ceil(len(windows) / file_windows))
    began = time.perf_counter()
    names = land_windows(storage, containers.windows, windows, LandingPlan(files_per_hour=files, late_share=0.0))
    return {"landed_files": len(names), "land_s": round(time.perf_counter() - began, 1)}


def register_hour(
    storage: BlobStorage, containers: config.Containers, windows: pd.DataFrame, base: list[fitting.TrainedModel]
) -> float:
    """Every sensor gets one of the real base models under its own name; the version is promoted to production."""
    began = time.perf_counter()
    sensors = windows[["device_id", "tag"]].drop_duplicates()
    register_for(storage, containers.models, sensors, base, VERSION, promote=True)
    return round(time.perf_counter() - began, 1)


def seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def stages_of(run: dict, tis: list[dict]) -> dict[str, dict[str, Any]]:
    """Per task id: instances, first start and last end after the run started, wall and summed task seconds."""
    out: dict[str, dict[str, Any]] = {}
    for task_id in dict.fromkeys(t["task_id"] for t in sorted(tis, key=lambda t: t["start_date"] or "")):
        mine = [t for t in tis if t["task_id"] == task_id]
        starts = [t["start_date"] for t in mine if t["start_date"]]
        ends = [t["end_date"] for t in mine if t["end_date"]]
        durations = [t["duration"] for t in mine if t["duration"] is not None]
        queued = [seconds(t["queued_when"], t["start_date"]) for t in mine if t["queued_when"] and t["start_date"]]
        out[task_id] = {
            "tasks": len(mine),
            "states": sorted({str(t["state"]) for t in mine}),
            "starts_at_s": round(seconds(run["start_date"], min(starts)) or 0, 2) if starts else None,
            "ends_at_s": round(seconds(run["start_date"], max(ends)) or 0, 2) if ends else None,
            "wall_s": round(seconds(min(starts), max(ends)) or 0, 2) if starts and ends else None,
            "task_s_sum": round(sum(durations), 2),
            "task_s_median": round(statistics.median(durations), 2) if durations else None,
            "task_s_max": round(max(durations), 2) if durations else None,
            "queued_to_start_s_median": round(statistics.median(queued), 2) if queued else None,
        }
    return out


def peaks_of(seen: dict[int, dict[str, Any]], tis: list[dict]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Peak RSS (MiB) per task kind (the largest instance), and every instance's, from the sampled processes."""
    by_uuid = {t["id"]: t for t in tis}
    per_kind: dict[str, list[float]] = {}
    task_of_pid: dict[int, str] = {}
    for pid, entry in seen.items():
        match = TASK_TITLE.search(entry["title"])
        if match and match.group(1) in by_uuid:
            kind = by_uuid[match.group(1)]["task_id"]
            task_of_pid[pid] = kind
            per_kind.setdefault(kind, []).append(round(entry["hwm_kib"] / 1024, 1))
    for _pid, entry in seen.items():
        for command, kind in CHILDREN.items():
            if command in entry["title"] and entry["ppid"] in task_of_pid:
                per_kind.setdefault(f"{kind} child", []).append(round(entry["hwm_kib"] / 1024, 1))
    return {k: max(v) for k, v in per_kind.items()}, {k: sorted(v) for k, v in per_kind.items()}


def shard_seconds(stack: DevStack, run_id: str, task_id: str) -> dict[int, float]:
    """Each mapped instance's own time by map index, from the backend's line in its task log."""
    folder = stack.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    found = {}
    for log in sorted(folder.rglob("*.log")):
        hits = SHARD_DONE.findall(log.read_text(errors="replace"))
        index = re.search(r"map_index=(\d+)", str(log))
        if hits and index:
            found[int(index.group(1))] = float(hits[-1])
    return found


def run_hour(stack: DevStack, mode: str, sample_s: float, timeout_s: float) -> dict[str, Any]:
    """Trigger the hour through the REST API, wait for it, and collect its task instances and process peaks."""
    api = stack.api()
    sampler = ProcSampler(stack.pid("scheduler"), sample_s)
    sampler.start()
    conf = {"window_start": HOUR.isoformat(), "window_end": (HOUR + timedelta(hours=1)).isoformat()}
    began = time.perf_counter()
    try:
        run_id = api.trigger(conf | {"settle_minutes": 0})["dag_run_id"]
        run = api.wait_for_runs([run_id], timeout_s=timeout_s, poll_s=1)[run_id]
        e2e = time.perf_counter() - began
    finally:
        seen = sampler.stop()
    tis = api.task_instances(run_id)
    if run["state"] != "success":
        raise RuntimeError(f"run {run_id} {run['state']}: {[(t['task_id'], t['map_index'], t['state']) for t in tis]}")
    stages = stages_of(run, tis)
    peaks, instances = peaks_of(seen, tis)
    mapped = {kind: mapped_times(stack, run_id, tis, kind) for kind in MAPPED}
    own, shards = mapped["score_shard"]["own"], mapped["score_shard"]["task"]
    pairs = [(shards[i], own[i]) for i in sorted(own) if i in shards]
    overhead = [d - s for d, s in pairs]
    shares = [(d - s) / d for d, s in pairs]
    return {
        "mode": mode,
        "run_id": run_id,
        "e2e_wall_s": round(e2e, 2),
        "run_wall_s": round(seconds(run["start_date"], run["end_date"]) or 0, 2),
        "mapped_tasks": sum(stages.get(kind, {}).get("tasks", 0) for kind in MAPPED),
        "stages": stages,
        "peak_rss_mib": peaks,
        "peak_rss_mib_instances": instances,
        "shard_own_s": [own[i] for i in sorted(own)],
        "shard_own_s_median": round(statistics.median(own.values()), 2) if own else None,
        "shard_task_s_median": round(statistics.median(shards.values()), 2) if shards else None,
        "shard_overhead_s_median": round(statistics.median(overhead), 2) if overhead else None,
        "shard_overhead_share_median": round(statistics.median(shares), 3) if shares else None,
        "mapped": {kind: {k: v for k, v in m.items() if k not in ("own", "task")} for kind, m in mapped.items()},
        "slices": {
            "read_group_bytes": READ_GROUP_BYTES,
            "read_groups": stages.get("read_windows", {}).get("tasks", 0),
            "max_shard_windows": MAX_SHARD_WINDOWS,
            "shards": stages.get("score_shard", {}).get("tasks", 0),
        },
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def mapped_times(stack: DevStack, run_id: str, tis: list[dict], task_id: str) -> dict[str, Any]:
    """A mapped task kind's instances: their own work (the backend's line) against their task time, as medians and
    as the share of the summed task time that was the work itself (the target: at least 0.9)."""
    own = shard_seconds(stack, run_id, task_id)
    task = {t["map_index"]: t["duration"] for t in tis if t["task_id"] == task_id and t["duration"]}
    pairs = [(task[i], own[i]) for i in sorted(own) if i in task]
    return {
        "own": own,
        "task": task,
        "instances": len(task),
        "own_s_median": round(statistics.median(own.values()), 2) if own else None,
        "task_s_median": round(statistics.median(task.values()), 2) if task else None,
        "own_share_of_task_time": round(sum(s for _, s in pairs) / sum(d for d, _ in pairs), 3) if pairs else None,
    }


def kernel_at(sensors: int, base: list[fitting.TrainedModel], sample: int, repeats: int) -> dict[str, Any]:
    """The bare kernel, the scikit-learn loop (on a sample, scaled) and the numba reference on the hour's data."""
    windows = synthetic_windows(sensors, HOUR)
    order = {k: i for i, k in enumerate(windows[["device_id", "tag"]].drop_duplicates().itertuples(index=False))}
    codes, keys = sensor_codes(windows)
    picked = [base[order[k] % len(base)] for k in keys]
    arrays = [m.arrays for m in picked]
    features = feature_matrix(windows)
    by_key = dict(zip(keys, arrays, strict=True))
    score_s, _, _ = timed(lambda: score(windows, by_key), repeats)
    project_s, _, project = timed(lambda: decision_function(features, codes, arrays), repeats)
    reference_s, _, ref = timed(lambda: reference(features, codes, arrays), repeats)
    sample = min(sample, len(keys))
    rows = codes < sample
    loop_sample_s, _, loop = timed(
        lambda: sklearn_loop(features[rows], codes[rows], [m.pipeline for m in picked[:sample]]), 1
    )
    return {
        "sensors": sensors,
        "windows": len(windows),
        "score_s": round(score_s, 4),
        "project_s": round(project_s, 4),
        "reference_s": round(reference_s, 4),
        "sklearn_loop_sample_sensors": sample,
        "sklearn_loop_sample_s": round(loop_sample_s, 3),
        "sklearn_loop_s": round(loop_sample_s * len(keys) / sample, 2),
        "max_abs_diff": float(np.max(np.abs(project[rows] - loop))),
        "reference_max_abs_diff": float(np.max(np.abs(ref[rows] - loop))),
    }


def measure_size(
    home: Path, sensors: int, base: list[fitting.TrainedModel], args: argparse.Namespace
) -> tuple[dict, list[dict]]:
    stack = DevStack(home, durable=False, airflow_env=dict(AIRFLOW_ENV))
    try:
        stack.start_storage()
        storage, containers = BlobStorage(stack.storage_setting), config.Containers()
        windows = synthetic_windows(sensors, HOUR)
        prepared = {"windows": len(windows), **land_hour(storage, containers, windows, args.file_windows)}
        prepared["register_s"] = register_hour(storage, containers, windows, base)
        del windows
        started = time.perf_counter()
        stack.start(timeout_s=600)
        prepared["stack_start_s"] = round(time.perf_counter() - started, 1)
        stack.api().unpause()  # manual runs only: the hourly schedule's first run waits for an hour never landed
        print(json.dumps({"sensors": sensors, **prepared}), flush=True)
        runs = [run_hour(stack, "task", args.sample_s, args.timeout)]
        if sensors in args.compare_at:
            stack.restart("scheduler", {config.LOCAL_SHARDS_ENV: "process"})
            runs.append(run_hour(stack, "process", args.sample_s, args.timeout))
        for run in runs:
            print(json.dumps({"sensors": sensors, **{k: v for k, v in run.items() if k != "stages"}}), flush=True)
        return prepared, runs
    finally:
        survivors = stack.stop()
        if survivors:
            print(f"processes still running after stop: {survivors}", file=sys.stderr)


STAGES = ("wait_for_windows", "plan_shards", "plan_reads", "read_windows", "score_shard", "commit", "model_health")
#: The mapped task kinds, and the commands their children run with ``SCORING_LOCAL_SHARDS=process``.
MAPPED = ("read_windows", "score_shard")
CHILDREN = {"read-windows": "read_windows", "score-shard": "score_shard"}


def markdown(results: dict[str, Any]) -> str:
    """The per-stage table of docs/benchmarks.md from a results file."""
    head = "| sensors | mode | e2e s | " + " | ".join(STAGES) + " | gaps s | mapped | kernel s | e2e / kernel |"
    lines = [head, "|" + "---|" * (len(STAGES) + 7)]
    for run in results["runs"]:
        walls = [run["stages"].get(stage, {}).get("wall_s") or 0.0 for stage in STAGES]
        gaps = run["run_wall_s"] - sum(walls)
        cells = [f"{run['sensors']:,}", run["mode"], f"{run['e2e_wall_s']:.1f}", *(f"{w:.1f}" for w in walls)]
        cells += [f"{gaps:.1f}", str(run["mapped_tasks"]), f"{run['kernel_s']:.2f}"]
        cells.append(f"{run['e2e_wall_s'] / run['kernel_s']:.0f}x")
        lines.append("| " + " | ".join(cells) + " |")
    kinds = (*STAGES, *(f"{k} child" for k in MAPPED))
    lines += ["", "| sensors | mode | " + " | ".join(f"{s} MiB" for s in kinds) + " |"]
    lines.append("|" + "---|" * (len(kinds) + 2))
    for run in results["runs"]:
        peaks = [run["peak_rss_mib"].get(s) for s in kinds]
        row = [f"{run['sensors']:,}", run["mode"], *("" if p is None else f"{p:.0f}" for p in peaks)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "| sensors | mode | read groups | shards | "
        + " | ".join(f"{k} own s (median) | {k} task s (median) | {k} own share" for k in MAPPED)
        + " |",
    ]
    lines.append("|" + "---|" * (4 + 3 * len(MAPPED)))
    for run in results["runs"]:
        slices, mapped = run.get("slices", {}), run.get("mapped", {})
        row = [f"{run['sensors']:,}", run["mode"], str(slices.get("read_groups", "")), str(slices.get("shards", ""))]
        for kind in MAPPED:
            m = mapped.get(kind, {})
            row += [
                str(m.get("own_s_median", "")),
                str(m.get("task_s_median", "")),
                str(m.get("own_share_of_task_time", "")),
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--compare-at", type=int, nargs="*", default=[10_000], help="also run in process mode")
    parser.add_argument("--file-windows", type=int, default=100_000, help="windows per landed JSON file")
    parser.add_argument("--base-models", type=int, default=100)
    parser.add_argument("--sklearn-sample", type=int, default=2000, help="sensors the scikit-learn loop scores")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample-s", type=float, default=0.25, help="how often /proc is sampled")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for one run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "hour.json")
    parser.add_argument("--table", type=Path, help="print the Markdown tables of this results file and stop")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return
    results: dict[str, Any] = {
        "machine": {**machine(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "runs": [],
    }
    base = base_models(args.base_models)
    with stop_on_signals(), tempfile.TemporaryDirectory(prefix="bench-hour-") as tmp:
        for sensors in args.sizes:
            prepared, runs = measure_size(Path(tmp) / str(sensors), sensors, base, args)
            kernel = kernel_at(sensors, base, args.sklearn_sample, args.repeats)
            print(json.dumps(kernel), flush=True)
            for run in runs:
                results["runs"].append(
                    {"sensors": sensors, **prepared, **run, "kernel_s": kernel["score_s"], "kernel_detail": kernel}
                )
            results["kernel"] = {k: kernel[k] for k in ("sensors", "project_s", "sklearn_loop_s", "reference_s")} | {
                "max_abs_diff": kernel["max_abs_diff"],
                "score_s": kernel["score_s"],
                "sklearn_loop_sample_sensors": kernel["sklearn_loop_sample_sensors"],
            }
            results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")  # after every size: a partial result is kept
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
