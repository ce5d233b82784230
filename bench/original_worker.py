"""One job of the original design: score ONE sensor for one hour, in a fresh Python process.

The original reference architecture had a Logic App start one Batch AI job per sensor every hour. Each job
read the whole hour's data, unpickled its own model, kept its sensor's rows, scored them and wrote its
predictions. This script does exactly that, so that ``bench_scoring.py`` can time one process per sensor.

    python original_worker.py HOUR_CSV MODEL_PICKLE DEVICE_ID TAG OUT_CSV

Pickle is used here because the original did; it is for the benchmark only (the project never unpickles).
"""

from __future__ import annotations

import pickle
import sys

import pandas as pd

# The project's feature order (sensor_scoring.contracts.FEATURES), repeated so the job imports nothing of the project.
FEATURES = ["value_avg", "value_min", "value_max", "value_std", "reading_count"]


def main(argv: list[str]) -> int:
    hour_csv, model_path, device_id, tag, out_csv = argv
    windows = pd.read_csv(hour_csv)  # the whole hour, every sensor's rows
    with open(model_path, "rb") as handle:
        pipeline = pickle.load(handle)  # noqa: S301 - benchmark of the original design only
    rows = windows[(windows["device_id"] == device_id) & (windows["tag"] == tag)]
    features = rows[FEATURES].to_numpy(dtype=float)
    out = rows[["device_id", "tag", "window_end"]].copy()
    out["score"] = pipeline.decision_function(features)
    out["is_anomaly"] = pipeline.predict(features) == -1
    out.to_csv(out_csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
