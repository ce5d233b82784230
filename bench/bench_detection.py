"""Detection quality of the per-sensor models on labelled windows they never trained on, per anomaly type.

Two generators, each: 48 sensors (12 devices x 4 tags), 24 clean hours to train on (no injected anomaly), then 6
hours scored with anomalies injected into a share of the sensor-hours.

- ``simulator``: the project's own (``sensor_scoring.tools.simulate``): spike, stuck, drift, dropout.
- ``simulator_contaminated``: the same, but 15% of the training sensor-hours carry anomalies too (real history does).
- ``shapes``: an independent generator (below) with other shapes: level shift, variance burst, flatline, slow
  drift, spike, irregular sampling, on baselines with a daily and a 20-minute cycle.

Models: ``fitting.train_models`` (the registry's pipeline: StandardScaler + OneClassSVM, nu=0.02, gamma="scale"),
on each feature set of ``sensor_scoring.features`` (``window-v1``: the window's own aggregates; ``context-v1``: with
the deviation from the trailing level), flagging at scikit-learn's ``predict`` (threshold 0) and at a threshold
calibrated on the training decision values (``threshold_mads=5``: median minus 5 robust deviations of the training
scores), and with that threshold plus each sensor's nu from its own training windows (``adaptive_nu``), scored by
``sensor_scoring.scorer`` (the hourly scorer). Features come from ``features.add_features``, the
function training and scoring use: training windows on their own (the first hour has no lookback: the gap rule),
scored windows with the training windows as their context, as an hourly run has the hour before. Per anomaly type,
precision/recall/F1 are over the normal windows plus that type's windows (so a type's precision counts every false
alarm); ``all`` is over every window.

    .venv/bin/python bench/bench_detection.py [--out bench/results/detection.json] [--features window-v1 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from bench_scoring import machine

from sensor_scoring import features
from sensor_scoring.models import fitting
from sensor_scoring.scorer import score
from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour
from sensor_scoring.windows import aggregate_readings

START = datetime(2026, 11, 24, tzinfo=timezone.utc)
H = timedelta(hours=1)
TRAIN_HOURS, SCORED_HOURS = 24, 6
#: variant -> (threshold_mads, adaptive nu): ``predict`` = threshold 0 (the default); ``calibrated`` =
#: ``threshold_mads`` 5; ``calibrated+adaptive-nu``: and each sensor's nu from its own windows (``fitting.adaptive_nu``)
VARIANTS = {"predict": (None, False), "calibrated": (5.0, False), "calibrated+adaptive-nu": (5.0, True)}
SHAPES = ("level_shift", "variance_burst", "flatline", "slow_drift", "spike", "irregular_sampling")


def simulator(seed: int = 11) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Training windows, scored windows and their labels (device_id, tag, window_end, anomaly)."""
    clean = SimulationConfig(devices=12, tags=4, seed=seed, anomaly_rate=0.0)
    faulty = SimulationConfig(devices=12, tags=4, seed=seed, anomaly_rate=0.3)
    train = pd.concat([aggregate_readings(simulate_hour(clean, START + h * H)[0]) for h in range(TRAIN_HOURS)])
    scored, labels = [], []
    for h in range(TRAIN_HOURS, TRAIN_HOURS + SCORED_HOURS):
        readings, hour_labels = simulate_hour(faulty, START + h * H)
        scored.append(aggregate_readings(readings))
        labels.append(hour_labels)
    return train.reset_index(drop=True), pd.concat(scored, ignore_index=True), pd.concat(labels, ignore_index=True)


