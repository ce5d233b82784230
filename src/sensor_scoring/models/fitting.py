"""Fitting one sensor's model: StandardScaler + RBF OneClassSVM, its nu and its anomaly threshold.

Training only: scoring never imports this module (it evaluates the fitted arrays, ``scorer.ModelArrays``), and
neither does the registry, which stores what this module fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sensor_scoring import features as feature_sets
from sensor_scoring.scorer import ModelArrays


def scale_gamma(scaled: np.ndarray) -> float:
    """scikit-learn's ``gamma="scale"`` rule, 1 / (features * variance), computed here so the fitted
    value is an explicit, public parameter rather than the private ``_gamma``."""
    variance = float(scaled.var())
    return 1.0 / (scaled.shape[1] * variance) if variance > 0 else 1.0


def fit_pipeline(features: np.ndarray, *, nu: float = 0.02):
    """Fit StandardScaler + OneClassSVM on one sensor's feature matrix (rows x the set's columns)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    gamma = scale_gamma(StandardScaler().fit_transform(features))
    return make_pipeline(StandardScaler(), OneClassSVM(kernel="rbf", nu=nu, gamma=gamma)).fit(features)


def arrays_of(pipeline) -> ModelArrays:
    """Pull the fitted numbers out of a pipeline made by ``fit_pipeline``."""
    scaler, svm = pipeline[0], pipeline[-1]
    return ModelArrays(
        mean=np.asarray(scaler.mean_, dtype=float),
        scale=np.asarray(scaler.scale_, dtype=float),
        support_vectors=np.asarray(svm.support_vectors_, dtype=float),
        dual_coef=np.asarray(svm.dual_coef_, dtype=float).ravel(),
        intercept=float(svm.intercept_[0]),
        gamma=float(svm.gamma),
    )


@dataclass
class TrainedModel:
    device_id: str
    tag: str
    pipeline: object
    arrays: ModelArrays
    rows: int
    train_start: str
    train_end: str
    flagged_share: float
    #: the OneClassSVM's nu (the run's, or the sensor's own with ``adaptive``); None where not recorded
    nu: float | None = None


def calibrated_threshold(decision: np.ndarray, mads: float | None) -> float:
    """The anomaly threshold of a model: 0 (scikit-learn's ``predict``) without ``mads``; else the median of its
    training decision values minus ``mads`` robust standard deviations (1.4826 x their median absolute deviation),
    capped at 0 so a calibrated model never flags more than ``predict`` would.

    Why: ``nu`` bounds the share of training windows outside the boundary (2%), and about as many ordinary
    windows fall outside it later: most of the flags. A threshold well below the training windows' usual values
    keeps the boundary's shape and flags only what lies far out. Median and MAD, not a low quantile: training
    windows include real anomalies, and a quantile would land among them (bench/bench_detection.py, docs/models.md).
    """
    if mads is None:
        return 0.0
    if not mads > 0:
        raise ValueError(f"threshold_mads must be above 0, got {mads}")
    median = float(np.median(decision))
    spread = 1.4826 * float(np.median(np.abs(decision - median)))
    return min(0.0, median - mads * spread)


#: ``adaptive_nu``: a training window is an outlier where one of its features lies this many robust deviations
#: (1.4826 x MAD) from the sensor's median; nu is twice the outlier share plus NU_MARGIN, within [nu, NU_MAX].
OUTLIER_MADS = 8.0


NU_MARGIN = 0.01


NU_MAX = 0.2


def adaptive_nu(matrix: np.ndarray, floor: float) -> float:
    """A sensor's nu from its own training windows: ``floor`` unless they hold more far-out windows than it allows.

    Why: nu bounds the share of training windows left outside the boundary; where history holds more anomalies
    than that (real history does), the boundary wraps some of them and they later score as normal. A robust count
    of far-out windows (median and MAD, which those windows barely move) estimates that share per sensor; clean
    sensors keep ``floor`` (bench/bench_detection.py, docs/models.md).
    """
    median = np.median(matrix, axis=0)
    spread = 1.4826 * np.median(np.abs(matrix - median), axis=0)
    far = np.abs(matrix - median) > OUTLIER_MADS * np.where(spread > 0, spread, np.inf)
    share = float(far.any(axis=1).mean())
    return float(min(max(2 * share + NU_MARGIN, floor), max(NU_MAX, floor)))


def train_models(
    windows: pd.DataFrame,
    *,
    nu: float = 0.02,
    min_rows: int = 30,
    threshold_mads: float | None = None,
    features: str = feature_sets.WINDOW_V1,
    adaptive: bool = False,
) -> list[TrainedModel]:
    """One pipeline per (device_id, tag) with at least ``min_rows`` windows, sorted by key.

    ``threshold_mads``: calibrate each model's anomaly threshold on its training decision values (see
    :func:`calibrated_threshold`); None keeps scikit-learn's ``predict`` (threshold 0). ``features``: the feature
    set (a set with derived columns needs them in ``windows``: ``features.add_features``). ``adaptive``: each
    sensor's nu from its own windows (:func:`adaptive_nu`, at least ``nu``), else ``nu`` for all.
    """
    feature_sets.columns(features)  # an unknown set fails before any fit
    trained = []
    for (device_id, tag), rows in windows.groupby(["device_id", "tag"], sort=True, observed=True):
        if len(rows) < min_rows:
            continue
        matrix = feature_sets.feature_matrix(rows, features)
        sensor_nu = adaptive_nu(matrix, nu) if adaptive else nu
        pipeline = fit_pipeline(matrix, nu=sensor_nu)
        decision = pipeline.decision_function(matrix)
        arrays = arrays_of(pipeline)
        arrays.threshold = calibrated_threshold(decision, threshold_mads)
        arrays.features = features
        trained.append(
            TrainedModel(
                device_id=str(device_id),
                tag=str(tag),
                pipeline=pipeline,
                arrays=arrays,
                rows=len(rows),
                train_start=rows["window_end"].min().isoformat(),
                train_end=rows["window_end"].max().isoformat(),
                flagged_share=float((decision <= arrays.threshold).mean()),
                nu=sensor_nu,
            )
        )
    return trained
