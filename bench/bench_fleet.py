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
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bench_scoring import machine  # noqa: E402

from sensor_scoring import layout, settings as config  # noqa: E402
from sensor_scoring.fleet import fleet_view  # noqa: E402
from sensor_scoring.report import fleet_body, page as html_page  # noqa: E402
from sensor_scoring.steps import health  # noqa: E402
from sensor_scoring.storage import LocalStorage  # noqa: E402

START = datetime(2026, 11, 24, tzinfo=timezone.utc)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--windows", type=int, default=12, help="synthetic scored windows per sensor and hour")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fleet.json")
    args = parser.parse_args()
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