def simulator_contaminated(seed: int = 11) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The simulator with anomalies in the training hours too (15% of sensor-hours), as real history has."""
    cfg = SimulationConfig(devices=12, tags=4, seed=seed, anomaly_rate=0.15)
    train = pd.concat([aggregate_readings(simulate_hour(cfg, START + h * H)[0]) for h in range(TRAIN_HOURS)])
    scored, labels = [], []
    for h in range(TRAIN_HOURS, TRAIN_HOURS + SCORED_HOURS):
        readings, hour_labels = simulate_hour(cfg, START + h * H)
        scored.append(aggregate_readings(readings))
        labels.append(hour_labels)
    return train.reset_index(drop=True), pd.concat(scored, ignore_index=True), pd.concat(labels, ignore_index=True)


def shapes_hour(rng: np.random.Generator, params: dict, hour: datetime, anomaly_rate: float):
    """One hour of 10-second readings (jittered) for every sensor, and the label of each anomalous window."""
    n, ticks = len(params["base"]), 360
    t = (hour - START).total_seconds() - 60 + 10 * np.arange(ticks)[None, :] + rng.uniform(0, 2, (n, ticks))
    values = (
        params["base"][:, None]
        + params["daily"][:, None] * np.sin(2 * np.pi * t / 86400 + params["phase"][:, None])
        + params["fast"][:, None] * np.sin(2 * np.pi * t / 1200)
        + rng.normal(0, 1, (n, ticks)) * params["noise"][:, None]
    )
    keep = np.ones((n, ticks), dtype=bool)
    minute = ((t - t[:, :1].min() + 0) // 60).astype(int)
    kind = np.full((n, ticks), "", dtype=object)
    for s in np.flatnonzero(rng.random(n) < anomaly_rate):
        what = SHAPES[rng.integers(len(SHAPES))]
        first = int(rng.integers(2, 48))
        length = 1 if what == "spike" else int(rng.integers(4, 12))
        cols = np.flatnonzero((minute[s] >= first) & (minute[s] < first + length))
        sigma = params["noise"][s]
        if what == "level_shift":
            values[s, cols] += rng.choice([-1, 1]) * rng.uniform(4, 8) * sigma
        elif what == "variance_burst":
            values[s, cols] += rng.normal(0, 1, len(cols)) * rng.uniform(4, 8) * sigma
        elif what == "flatline":
            values[s, cols] = values[s, cols[0]]
        elif what == "slow_drift":
            values[s, cols] += np.linspace(2, 12, len(cols)) * sigma
        elif what == "spike":
            hit = cols[rng.integers(len(cols))]
            values[s, hit] += rng.choice([-1, 1]) * rng.uniform(10, 20) * sigma
            cols = np.flatnonzero(minute[s] == minute[s, hit])
        else:  # irregular sampling: readings dropped at random, most of them
            keep[s, cols] = rng.random(len(cols)) < 0.3
        kind[s, cols] = what
    sensors = params["sensors"]
    device = np.array([d for d, _ in sensors])[:, None].repeat(ticks, 1)
    tag = np.array([g for _, g in sensors])[:, None].repeat(ticks, 1)
    ts = np.datetime64(START.replace(tzinfo=None), "ms") + (t * 1000).astype("int64").astype("timedelta64[ms]")
    stamp = lambda mask: pd.DatetimeIndex(ts[mask]).tz_localize("UTC")  # noqa: E731
    readings = pd.DataFrame({"ts": stamp(keep), "device_id": device[keep], "tag": tag[keep], "value": values[keep]})
    flagged = kind != ""
    labels = pd.DataFrame(
        {
            "device_id": device[flagged],
            "tag": tag[flagged],
            "window_end": stamp(flagged).ceil("min"),
            "anomaly": kind[flagged],
        }
    ).drop_duplicates(["device_id", "tag", "window_end"])
    inside = (labels["window_end"] > pd.Timestamp(hour)) & (labels["window_end"] <= pd.Timestamp(hour + H))
    return readings, labels.loc[inside]


def shapes(seed: int = 12) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    sensors = [(f"dev-{d:04d}", f"s{k}") for d in range(12) for k in range(4)]
    n = len(sensors)
    params = {
        "sensors": sensors,
        "base": rng.uniform(-50, 200, n),
        "daily": rng.uniform(1, 10, n),
        "phase": rng.uniform(0, 2 * np.pi, n),
        "fast": rng.uniform(0, 2, n),
        "noise": rng.uniform(0.1, 1.0, n),
    }

    def hour_windows(h: int, rate: float):
        hour = START + h * H
        readings, labels = shapes_hour(rng, params, hour, rate)
        windows = aggregate_readings(readings)
        inside = (windows["window_end"] > pd.Timestamp(hour)) & (windows["window_end"] <= pd.Timestamp(hour + H))
        return windows.loc[inside], labels

    train = pd.concat([hour_windows(h, 0.0)[0] for h in range(TRAIN_HOURS)], ignore_index=True)
    scored = [hour_windows(h, 0.3) for h in range(TRAIN_HOURS, TRAIN_HOURS + SCORED_HOURS)]
    return (
        train,
        pd.concat([w for w, _ in scored], ignore_index=True),
        pd.concat([lab for _, lab in scored], ignore_index=True),
    )


def prf(flag: pd.Series, truth: pd.Series) -> dict[str, float]:
    tp, fp, fn = int((flag & truth).sum()), int((flag & ~truth).sum()), int((~flag & truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": round(p, 3),
        "recall": round(r, 3),
        "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0,
        "windows": int(truth.sum()),
    }


def judge(
    train: pd.DataFrame,
    scored: pd.DataFrame,
    labels: pd.DataFrame,
    threshold_mads: float | None,
    feature_set: str = features.WINDOW_V1,
    adaptive_nu: bool = False,
) -> dict[str, dict[str, float]]:
    train, scored = features.add_features(train), features.add_features(scored, context=train)
    trained = fitting.train_models(train, threshold_mads=threshold_mads, features=feature_set, adaptive=adaptive_nu)
    flagged = score(scored, {(m.device_id, m.tag): m.arrays for m in trained})
    judged = flagged.merge(labels, on=["device_id", "tag", "window_end"], how="left")
    judged["anomaly"] = judged["anomaly"].fillna("")
    truth = judged["anomaly"] != ""
    out = {"all": prf(judged["is_anomaly"], truth)}
    for kind in sorted(set(judged["anomaly"]) - {""}):
        part = judged.loc[(judged["anomaly"] == kind) | ~truth]
        out[kind] = prf(part["is_anomaly"], part["anomaly"] == kind)
    out["all"]["flagged_share"] = round(float(judged["is_anomaly"].mean()), 4)
    out["all"]["scored_windows"] = len(judged)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/detection.json")
    parser.add_argument("--features", nargs="+", default=list(features.FEATURE_SETS), choices=features.FEATURE_SETS)
    args = parser.parse_args()
    results: dict[str, object] = {
        "command": sys.argv,
        "machine": machine(),
        "load_average": os.getloadavg(),
        "lookback_minutes": features.LOOKBACK_MINUTES,
    }
    generators = (("simulator", simulator), ("simulator_contaminated", simulator_contaminated), ("shapes", shapes))
    for name, generator in generators:
        data = generator()
        for feature_set in args.features:
            for variant, (mads, adaptive) in VARIANTS.items():
                began = time.perf_counter()
                key = f"{name}/{feature_set}/{variant}"
                results[key] = judge(*data, mads, feature_set, adaptive)
                print(key, f"{time.perf_counter() - began:.1f} s", json.dumps(results[key]["all"]))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
