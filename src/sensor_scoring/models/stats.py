"""Training statistics of each model: what hourly model health compares an hour's scores against.

Stored at registration beside the version's index (``versions/<version>/training_stats.parquet``, one row per
model), so health reads one small table per version instead of refitting or rescoring training data. Per model:
the share of training windows the model flags (its expected anomaly rate) and a histogram of its training
decision values over quantile edges, the reference distribution of the population stability index (PSI).

Quantile edges put about the same share of training windows in each bin, so PSI weighs every part of the
distribution; the outermost edges are open (an hour scoring beyond the training range lands in the end bins).

A daily cycle makes one hour unlike a whole day: a sensor at its daily trough scores differently, and is flagged
more or less often, than over its whole training range. So the statistics are also kept per hour of day (UTC):
``hourly_counts`` (the histogram of the training windows of that hour of day, over the same edges) and
``hourly_flagged_share``; health compares an hour with the same hour of day in training where training had at
least ``MIN_HOURLY_WINDOWS`` windows then (a range of a day or more), else with the whole range.

``false_alarm_rate`` is the model's calibrated rate (NaN: not calibrated), the share of normal windows it may flag
that was held back from its fit; its own fit windows are flagged less often (``train_flagged_share``), so health
expects at least the calibrated rate of a healthy hour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sensor_scoring.features import feature_matrix
from sensor_scoring.models.fitting import TrainedModel
from sensor_scoring.scorer import ModelArrays, decision_function
from sensor_scoring.storage import Storage, parquet_bytes, parquet_frame

#: Bins of the reference histogram: ten deciles of the training decision values.
BINS = 10
#: The file beside ``models.parquet`` in a version's folder.
STATS_FILE = "training_stats.parquet"
#: Smoothing of empty bins in PSI (a bin with no window would make the logarithm infinite).
PSI_EPSILON = 1e-4
#: Training windows of one hour of day below which health compares with the whole range instead.
MIN_HOURLY_WINDOWS = 30
COLUMNS = (
    "device_id",
    "tag",
    "train_rows",
    "train_flagged_share",
    "score_mean",
    "score_std",
    "edges",
    "counts",
    "hourly_counts",
    "hourly_flagged_share",
    "false_alarm_rate",
)


def stats_path(version: str) -> str:
    """The statistics table of a version in the models container."""
    return f"versions/{version}/{STATS_FILE}"


def training_statistics(
    arrays: ModelArrays, features: np.ndarray, *, bins: int = BINS, hours: np.ndarray | None = None
) -> dict[str, object]:
    """The statistics health needs of one fitted model, from its arrays and its training features.

    Decision values are computed with the scorer's own function (``scorer.decision_function``), so training and
    hourly scores are the same numbers; a window is flagged where the value is not above the model's threshold,
    as in scoring. ``edges`` are the ``bins - 1`` inner quantile edges (deduplicated: a model with few distinct
    values gets fewer bins) and ``counts`` the training windows in each of the ``len(edges) + 1`` bins.
    ``hours`` (the hour of day, 0-23, of each training window) adds the per-hour-of-day histograms and flagged
    shares (an hour of day without training windows: zero counts and NaN).
    """
    if len(features) == 0:
        raise ValueError("no training features: statistics need at least one window")
    values = decision_function(features, np.zeros(len(features), dtype=np.int64), [arrays])
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    flagged = values <= arrays.threshold
    hourly_counts: list[list[int]] = []
    hourly_flagged: list[float] = []
    if hours is not None:
        for h in range(24):
            at = np.asarray(hours) == h
            hourly_counts.append([int(c) for c in bin_counts(values[at], edges)])
            hourly_flagged.append(float(flagged[at].mean()) if at.any() else float("nan"))
    return {
        "train_rows": int(len(values)),
        "train_flagged_share": float(flagged.mean()),
        "score_mean": float(values.mean()),
        "score_std": float(values.std()),
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in bin_counts(values, edges)],
        "hourly_counts": hourly_counts,
        "hourly_flagged_share": hourly_flagged,
    }


def bin_counts(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Windows per bin of open-ended bins split at ``edges`` (a value equal to an edge goes to the upper bin)."""
    return np.bincount(np.searchsorted(np.asarray(edges, dtype=float), values, side="right"), minlength=len(edges) + 1)


def psi(reference: Sequence[int], observed: Sequence[int], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of ``observed`` against ``reference`` counts over the same bins.

    sum((o - r) * ln(o / r)) over the bins' shares, empty bins smoothed by ``epsilon``. Rules of thumb: below 0.1
    stable, 0.1-0.25 a shift worth watching, above 0.25 a shift.
    """
    ref = np.asarray(reference, dtype=float)
    obs = np.asarray(observed, dtype=float)
    if ref.shape != obs.shape or ref.sum() <= 0 or obs.sum() <= 0:
        raise ValueError("psi needs two non-empty histograms over the same bins")
    r = np.clip(ref / ref.sum(), epsilon, None)
    o = np.clip(obs / obs.sum(), epsilon, None)
    return float(np.sum((o - r) * np.log(o / r)))


def statistics_table(trained: Sequence[TrainedModel], windows: pd.DataFrame) -> pd.DataFrame:
    """One row per trained model (``COLUMNS``), from its arrays and its own training windows in ``windows`` (with
    the columns of the models' feature set)."""
    by_sensor = {
        (str(d), str(t)): rows for (d, t), rows in windows.groupby(["device_id", "tag"], sort=False, observed=True)
    }
    rows = [
        {
            "device_id": m.device_id,
            "tag": m.tag,
            **training_statistics(
                m.arrays, feature_matrix(by_sensor[key], m.arrays.features), hours=_hour_of_day(by_sensor[key])
            ),
            "false_alarm_rate": float("nan") if m.false_alarm_rate is None else float(m.false_alarm_rate),
        }
        for m in trained
        if (key := (m.device_id, m.tag)) in by_sensor
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _hour_of_day(windows: pd.DataFrame) -> np.ndarray | None:
    """The UTC hour of day of each window's ``window_end`` (the hour whose partition it is scored in), None without
    ``window_end``."""
    if "window_end" not in windows:
        return None
    return pd.to_datetime(windows["window_end"], utc=True).dt.hour.to_numpy()


def store(
    storage: Storage, container: str, version: str, trained: Sequence[TrainedModel], windows: pd.DataFrame
) -> int:
    """Write a registered version's statistics table (``windows``: what it was trained on); returns the models
    it covers. Called by training right after ``registry.register`` (the registry does not import this module: it stores
    models, this module judges them with the scorer's decision function)."""
    return store_table(storage, container, version, statistics_table(trained, windows))


def store_table(storage: Storage, container: str, version: str, table: pd.DataFrame) -> int:
    """Write a version's statistics from tables already computed (the training DAG's shards); returns its rows."""
    if table.empty:
        return 0
    storage.write_bytes(container, stats_path(version), parquet_bytes(table))
    return len(table)


def read(storage: Storage, container: str, version: str) -> pd.DataFrame | None:
    """A version's statistics table, or None for a version registered without statistics."""
    try:
        return parquet_frame(storage.read_bytes(container, stats_path(version)))
    except FileNotFoundError:
        return None
