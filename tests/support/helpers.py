"""Small builders shared by tests."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour
from sensor_scoring.windows import aggregate_readings

START = datetime(2026, 11, 24, 0, tzinfo=timezone.utc)


def fleet_windows(
    devices: int = 2, tags: int = 2, hours: int = 2, start: datetime = START, seed: int = 0
) -> pd.DataFrame:
    """Simulated windows for ``hours`` hours from ``start``."""
    cfg = SimulationConfig(devices=devices, tags=tags, seed=seed)
    return pd.concat(
        [aggregate_readings(simulate_hour(cfg, start + timedelta(hours=h))[0]) for h in range(hours)],
        ignore_index=True,
    )


def planned_hour(storage, containers, run_id: str, *, devices: int, tags: int, sensors_per_shard: int):
    """A real hour made ready to score: three hours landed, models ``v1`` trained and promoted, and the third
    hour validated and planned. Returns the ``Hour`` and its shards, as the DAG's mapped task would get them."""
    from sensor_scoring import models, pipeline
    from sensor_scoring.windows import land_windows

    windows = fleet_windows(devices=devices, tags=tags, hours=3)
    land_windows(storage, containers.windows, windows)
    models.register(storage, containers.models, models.train_models(windows), version="v1", params={}, promote=True)
    hour = pipeline.Hour(storage, containers, run_id, START + timedelta(hours=2), START + timedelta(hours=3))
    shards = pipeline.plan_shards(hour, pipeline.load_and_validate(hour), model_version="production",
                                  sensors_per_shard=sensors_per_shard)
    return hour, shards
