"""Train a model version from landed windows, the same windows the DAG would score.

Training reads windows by the scoring runs' own rule (``windows.ownership``): the interval's folders and
``late_folders`` more, the windows the interval owns; the strays among them (landed in a folder other than their
window_end's hour's or the next) and the windows validation quarantines are not trained on, as they are not
scored. Corrupt files are set aside and named in the log, as an hourly run would. Features are derived as a
scoring run derives them (``features.add_features``), with the hour before the range as the lookback of its first
windows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import pandas as pd

from sensor_scoring import features as feature_sets, settings as config
from sensor_scoring.models import fitting, registry, stats
from sensor_scoring.storage import Storage
from sensor_scoring.validation import check_windows
from sensor_scoring.windows import read_owned_with_lookback, set_aside_strays

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
    threshold_mads: float | None = None,
    late_folders: int = 1,
    progress: Callable[[int, int], None] | None = None,
    features: str = feature_sets.DEFAULT_FEATURE_SET,
    adaptive_nu: bool = False,
    false_alarm_rate: float | None = None,
) -> tuple[dict[str, object], list[fitting.TrainedModel]]:
    """Train on the valid windows [start, end) owns and register them as a new version.

    Returns the manifest and the fitted models (the pipelines themselves, for tests to compare against).
    ``progress(done, total)`` hears of each sensor fitted (or skipped for too few windows), if given.
    ``features``: the feature set of the new version (``sensor_scoring.features``); ``adaptive_nu``: each sensor's
    nu from its own windows, at least ``nu`` (``fitting.adaptive_nu``).
    """
    feature_sets.columns(features)  # an unknown set fails before anything is read
    landed, before = read_owned_with_lookback(storage, containers.windows, start, end, late_folders)
    for corrupt in landed.corrupt:
        log.warning("Not training on corrupt file %s (%d bytes): %s", corrupt.file, corrupt.bytes, corrupt.error)
    owned, _ = set_aside_strays(landed.windows, landed.rejected)  # strays: quarantined by their folder's hour
    windows = check_windows(owned, start, end).valid
    context = feature_sets.read_context(storage, containers.windows, start, read=before)
    windows = feature_sets.add_features(windows, context)
    log.info("Training on %d valid window(s) from %d file(s), features %s", len(windows), len(landed.files), features)
    trained = _train(
        windows,
        nu=nu,
        min_rows=min_rows,
        threshold_mads=threshold_mads,
        progress=progress,
        features=features,
        adaptive_nu=adaptive_nu,
        false_alarm_rate=false_alarm_rate,
    )
    manifest = registry.register(
        storage,
        containers.models,
        trained,
        version=version or registry.new_version_name(),
        params={
            "nu": nu,
            "gamma": "scale",
            "kernel": "rbf",
            "min_rows": min_rows,
            "scaler": "StandardScaler",
            "threshold_mads": threshold_mads,
            "adaptive_nu": adaptive_nu,
            "false_alarm_rate": false_alarm_rate,
        },
        promote=promote,
    )
    stats.store(storage, containers.models, str(manifest["version"]), trained, windows)  # for model health
    return manifest, trained


def _train(
    windows: pd.DataFrame,
    *,
    nu: float,
    min_rows: int,
    threshold_mads: float | None,
    progress: Callable[[int, int], None] | None,
    features: str,
    adaptive_nu: bool,
    false_alarm_rate: float | None = None,
) -> list[fitting.TrainedModel]:
    """``fitting.train_models``, one sensor at a time when someone is watching (the same models, in key order)."""
    if progress is None:
        return fitting.train_models(
            windows,
            nu=nu,
            min_rows=min_rows,
            threshold_mads=threshold_mads,
            features=features,
            adaptive=adaptive_nu,
            false_alarm_rate=false_alarm_rate,
        )
    sensors = [rows for _, rows in windows.groupby(["device_id", "tag"], sort=True, observed=True)]
    trained: list[fitting.TrainedModel] = []
    progress(0, len(sensors))
    for done, rows in enumerate(sensors, 1):
        trained += fitting.train_models(
            rows,
            nu=nu,
            min_rows=min_rows,
            threshold_mads=threshold_mads,
            features=features,
            adaptive=adaptive_nu,
            false_alarm_rate=false_alarm_rate,
        )
        progress(done, len(sensors))
    return trained
