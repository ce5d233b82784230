"""The evaluation sources of ``bench_detection.py``: raw readings, where training ends, and window labels.

Specified in bench/README.md (written before any result was looked at). Every source returns a :class:`Source`:
readings in the ``TS,Device,Tag,Value`` layout's columns (``ts, device_id, tag, value``), the cut (windows ending at
or before it train, later ones are scored) and the labels of the scored anomalous windows (None: unlabelled).
Windows are made by the project's own aggregator (``windows.aggregate_readings``, which ``ingest-readings`` runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour

START = datetime(2026, 11, 24, tzinfo=timezone.utc)
H = timedelta(hours=1)
#: Where the real readings come from (third-party: never committed here).
SENSOR_DATA_SOURCE = "https://github.com/Azure/BatchAIAnomalyDetection, file data/sensor_data.csv"
SENSOR_DATA_ENV = "SCORING_SENSOR_DATA"


@dataclass
class Source:
    name: str
    readings: pd.DataFrame  # ts (UTC), device_id, tag, value
    cut: pd.Timestamp  # windows ending at or before it are training, later ones are scored
    labels: pd.DataFrame | None  # device_id, tag, window_end, anomaly of the scored anomalous windows; None: no labels


def _labels(device: np.ndarray, tag: np.ndarray, ts: pd.DatetimeIndex, kind: np.ndarray) -> pd.DataFrame:
    return (
        pd.DataFrame({"device_id": device, "tag": tag, "window_end": ts.ceil("min"), "anomaly": kind.astype(str)})
        .drop_duplicates(["device_id", "tag", "window_end"])
        .reset_index(drop=True)
    )


def simulator(seed: int = 11, train_hours: int = 24, scored_hours: int = 6, anomalies: bool = True) -> Source:
    """The project's simulator, 6 devices x 4 tags: clean training hours, then 30% of sensor-hours anomalous
    (``anomalies`` False: none anywhere, every scored window normal)."""
    clean = SimulationConfig(devices=6, tags=4, seed=seed, anomaly_rate=0.0)
    faulty = SimulationConfig(devices=6, tags=4, seed=seed, anomaly_rate=0.3 if anomalies else 0.0)
    parts, labels = [], []
    for h in range(train_hours + scored_hours):
        readings, hour_labels = simulate_hour(clean if h < train_hours else faulty, START + h * H)
        parts.append(readings)
        if h >= train_hours:
            labels.append(hour_labels)
    return Source(
        "simulator",
        pd.concat(parts, ignore_index=True),
        pd.Timestamp(START + train_hours * H),
        pd.concat(labels, ignore_index=True),
    )


SHAPES = ("level_shift", "variance_burst", "flatline", "slow_drift", "spike", "irregular_sampling")


def _shapes_hour(rng: np.random.Generator, params: dict, hour: datetime, anomaly_rate: float):
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
    minute = ((t - t[:, :1].min()) // 60).astype(int)
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
    flagged = (kind != "") & keep
    labels = _labels(device[flagged], tag[flagged], stamp(flagged), kind[flagged])
    inside = (labels["window_end"] > pd.Timestamp(hour)) & (labels["window_end"] <= pd.Timestamp(hour + H))
    return readings, labels.loc[inside]


def shapes(seed: int = 12, train_hours: int = 24, scored_hours: int = 6, anomalies: bool = True) -> Source:
    """The earlier independent generator (daily and 20-minute cycles, jittered sampling, six shapes), 6 x 4."""
    rng = np.random.default_rng(seed)
    sensors = [(f"dev-{d:04d}", f"s{k}") for d in range(6) for k in range(4)]
    n = len(sensors)
    params = {
        "sensors": sensors,
        "base": rng.uniform(-50, 200, n),
        "daily": rng.uniform(1, 10, n),
        "phase": rng.uniform(0, 2 * np.pi, n),
        "fast": rng.uniform(0, 2, n),
        "noise": rng.uniform(0.1, 1.0, n),
    }
    parts, labels = [], []
    for h in range(train_hours + scored_hours):
        rate = 0.3 if anomalies and h >= train_hours else 0.0
        readings, hour_labels = _shapes_hour(rng, params, START + h * H, rate)
        parts.append(readings)
        labels.append(hour_labels)
    cut = pd.Timestamp(START + train_hours * H)
    readings = pd.concat(parts, ignore_index=True)
    return Source("shapes", readings, cut, pd.concat(labels, ignore_index=True))


PLANT_KINDS = ("stuck_zero", "cycle_stall", "noise_growth", "offset_step", "slow_sampling")


def plant(seed: int = 21, train_hours: int = 24, scored_hours: int = 6, anomalies: bool = True) -> Source:
    """Readings every 2-30 s (jittered) on a wandering AR(1) baseline with an on/off duty cycle and Student-t noise;
    5% of training sensor-hours and 30% of scored ones carry one anomaly of PLANT_KINDS."""
    rng = np.random.default_rng(seed)
    sensors = [(f"plant-{d:02d}", f"p{k}") for d in range(6) for k in range(4)]
    hours = train_hours + scored_hours
    span = hours * 3600.0
    parts, labels = [], []
    for device, tag in sensors:
        interval = rng.uniform(2, 30)
        steps = interval * rng.uniform(0.8, 1.2, int(span / interval * 1.3) + 10)
        t = np.cumsum(steps) - rng.uniform(0, interval)
        t = t[(t > 0) & (t <= span)]
        sigma = rng.uniform(0.2, 2.0)
        base = rng.uniform(20, 300)
        # AR(1) wander per minute (mean-reverting), interpolated to the readings
        minutes = int(span // 60) + 2
        wander = np.zeros(minutes)
        shocks = rng.normal(0, sigma * 0.3, minutes)
        for m in range(1, minutes):
            wander[m] = 0.98 * wander[m - 1] + shocks[m]
        level = base + np.interp(t / 60, np.arange(minutes), wander)
        period, duty, phase = rng.uniform(600, 2400), rng.uniform(0.3, 0.7), rng.uniform(0, 1)
        amplitude = rng.uniform(2, 20) * sigma
        cycle_pos = (t / period + phase) % 1.0
        noise = rng.standard_t(3, len(t)) / np.sqrt(3) * sigma
        keep = np.ones(len(t), dtype=bool)
        kind = np.full(len(t), "", dtype=object)
        on = (cycle_pos < duty).astype(float)
        values = level + amplitude * on + noise
        for h in range(hours):
            if rng.random() >= (0.05 if h < train_hours else 0.3) or not anomalies:
                continue
            what = PLANT_KINDS[rng.integers(len(PLANT_KINDS))]
            first = h * 3600 + rng.uniform(0, 55 * 60)
            length = (
                60
                * {
                    "stuck_zero": rng.uniform(5, 30),
                    "cycle_stall": rng.uniform(10, 40),
                    "noise_growth": rng.uniform(5, 20),
                    "offset_step": rng.uniform(3, 15),
                    "slow_sampling": rng.uniform(5, 20),
                }[what]
            )
            inside = (t >= first) & (t < first + length)
            if not inside.any():
                continue
            if what == "stuck_zero":
                values[inside] = 0.0
            elif what == "cycle_stall":
                frozen = on[np.flatnonzero(inside)[0]]
                values[inside] = level[inside] + amplitude * frozen + noise[inside]
            elif what == "noise_growth":
                values[inside] = level[inside] + amplitude * on[inside] + noise[inside] * rng.uniform(3, 6)
            elif what == "offset_step":
                values[inside] += rng.choice([-1, 1]) * rng.uniform(3, 6) * sigma
            else:
                idx = np.flatnonzero(inside)
                keep[idx[np.arange(len(idx)) % 10 != 0]] = False
            kind[inside] = what
        ts = pd.DatetimeIndex(pd.Timestamp(START) + pd.to_timedelta(t, unit="s"))
        parts.append(pd.DataFrame({"ts": ts[keep], "device_id": device, "tag": tag, "value": values[keep]}))
        hit = keep & (kind != "")
        labels.append(_labels(np.full(hit.sum(), device), np.full(hit.sum(), tag), ts[hit], kind[hit]))
    cut = pd.Timestamp(START + train_hours * H)
    all_labels = pd.concat(labels, ignore_index=True)
    return Source("plant", pd.concat(parts, ignore_index=True), cut, all_labels.loc[all_labels["window_end"] > cut])


def sparse(seed: int = 31, train_days: int = 7, scored_days: int = 3, anomalies: bool = True) -> Source:
    """Sensors reporting every 5-60 minutes (jittered, 5% lost): counters mostly at 0, slow processes, setpoints;
    20% of scored sensor-days carry one anomaly (level_shift, spike, stuck, burst, as fits the sensor's kind)."""
    rng = np.random.default_rng(seed)
    sensors = [(f"field-{d:02d}", tag) for d in range(8) for tag in ("counter", "process", "setpoint")]
    days = train_days + scored_days
    span = days * 86400.0
    parts, labels = [], []
    for device, tag in sensors:
        interval = 60.0 * rng.choice([5, 10, 15, 30, 60])
        t = np.cumsum(interval * rng.uniform(0.8, 1.2, int(span / interval * 1.3) + 10)) - rng.uniform(0, interval)
        t = t[(t > 0) & (t <= span)]
        t = t[rng.random(len(t)) >= 0.05]
        n = len(t)
        if tag == "counter":
            lam = rng.uniform(0.05, 0.5)
            values = rng.poisson(lam, n).astype(float)
            sd, kinds = np.sqrt(lam), ("level_shift", "burst")
        elif tag == "process":
            ar = np.zeros(n)
            shocks = rng.normal(0, rng.uniform(0.3, 1.0), n)
            for i in range(1, n):
                ar[i] = 0.8 * ar[i - 1] + shocks[i]
            amp = rng.uniform(2, 10)
            values = rng.uniform(20, 80) + amp * np.sin(2 * np.pi * t / 86400 + rng.uniform(0, 2 * np.pi)) + ar
            sd, kinds = float(np.std(ar)), ("level_shift", "spike", "stuck")
        else:
            values = np.full(n, rng.uniform(10, 50))
            for _ in range(rng.integers(0, 4)):  # rare small steps
                values[t >= rng.uniform(0, span)] += rng.choice([-1, 1]) * rng.uniform(0.01, 0.05)
            values = np.round(values, 2)
            sd, kinds = 0.05, ("level_shift", "spike")
        kind = np.full(n, "", dtype=object)
        for day in range(train_days, days):
            if rng.random() >= 0.2 or not anomalies:
                continue
            what = kinds[rng.integers(len(kinds))]
            day_idx = np.flatnonzero((t >= day * 86400) & (t < (day + 1) * 86400))
            if len(day_idx) < 12:
                continue
            first = int(rng.integers(1, len(day_idx) - 10))
            if what == "level_shift":
                begin = t[day_idx[first]]
                idx = np.flatnonzero((t >= begin) & (t < begin + 3600 * rng.uniform(2, 8)))
                sign = 1 if tag == "counter" else rng.choice([-1, 1])
                values[idx] += sign * rng.uniform(4, 8) * sd
            elif what == "spike":
                idx = day_idx[first : first + 1]
                values[idx] += rng.choice([-1, 1]) * rng.uniform(6, 15) * sd
            elif what == "stuck":
                idx = day_idx[first : first + int(rng.integers(3, 11))]
                values[idx] = values[idx[0] - 1]
            else:  # burst
                idx = day_idx[first : first + int(rng.integers(1, 4))]
                values[idx] = np.ceil(lam * rng.uniform(5, 20, len(idx)))
            kind[idx] = what
        ts = pd.DatetimeIndex(pd.Timestamp(START) + pd.to_timedelta(t, unit="s"))
        parts.append(pd.DataFrame({"ts": ts, "device_id": device, "tag": tag, "value": values}))
        hit = kind != ""
        labels.append(_labels(np.full(hit.sum(), device), np.full(hit.sum(), tag), ts[hit], kind[hit]))
    cut = pd.Timestamp(START + timedelta(days=train_days))
    return Source("sparse", pd.concat(parts, ignore_index=True), cut, pd.concat(labels, ignore_index=True))


def real(path: str | None, train_hours: int = 3) -> Source | None:
    """The reference architecture's ``data/sensor_data.csv`` (read by ``ingest-readings``' reader): the first
    ``train_hours`` train, the rest is scored, unlabelled. None (and a message) when the file is not given."""
    from sensor_scoring.tools.ingest import read_raw_readings

    path = path or os.environ.get(SENSOR_DATA_ENV)
    if not path or not os.path.exists(path):
        print(
            f"real: skipped: no sensor data file (pass --sensor-data PATH or set {SENSOR_DATA_ENV}; "
            f"get it from {SENSOR_DATA_SOURCE})"
        )
        return None
    raw = read_raw_readings(path)
    if raw.rejected:
        print(f"real: {len(raw.rejected)} of {raw.lines} lines rejected by the reader: {raw.by_reason()}")
    readings = raw.readings
    return Source("real", readings, readings["ts"].min().ceil("min") + pd.Timedelta(hours=train_hours), None)
