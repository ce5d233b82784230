"""Train a model version from landed windows, the same windows the DAG would score."""
from __future__ import annotations

import logging
from datetime import datetime

from scoring import config, models
from scoring.storage import Storage
from scoring.validation import check_windows
from scoring.windows import folders_for_interval, read_landed, select_interval

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
) -> tuple[dict[str, object], list[models.TrainedModel]]:
    """Train on the valid windows ending in [start, end) and register them as a new version.

    Returns the manifest and the fitted models (the pipelines themselves, for tests to compare against).
    """
    landed, files = read_landed(storage, containers.windows, folders_for_interval(start, end))
    windows = check_windows(select_interval(landed, start, end)).valid
    log.info("Training on %d valid window(s) from %d file(s)", len(windows), len(files))
    trained = models.train_models(windows, nu=nu, min_rows=min_rows)
    manifest = models.register(
        storage, containers.models, trained,
        version=version or models.new_version_name(),
        params={"nu": nu, "gamma": "scale", "kernel": "rbf", "min_rows": min_rows, "scaler": "StandardScaler"},
        promote=promote,
    )
    return manifest, trained
