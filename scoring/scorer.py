"""Vectorised scoring of many sensors' windows at once: ``score(windows, models) -> DataFrame``.

Pure compute, no I/O. The decision function is the one libsvm evaluates for an RBF OneClassSVM after a
StandardScaler: ``sum_i dual_i * exp(-gamma * |x_scaled - sv_i|^2) + intercept``, and a window is an
anomaly where scikit-learn's ``predict`` says -1, i.e. where that sum is not above zero. Sensors are batched:
their support vectors are padded to a common count (padding has zero weight) and rows are scored in chunks,
so memory stays bounded by ``chunk_rows x max_support_vectors x features``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.config import FEATURES
from scoring.models import ModelArrays, feature_matrix

#: Rows scored per numpy batch; bounds the (rows, support vectors, features) temporary.
CHUNK_ROWS = 4096


def decision_function(features: np.ndarray, model_index: np.ndarray, models: list[ModelArrays]) -> np.ndarray:
    """Decision value of each row under the model ``models[model_index[row]]``."""
    if features.ndim != 2 or features.shape[1] != len(FEATURES):
        raise ValueError(f"features must be (rows, {len(FEATURES)}), got {features.shape}")
    if len(features) != len(model_index):
        raise ValueError("features and model_index differ in length")
    if len(features) == 0:
        return np.empty(0)
    if not models or model_index.min() < 0 or model_index.max() >= len(models):
        raise IndexError("model_index points outside the models given")
    width = max(len(m.dual_coef) for m in models)
    n_feat = features.shape[1]
    mean = np.stack([m.mean for m in models])
    scale = np.stack([m.scale for m in models])
    gamma = np.array([m.gamma for m in models])
    intercept = np.array([m.intercept for m in models])
    sv = np.zeros((len(models), width, n_feat))
    dual = np.zeros((len(models), width))
    for i, m in enumerate(models):
        sv[i, : len(m.dual_coef)] = m.support_vectors
        dual[i, : len(m.dual_coef)] = m.dual_coef
    out = np.empty(len(features))
    for start in range(0, len(features), CHUNK_ROWS):
        idx = model_index[start:start + CHUNK_ROWS]
        scaled = features[start:start + CHUNK_ROWS] - mean[idx]
        scaled /= scale[idx]
        diff = scaled[:, None, :] - sv[idx]
        sq = np.einsum("rsf,rsf->rs", diff, diff)
        kernel = np.exp(-gamma[idx, None] * sq)
        out[start:start + CHUNK_ROWS] = np.einsum("rs,rs->r", dual[idx], kernel) + intercept[idx]
    return out


def score(windows: pd.DataFrame, models: dict[tuple[str, str], ModelArrays]) -> pd.DataFrame:
    """Score every window whose (device_id, tag) has a model; adds ``score`` and ``is_anomaly``.

    Raises ``KeyError`` naming the sensors without a model: deciding what to do with them (quarantine)
    is the caller's job, not something to hide here.
    """
    keys = list(zip(windows["device_id"], windows["tag"]))
    missing = sorted(set(keys) - models.keys())
    if missing:
        raise KeyError(f"no model for {len(missing)} sensor(s), e.g. {missing[:3]}")
    order = sorted(set(keys))
    position = {key: i for i, key in enumerate(order)}
    model_index = np.fromiter((position[k] for k in keys), dtype=np.int64, count=len(keys))
    values = decision_function(feature_matrix(windows), model_index, [models[k] for k in order])
    out = windows.copy()
    out["score"] = values
    out["is_anomaly"] = values <= 0.0
    return out
