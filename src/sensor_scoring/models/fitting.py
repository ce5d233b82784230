"""Fitting one sensor's model: StandardScaler + RBF OneClassSVM, its nu and its anomaly threshold.

The threshold is calibrated for a false-alarm rate the operator states (``false_alarm_rate``) by split conformal
prediction: each sensor's model is fitted on the earlier ``1 - CALIBRATION_SHARE`` of its training windows, and its
threshold set on the decision values of the later part, which the fit never saw (:func:`conformal_threshold`). A
sensor whose history cannot carry a model is skipped with a reason (:data:`SKIP_REASONS`), never given a model
that flags everything.

Training only: scoring never imports this module (it evaluates the fitted arrays, ``scorer.ModelArrays``), and
neither does the registry, which stores what this module fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    #: the share of normal windows the calibrated threshold may flag (the run's ``false_alarm_rate``, or
    #: ``1 / (calibration_windows + 1)`` where too few windows support a lower one); None: not calibrated
    false_alarm_rate: float | None = None
    #: the training windows held back from the fit to calibrate the threshold (0: not calibrated)
    calibration_windows: int = 0


#: Why a sensor got no model (``Skipped.reason``): fewer than ``min_rows`` valid windows; windows whose model
#: input does not vary (a stuck or unused sensor: no boundary to learn, any change would be flagged at once).
SKIP_REASONS = ("too_few_windows", "constant_history")


@dataclass(frozen=True)
class Skipped:
    """A sensor of the training data without a model, and why (recorded in the version's ``skipped`` table)."""

    device_id: str
    tag: str
    reason: str
    rows: int


#: The share of normal windows a model may flag, unless the run states another (``false_alarm_rate``): chosen by
#: leave-one-source-out in bench/bench_detection.py (docs/models.md, "Detection quality").
DEFAULT_FALSE_ALARM_RATE = 0.02
#: The OneClassSVM's nu, unless the run states another (chosen with the rate above).
DEFAULT_NU = 0.02
#: Each sensor's nu from its own training windows (:func:`adaptive_nu`, the run's nu its floor), unless the run
#: says otherwise: chosen with the two above (docs/models.md, "Detection quality": the third round). With the
#: conformal threshold nu shapes the boundary only, so the rate holds either way; clean histories keep the floor.
DEFAULT_ADAPTIVE_NU = True
#: The latest share of each sensor's training windows held back from its fit to calibrate its threshold.
CALIBRATION_SHARE = 0.25
#: Decision values this close (relative to the size of the kernel sum) count as tied: the scorer's values agree
#: with scikit-learn's to ~1e-15 of it, so identical windows never fall on both sides of a threshold.
TIE_TOLERANCE = 1e-9
#: A feature column whose range over the training windows is at most this (relative to its level) is constant.
CONSTANT_TOLERANCE = 1e-9


def conformal_threshold(calibration: np.ndarray, rate: float, arrays: ModelArrays) -> tuple[float, float]:
    """The threshold (for the scorer's ``decision <= threshold``) that flags at most ``rate`` of normal windows,
    from the decision values of ``calibration`` windows the model never saw, and the rate it guarantees.

    Split conformal: with the n calibration values sorted, d_(1) <= ... <= d_(n), and k = floor(rate (n + 1)), a
    new window exchangeable with them falls strictly below d_(k) with probability at most k / (n + 1) <= rate.
    The rule is strict and tie-aware: the threshold sits just below d_(k) (by ``TIE_TOLERANCE`` of the kernel sum),
    so windows tied with it, however many (a sensor mostly at one value), are never flagged. Where k = 0 (fewer than
    1 / rate - 1 calibration windows) the threshold is the lowest the calibration supports, just below d_(1),
    guaranteeing 1 / (n + 1) instead: the second value returned, recorded in the index.
    """
    if not 0 < rate < 1:
        raise ValueError(f"false_alarm_rate must be between 0 and 1, got {rate}")
    if len(calibration) == 0:
        raise ValueError("no calibration windows")
    n = len(calibration)
    k = int(np.floor(rate * (n + 1) + 1e-12))
    guaranteed = rate if k >= 1 else 1.0 / (n + 1)
    k = max(k, 1)
    value = float(np.partition(np.asarray(calibration, dtype=float), k - 1)[k - 1])
    tolerance = TIE_TOLERANCE * (1.0 + float(np.abs(arrays.dual_coef).sum()) + abs(arrays.intercept))
    return value - tolerance, guaranteed


def is_constant(matrix: np.ndarray) -> bool:
    """No column of the model input varies over these windows (within ``CONSTANT_TOLERANCE`` of its level)."""
    spread = np.ptp(matrix, axis=0)
    level = np.maximum(1.0, np.abs(matrix).max(axis=0))
    return bool((spread <= CONSTANT_TOLERANCE * level).all())


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


def train_models(windows: pd.DataFrame, **options: Any) -> list[TrainedModel]:
    """One pipeline per (device_id, tag) that can carry one, sorted by key: :func:`fit_sensors` with the same
    keyword options (an unknown one is its TypeError), without the sensors it skips."""
    return fit_sensors(windows, **options)[0]


def fit_sensors(
    windows: pd.DataFrame,
    *,
    nu: float = 0.02,
    min_rows: int = 30,
    threshold_mads: float | None = None,
    features: str = feature_sets.WINDOW_V1,
    adaptive: bool = DEFAULT_ADAPTIVE_NU,
    false_alarm_rate: float | None = None,
) -> tuple[list[TrainedModel], list[Skipped]]:
    """One pipeline per (device_id, tag), sorted by key, and the sensors skipped with their reason.

    ``false_alarm_rate``: fit on the earlier windows, threshold calibrated on the latest ``CALIBRATION_SHARE``
    (:func:`conformal_threshold`). Else ``threshold_mads``: threshold from the training decision values
    (:func:`calibrated_threshold`); neither: scikit-learn's ``predict`` (threshold 0). ``features``: the feature
    set (a set with derived columns needs them in ``windows``: ``features.add_features``). ``adaptive``: each
    sensor's nu from its own windows (:func:`adaptive_nu`, at least ``nu``; the default), else ``nu`` for all.
    A sensor with fewer than ``min_rows`` windows (``too_few_windows``; with a calibration, the fit part needs
    ``min_rows`` too) or an input that does not vary over the windows it would be fit on (``constant_history``) is
    skipped.
    """
    feature_sets.columns(features)  # an unknown set fails before any fit
    if false_alarm_rate is not None and threshold_mads is not None:
        raise ValueError("give false_alarm_rate or threshold_mads, not both")
    if false_alarm_rate is not None and not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be between 0 and 1, got {false_alarm_rate}")
    trained, skipped = [], []
    for (device_id, tag), rows in windows.groupby(["device_id", "tag"], sort=True, observed=True):
        if false_alarm_rate is not None:  # the calibration windows are the latest
            rows = rows.sort_values("window_end", kind="stable")
        matrix = feature_sets.feature_matrix(rows, features)
        held = int(np.floor(CALIBRATION_SHARE * len(rows))) if false_alarm_rate is not None else 0
        reason = None
        if len(rows) - held < min_rows or (false_alarm_rate is not None and held < 1):
            reason = "too_few_windows"
        elif is_constant(matrix[: len(rows) - held]):  # what the model is fit on, without the calibration part
            reason = "constant_history"
        if reason is not None:
            skipped.append(Skipped(str(device_id), str(tag), reason, len(rows)))
            continue
        fit_part = matrix[: len(rows) - held]
        sensor_nu = adaptive_nu(fit_part, nu) if adaptive else nu
        pipeline = fit_pipeline(fit_part, nu=sensor_nu)
        arrays = arrays_of(pipeline)
        rate = None
        if false_alarm_rate is not None:
            arrays.threshold, rate = conformal_threshold(
                pipeline.decision_function(matrix[len(fit_part) :]), false_alarm_rate, arrays
            )
        else:
            arrays.threshold = calibrated_threshold(pipeline.decision_function(fit_part), threshold_mads)
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
                flagged_share=float((pipeline.decision_function(matrix) <= arrays.threshold).mean()),
                nu=sensor_nu,
                false_alarm_rate=rate,
                calibration_windows=held,
            )
        )
    return trained, skipped
