"""Vectorised scoring of many sensors' windows at once: ``score(windows, models) -> DataFrame``.

Pure compute, no I/O. The decision function is the one libsvm evaluates for an RBF OneClassSVM after a
StandardScaler: ``sum_i dual_i * exp(-gamma * |x_scaled - sv_i|^2) + intercept``, and a window is an
anomaly where scikit-learn's ``predict`` says -1, i.e. where that sum is not above zero (not above the model's
threshold, for a model whose threshold was calibrated at training: ``models.calibrated_threshold``).

Sensors are scored in batches: models sorted by support-vector count are grouped so that padding them to a
common count wastes little, and each batch's (rows x support vectors x features) temporary stays within
``ELEMENT_BUDGET`` elements, so one large model neither slows nor bloats the rest of the shard.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sensor_scoring.contracts import FEATURES
from sensor_scoring.models import ModelArrays, feature_matrix

#: Elements (float64) of the largest temporary a batch may allocate: 2M elements is 16 MB.
ELEMENT_BUDGET = 2_000_000


def decision_function(features: np.ndarray, model_index: np.ndarray, models: list[ModelArrays]) -> np.ndarray:
    """Decision value of each row under the model ``models[model_index[row]]``."""
    if features.ndim != 2 or features.shape[1] != len(FEATURES):
        raise ValueError(f"features must be (rows, {len(FEATURES)}), got {features.shape}")
    if len(features) != len(model_index):
        raise ValueError("features and model_index differ in length")
    out = np.empty(len(features))
    if len(features) == 0:
        return out
    if not models or model_index.min() < 0 or model_index.max() >= len(models):
        raise IndexError("model_index points outside the models given")
    n_feat = features.shape[1]
    widths = np.array([len(m.dual_coef) for m in models])
    rows_of = np.bincount(model_index, minlength=len(models))
    row_order = np.argsort(model_index, kind="stable")
    row_start = np.concatenate([[0], np.cumsum(rows_of)])
    used = np.flatnonzero(rows_of)
    batch: list[int] = []
    batch_rows = batch_width = 0
    for m in used[np.argsort(widths[used], kind="stable")]:
        width, rows = max(batch_width, widths[m]), batch_rows + rows_of[m]
        if batch and rows * width * n_feat > ELEMENT_BUDGET:
            _score_batch(features, batch, models, rows_of, row_order, row_start, out)
            batch, width, rows = [], widths[m], rows_of[m]
        batch.append(int(m))
        batch_rows, batch_width = rows, width
    _score_batch(features, batch, models, rows_of, row_order, row_start, out)
    return out


def _score_batch(
    features: np.ndarray,
    batch: list[int],
    models: list[ModelArrays],
    rows_of: np.ndarray,
    row_order: np.ndarray,
    row_start: np.ndarray,
    out: np.ndarray,
) -> None:
    """Score the rows of the models in ``batch``, padded to their widest support-vector count."""
    picked = [models[m] for m in batch]
    width = max(len(m.dual_coef) for m in picked)
    n_feat = features.shape[1]
    sv = np.zeros((len(batch), width, n_feat))
    dual = np.zeros((len(batch), width))  # padding carries zero weight
    for i, m in enumerate(picked):
        sv[i, : len(m.dual_coef)] = m.support_vectors
        dual[i, : len(m.dual_coef)] = m.dual_coef
    mean = np.stack([m.mean for m in picked])
    scale = np.stack([m.scale for m in picked])
    gamma = np.array([m.gamma for m in picked])
    intercept = np.array([m.intercept for m in picked])
    rows = np.concatenate([row_order[row_start[m] : row_start[m + 1]] for m in batch])
    local = np.repeat(np.arange(len(batch)), rows_of[batch])
    step = max(1, ELEMENT_BUDGET // (width * n_feat))
    for start in range(0, len(rows), step):
        r, j = rows[start : start + step], local[start : start + step]
        scaled = features[r] - mean[j]
        scaled /= scale[j]
        diff = scaled[:, None, :] - sv[j]
        kernel = np.exp(-gamma[j, None] * np.einsum("rsf,rsf->rs", diff, diff))
        out[r] = np.einsum("rs,rs->r", dual[j], kernel) + intercept[j]


def sensor_codes(windows: pd.DataFrame) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Each row's sensor as a code into the sorted list of distinct (device_id, tag)."""
    codes, uniques = pd.MultiIndex.from_frame(windows[["device_id", "tag"]]).factorize(sort=True)
    return codes.astype(np.int64), [tuple(key) for key in uniques]


def score(windows: pd.DataFrame, models: dict[tuple[str, str], ModelArrays]) -> pd.DataFrame:
    """Score every window; adds ``score`` and ``is_anomaly``.

    Raises ``KeyError`` naming the sensors without a model: deciding what to do with them (quarantine)
    is the caller's job, not something to hide here.
    """
    codes, keys = sensor_codes(windows)
    missing = [key for key in keys if key not in models]
    if missing:
        raise KeyError(f"no model for {len(missing)} sensor(s), e.g. {missing[:3]}")
    values = decision_function(feature_matrix(windows), codes, [models[k] for k in keys])
    out = windows.copy()
    out["score"] = values
    thresholds = np.array([models[k].threshold for k in keys])  # 0 unless calibrated at training
    out["is_anomaly"] = values <= thresholds[codes]
    return out
