"""Train a model version from landed windows, the same windows the DAG would score."""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import pandas as pd

from sensor_scoring import settings as config, models
from sensor_scoring.storage import Storage
from sensor_scoring.validation import check_windows
from sensor_scoring.windows import folders_for_interval, read_landed, select_interval

log = logging.getLogger(__name__)


def train_and_register(
    storage: Storage,
    containers: config.Containers,
    start: datetime,
    end: datetime,
    *,
    version: str | None = None,
    promote: bool = False,
    nu: float = 0.02,
    min_rows: int = 30,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, object], list[models.TrainedModel]]:
    """Train on the valid windows ending in [start, end) and register them as a new version.

    Returns the manifest and the fitted models (the pipelines themselves, for tests to compare against).
    ``progress(done, total)`` hears of each sensor fitted (or skipped for too few windows), if given.
    """
    landed, files = read_landed(storage, containers.windows, folders_for_interval(start, end))
    windows = check_windows(select_interval(landed, start, end)).valid
    log.info("Training on %d valid window(s) from %d file(s)", len(windows), len(files))
    trained = _train(windows, nu=nu, min_rows=min_rows, progress=progress)
    manifest = models.register(
        storage, containers.models, trained,
        version=version or models.new_version_name(),
        params={"nu": nu, "gamma": "scale", "kernel": "rbf", "min_rows": min_rows, "scaler": "StandardScaler"},
        promote=promote,
    )
    return manifest, trained


def _train(windows: pd.DataFrame, *, nu: float, min_rows: int,
           progress: Callable[[int, int], None] | None) -> list[models.TrainedModel]:
    """``models.train_models``, one sensor at a time when someone is watching (the same models, in key order)."""
    if progress is None:
        return models.train_models(windows, nu=nu, min_rows=min_rows)
    sensors = [rows for _, rows in windows.groupby(["device_id", "tag"], sort=True, observed=True)]
    trained: list[models.TrainedModel] = []
    progress(0, len(sensors))
    for done, rows in enumerate(sensors, 1):
        trained += models.train_models(rows, nu=nu, min_rows=min_rows)
        progress(done, len(sensors))
    return trained
