"""Peak memory and time of every task kind of an hour, each run as its own process, at 100k and 300k sensors.

Claim under test: no task's peak RSS grows with the hour. For each hour size S: S sensors x 60 windows
(``bench_memory.synthetic_windows``) landed as Stream Analytics line-separated JSON files of ``--file-windows``
windows in a local-directory storage (``SCORING_STORAGE=<dir>``: no blob server's memory or latency mixed in), a
model version registered for every sensor (``--base-models`` real OneClassSVM pipelines cloned under every
sensor's name, as bench_memory does) and promoted; then the hour's steps, each task in a fresh child process
started by bench_memory's launcher (its ``ru_maxrss``: the child's own peak, not this process's):

- ``plan_shards`` (and ``plan_reads``, which only hands its list on) in one child;
- every ``read_windows`` group and then every ``score_shard`` as the backends' own command
  (``python -m sensor_scoring read-windows|score-shard --spec <uri>``), ``--workers`` at a time (the machine's cores:
  what the LocalExecutor runs side by side);
- ``commit`` and ``model_health`` in one child each, as the DAG's tasks call them.

Per task kind: instances, peak RSS (median and largest), wall seconds (median and sum). The hour before is not
landed (its folder is empty: no lookback context), a stated simplification of the benchmark, not of the code.

    .venv/bin/python bench/bench_tasks.py [--sizes 100000 300000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_memory import HOUR, base_models, child_peak_rss, register_for, synthetic_windows
from bench_scoring import machine

from sensor_scoring import settings as config
from sensor_scoring.backends import shard_command
from sensor_scoring.steps.load import READ_GROUP_BYTES
from sensor_scoring.steps.plan import MAX_SHARD_WINDOWS
from sensor_scoring.storage import LocalStorage
from sensor_scoring.windows import LandingPlan, land_windows

HERE = Path(__file__).resolve().parent
VERSION = "v-tasks"

#: The non-mapped steps, as the DAG's tasks call them, on the hour given: argv = storage dir, ISO hour, step.
STEP = """
import json, sys
from datetime import datetime, timedelta
from sensor_scoring import layout, settings as config, storage as st
from sensor_scoring.contracts import ReadResult, ShardResult
from sensor_scoring.runs.scope import Scope
from sensor_scoring.storage import LocalStorage
h = datetime.fromisoformat(sys.argv[2])
storage, containers = LocalStorage(sys.argv[1]), config.Containers()
scope = Scope(storage, containers, "bench-tasks", h, h + timedelta(hours=1))
run = layout.Run(scope.run_key)
if sys.argv[3] == "plan":
    from sensor_scoring.steps.plan import plan_shards, planned_reads
    planned = plan_shards(scope, model_version="production")
    out = {"reads": [r.spec_uri for r in planned_reads(scope)], "shards": [s.spec_uri for s in planned.shards]}
    open(sys.argv[4], "w").write(json.dumps(out))
elif sys.argv[3] == "commit":
    from sensor_scoring.steps.commit import commit
    from sensor_scoring.steps.plan import planned_reads
    def result(spec_uri):
        return storage.read_bytes(*st.parse_uri(layout.Shard.of_spec(spec_uri).result))
    reads = [ReadResult.from_json(result(r.spec_uri), source="read") for r in planned_reads(scope)]
    shards = json.loads(open(sys.argv[4]).read())["shards"]
    results = [ShardResult.from_json(result(s), source="shard") for s in shards]
    [manifest] = commit(scope, reads, results)
    print(json.dumps(manifest.counts.to_dict()), file=sys.stderr)
elif sys.argv[3] == "health":
    from sensor_scoring.steps import health
    health.model_health(scope, health.Thresholds.from_settings(config.Settings.from_env({})))
"""


def summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    peaks, walls = [p for p, _ in samples], [w for _, w in samples]
    return {
        "instances": len(samples),
        "peak_rss_mib_median": round(statistics.median(peaks), 1),
        "peak_rss_mib_max": round(max(peaks), 1),
        "wall_s_median": round(statistics.median(walls), 2),
        "wall_s_sum": round(sum(walls), 1),
    }


def measure(root: Path, sensors: int, args: argparse.Namespace, base: list) -> dict[str, Any]:
    storage, containers = LocalStorage(root), config.Containers()
    windows = synthetic_windows(sensors, HOUR)
    began = time.perf_counter()
    files = max(1, math.ceil(len(windows) / args.file_windows))
    land_windows(storage, containers.windows, windows, LandingPlan(files_per_hour=files, late_share=0.0))
    register_for(
        storage, containers.models, windows[["device_id", "tag"]].drop_duplicates(), base, VERSION, promote=True
    )
    prepared_s = round(time.perf_counter() - began, 1)
    landed_bytes = sum(p.stat().st_size for p in (root / containers.windows).rglob("*") if p.is_file())
    del windows
    env = {**os.environ, config.STORAGE_ENV: str(root)}
    plan_file = root / "plan.json"
    step = [sys.executable, "-c", STEP, str(root), HOUR.isoformat()]
    kinds: dict[str, list[tuple[float, float]]] = {
        "plan_shards": [child_peak_rss([*step, "plan", str(plan_file)], env)]
    }
    plan = json.loads(plan_file.read_text())
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for kind, command, specs in (
            ("read_windows", "read-windows", plan["reads"]),
            ("score_shard", "score-shard", plan["shards"]),
        ):
            runs = pool.map(
                lambda spec, c=command: child_peak_rss(shard_command(spec, python=sys.executable, command=c), env),
                specs,
            )
            kinds[kind] = list(runs)
    kinds["commit"] = [child_peak_rss([*step, "commit", str(plan_file)], env)]
    kinds["model_health"] = [child_peak_rss([*step, "health"], env)]
    row = {
        "sensors": sensors,
        "windows": sensors * 60,
        "landed_files": files,
        "landed_bytes": landed_bytes,
        "prepare_s": prepared_s,
        "read_group_bytes": READ_GROUP_BYTES,
        "max_shard_windows": MAX_SHARD_WINDOWS,
        "tasks": {kind: summary(samples) for kind, samples in kinds.items()},
        "steps_wall_s_sum": round(sum(w for samples in kinds.values() for _, w in samples), 1),
    }
    return row


def markdown(results: dict[str, Any]) -> str:
    kinds = ("plan_shards", "read_windows", "score_shard", "commit", "model_health")
    lines = [
        "| sensors | windows | " + " | ".join(f"{k} (n, peak MiB median / max, s median)" for k in kinds) + " |",
        "|" + "---|" * (len(kinds) + 2),
    ]
    for row in results["sizes"]:
        cells = [f"{row['sensors']:,}", f"{row['windows']:,}"]
        for kind in kinds:
            t = row["tasks"][kind]
            peaks = f"{t['peak_rss_mib_median']:.0f} / {t['peak_rss_mib_max']:.0f}"
            cells.append(f"{t['instances']}, {peaks}, {t['wall_s_median']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--file-windows", type=int, default=100_000, help="windows per landed JSON file")
    parser.add_argument("--base-models", type=int, default=100)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tasks.json")
    parser.add_argument("--table", type=Path, help="print the Markdown table of this results file and stop")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return
    results: dict[str, Any] = {
        "machine": {**machine(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "sizes": [],
    }
    base = base_models(args.base_models)
    for sensors in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-tasks-", dir=os.environ.get("TMPDIR")) as tmp:
            row = measure(Path(tmp), sensors, args, base)
        results["sizes"].append(row)
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # after every size: a partial result is kept
    print(markdown(results))


if __name__ == "__main__":
    main()
