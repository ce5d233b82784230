"""Small builders shared by tests."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from scoring.simulate import SimulationConfig, simulate_hour
from scoring.windows import aggregate_readings

START = datetime(2026, 11, 24, 0, tzinfo=timezone.utc)


def fleet_windows(devices: int = 2, tags: int = 2, hours: int = 2, start: datetime = START, seed: int = 0) -> pd.DataFrame:
    """Simulated windows for ``hours`` hours from ``start``."""
    cfg = SimulationConfig(devices=devices, tags=tags, seed=seed)
    return pd.concat(
        [aggregate_readings(simulate_hour(cfg, start + timedelta(hours=h))[0]) for h in range(hours)],
        ignore_index=True,
    )
