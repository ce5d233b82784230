"""Simulated sensor readings with labelled anomalies, for demos, tests and benchmarks.

Readings are generated one hour of windows at a time, from a random generator seeded by (seed, hour), so
simulating an overlapping range again yields identical windows and lands them over the same blobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from sensor_scoring.storage import Storage, parquet_bytes
from sensor_scoring.windows import HOUR, LandingPlan, aggregate_readings, hour_floor, land_windows

TAG_NAMES = ("temperature", "pressure", "vibration", "humidity", "voltage", "current", "flow", "rpm")
ANOMALY_KINDS = ("spike", "stuck", "drift", "dropout")


@dataclass(frozen=True)
class SimulationConfig:
    """Shape of the fleet and of its faults."""

    devices: int = 10
    tags: int = 3
    seed: int = 0
    reading_interval_s: int = 10
    anomaly_rate: float = 0.15  # share of sensor-hours that carry one injected anomaly

    def sensors(self) -> list[tuple[str, str]]:
        if self.devices < 1 or not 1 <= self.tags <= len(TAG_NAMES):
            raise ValueError(f"need devices >= 1 and 1 <= tags <= {len(TAG_NAMES)}")
        return [(f"dev-{d:04d}", TAG_NAMES[t]) for d in range(self.devices) for t in range(self.tags)]


def _sensor_params(cfg: SimulationConfig) -> dict[str, np.ndarray]:
    """Per-sensor offset, daily amplitude and phase, noise and reading phase: stable for a seed."""
    rng = np.random.default_rng([cfg.seed, 7])
    n = cfg.devices * cfg.tags
    return {
        "base": rng.uniform(10, 100, n),
        "amp": rng.uniform(2, 8, n),
        "phase": rng.uniform(0, 2 * np.pi, n),
        "noise": rng.uniform(0.2, 0.6, n),
        "tick_phase": rng.uniform(0.001, cfg.reading_interval_s, n),
    }


def simulate_hour(cfg: SimulationConfig, hour: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Readings whose windows end in [hour, hour + 1h), and one label row per anomalous window.

    Readings fall in (hour - 1 min, hour + 59 min], so every window of the hour is whole in one call.
    """
    hour = hour_floor(hour)
    sensors = cfg.sensors()
    params = _sensor_params(cfg)
    rng = np.random.default_rng([cfg.seed, int(hour.timestamp())])
    n, ticks = len(sensors), 3600 // cfg.reading_interval_s
    origin = pd.Timestamp(hour) - pd.Timedelta(minutes=1)
    offsets = params["tick_phase"][:, None] + cfg.reading_interval_s * np.arange(ticks)[None, :]  # seconds
    hours_of_day = (origin.hour + origin.minute / 60 + offsets / 3600) % 24
    values = (
        params["base"][:, None]
        + params["amp"][:, None] * np.sin(2 * np.pi * hours_of_day / 24 + params["phase"][:, None])
        + rng.normal(0, 1, (n, ticks)) * params["noise"][:, None]
    )
    keep = np.ones((n, ticks), dtype=bool)
    kind = np.full((n, ticks), "", dtype=object)
    minute_of = (offsets // 60).astype(int)  # 0..60, window index relative to origin
    per_minute = 60 // cfg.reading_interval_s
    for s in np.flatnonzero(rng.random(n) < cfg.anomaly_rate):
        what = ANOMALY_KINDS[rng.integers(len(ANOMALY_KINDS))]
        first = int(rng.integers(1, 50))
        length = int(rng.integers(3, 10)) if what != "spike" else 1
        cols = np.flatnonzero((minute_of[s] >= first) & (minute_of[s] < first + length))
        sigma = params["noise"][s]
        if what == "spike":
            hit = cols[rng.integers(len(cols))]
            values[s, hit] += rng.choice([-1, 1]) * rng.uniform(15, 30) * sigma
            cols = np.flatnonzero(minute_of[s] == minute_of[s, hit])
        elif what == "stuck":
            values[s, cols] = values[s, cols[0] - 1]
        elif what == "drift":
            values[s, cols] += np.linspace(5, 25, len(cols)) * sigma
        else:  # dropout: the device reports once a minute instead of every interval
            keep[s, cols] = (np.arange(len(cols)) % per_minute) == 0
        kind[s, cols] = what
    device = np.repeat([d for d, _ in sensors], ticks).reshape(n, ticks)
    tag = np.repeat([t for _, t in sensors], ticks).reshape(n, ticks)
    ts = origin + pd.to_timedelta(offsets[keep], unit="s")
    readings = pd.DataFrame({"ts": ts, "device_id": device[keep], "tag": tag[keep], "value": values[keep]})
    flagged = kind != ""
    labels = (
        pd.DataFrame(
            {
                "device_id": device[flagged],
                "tag": tag[flagged],
                "window_end": (origin + pd.to_timedelta(offsets[flagged], unit="s")).ceil("min"),
                "anomaly": kind[flagged].astype(str),
            }
        )
        .drop_duplicates(["device_id", "tag", "window_end"])
        .reset_index(drop=True)
    )
    return readings, labels


def simulate_to_storage(
    storage: Storage,
    cfg: SimulationConfig,
    start: datetime,
    end: datetime,
    *,
    windows_container: str,
    labels_container: str,
    plan: LandingPlan | None = None,
) -> dict[str, int]:
    """Simulate [start, end) hour by hour, land the windows and put labels where the DAG never reads."""
    hour = hour_floor(start)
    totals = {"hours": 0, "windows": 0, "anomalous_windows": 0, "files": 0}
    while hour < end:
        readings, labels = simulate_hour(cfg, hour)
        windows = aggregate_readings(readings)
        # a range ending mid-hour is a live stream caught at ``end``: nothing after it has happened yet
        windows = windows.loc[windows["window_end"] < pd.Timestamp(end)]
        labels = labels.loc[labels["window_end"] < pd.Timestamp(end)]
        landing = plan or LandingPlan(seed=cfg.seed)
        batch = f"simulated/{hour.isoformat()}/{cfg.seed}"  # re-landing a growing current hour replaces it
        totals["files"] += len(land_windows(storage, windows_container, windows, landing, batch=batch))
        storage.write_bytes(labels_container, label_path(hour), parquet_bytes(labels))
        totals["hours"] += 1
        totals["windows"] += len(windows)
        totals["anomalous_windows"] += len(labels)
        hour += HOUR
    return totals


def label_path(hour: datetime) -> str:
    """Where the labels of a simulated hour go in the labels container (never read by the DAG)."""
    from sensor_scoring.models.evaluation import label_path as labels_of_hour  # the layout operators upload to

    return labels_of_hour(hour_floor(hour))
