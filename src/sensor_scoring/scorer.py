"""Vectorised scoring of many sensors' windows at once: ``score(windows, models) -> DataFrame``.

Pure compute, no I/O. The decision function is the one libsvm evaluates for an RBF OneClassSVM after a
StandardScaler: ``sum_i dual_i * exp(-gamma * |x_scaled - sv_i|^2) + intercept``, and a window is an
anomaly where scikit-learn's ``predict`` says -1, i.e. where that sum is not above zero (not above the model's
threshold, for a model whose threshold was calibrated at training: ``models.fitting.conformal_threshold``, which
places it just below the calibration value it must stay under, so windows tied with that value are not flagged).

The exponent is expanded as ``-gamma * (|x|^2 + |sv|^2 - 2 x.sv)`` (the rounding this adds is ~1e-15 on
the scores, far inside the 1e-9 parity with scikit-learn the tests hold) and folded into one small matrix
product per block of rows, ``[2g x, 1, -g |x|^2] . [sv, -g |sv|^2, 1]``, so the work per block is that
product, one vectorised ``exp`` and a matrix-vector product with the dual coefficients, never a
(rows x support vectors x features) temporary. Each model's rows are cut into blocks of at most
``BLOCK_ROWS``; blocks sorted by support-vector count are stacked into batches padded to their widest model
(padding carries zero weight), and a batch's (blocks x block rows x support vectors) temporary stays within
``ELEMENT_BUDGET`` elements, so one large model neither slows nor bloats the rest of the shard.

The input of each model is its feature set's columns (``sensor_scoring.features``), which every model of one call
shares: a call scores one model version's models.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sensor_scoring import features as feature_sets

#: Elements (float64) of the largest temporary a batch may allocate: 128k elements is 1 MB, about a core's cache.
ELEMENT_BUDGET = 131_072
#: Rows of one model scored together; a sensor's hour (60 windows) is one block.
BLOCK_ROWS = 64
#: Where g (|x|^2 + |sv|^2) exceeds this, a row's kernel exponents come from differences: the expansion's rounding
#: error is about 1e-16 of it, so below this bound scores stay within 1e-10 of scikit-learn's.
EXPANSION_LIMIT = 1e5
#: The exponent of a padding lane: exp of it is 0, and it stays finite (no inf x 0).
NO_KERNEL = -1e300


@dataclass
class ModelArrays:
    """The fitted numbers of one pipeline: everything ``decision_function`` needs."""

    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    support_vectors: np.ndarray  # (S, F), in scaled space
    dual_coef: np.ndarray  # (S,)
    intercept: float
    gamma: float
    #: a window is an anomaly where its decision value is <= threshold: 0 is scikit-learn's ``predict``; a model
    #: trained with ``false_alarm_rate`` has one calibrated on held-back windows (``fitting.conformal_threshold``),
    #: one trained with ``threshold_mads`` on its training decision values (<= 0)
    threshold: float = 0.0
    #: the feature set (``sensor_scoring.features``) the model was trained on: what the scorer feeds it. Not hashed:
    #: it is the version's (manifest and index, the index hashed in the manifest), not the pack's
    features: str = feature_sets.WINDOW_V1

    def digest(self) -> str:
        """SHA-256 over a canonical byte layout, so the same model always hashes the same (a model without a
        calibrated threshold hashes as before thresholds existed)."""
        h = hashlib.sha256()
        scalars = [self.intercept, self.gamma] + ([self.threshold] if self.threshold != 0.0 else [])
        for part in (
            self.mean,
            self.scale,
            self.support_vectors,
            self.dual_coef,
            np.array(scalars),
        ):
            arr = np.ascontiguousarray(part, dtype="<f8")
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        return h.hexdigest()


def decision_function(features: np.ndarray, model_index: np.ndarray, models: list[ModelArrays]) -> np.ndarray:
    """Decision value of each row under the model ``models[model_index[row]]`` (all models of one width)."""
    widths = {len(m.mean) for m in models}
    if len(widths) > 1:
        raise ValueError(f"models of different input widths {sorted(widths)} cannot be scored together")
    n_feat = widths.pop() if widths else features.shape[-1]
    if features.ndim != 2 or features.shape[1] != n_feat:
        raise ValueError(f"features must be (rows, {n_feat}), got {features.shape}")
    if len(features) != len(model_index):
        raise ValueError("features and model_index differ in length")
    out = np.empty(len(features))
    if len(features) == 0:
        return out
    if not models or model_index.min() < 0 or model_index.max() >= len(models):
        raise IndexError("model_index points outside the models given")
    stacked = _Stacked(models)
    row_order = np.argsort(model_index, kind="stable")
    rows_of = np.bincount(model_index, minlength=len(models))
    block_rows = int(min(BLOCK_ROWS, rows_of.max()))
    # Blocks: each model's rows (in row_order) cut into pieces of at most block_rows.
    blocks_of = -(-rows_of // block_rows)
    block_model = np.repeat(np.arange(len(models)), blocks_of)
    first_block = np.concatenate([[0], np.cumsum(blocks_of)[:-1]])
    row_start = np.concatenate([[0], np.cumsum(rows_of)[:-1]])
    piece = np.arange(len(block_model)) - first_block[block_model]
    block_start = row_start[block_model] + piece * block_rows
    block_len = np.minimum(block_rows, rows_of[block_model] - piece * block_rows)
    by_width = np.argsort(stacked.widths[block_model], kind="stable")
    sorted_widths = stacked.widths[block_model[by_width]].tolist()  # ascending; plain ints keep the loop cheap
    start = 0
    while start < len(by_width):
        # Widths ascend, so a batch's width is its last block's: grow while the temporary fits the budget.
        stop = start + 1
        while stop < len(by_width) and (stop - start + 1) * block_rows * sorted_widths[stop] <= ELEMENT_BUDGET:
            stop += 1
        picked = by_width[start:stop]
        _score_batch(
            features, row_order, block_model[picked], block_start[picked], block_len[picked], block_rows, stacked, out
        )
        start = stop
    return out


class _Stacked:
    """All models' numbers in flat arrays, so a batch gathers them by index instead of a Python loop."""

    def __init__(self, models: list[ModelArrays]) -> None:
        n_feat = len(models[0].mean)
        self.mean = np.concatenate([m.mean for m in models]).reshape(-1, n_feat)
        self.scale = np.concatenate([m.scale for m in models]).reshape(-1, n_feat)
        self.gamma = np.array([m.gamma for m in models])
        self.intercept = np.array([m.intercept for m in models])
        self.widths = np.array([len(m.dual_coef) for m in models])
        self.sv_start = np.concatenate([[0], np.cumsum(self.widths)[:-1]])
        # each ends with the padding lanes' entry (index ``padding``): a zero support vector of zero weight
        self.sv = np.concatenate([*(np.ravel(m.support_vectors) for m in models), np.zeros(n_feat)]).reshape(-1, n_feat)
        self.dual = np.concatenate([*(m.dual_coef for m in models), [0.0]])
        # Each support vector as [sv, -g |sv|^2, 1], the partner of a row's [2g x, 1, -g |x|^2] (see _score_batch).
        # The last row is the padding lanes' partner: its exponent is NO_KERNEL whatever the row, so a padding lane
        # contributes exp(NO_KERNEL) x 0 = 0. Pointing padding at a real support vector instead gives an exponent
        # that is no squared distance (another model's gamma and norm) and can overflow: inf x 0 is NaN.
        self.padding = len(self.sv) - 1
        norms = np.einsum("sf,sf->s", self.sv[:-1], self.sv[:-1])
        self.sv_aug = np.zeros((len(self.sv), n_feat + 2))
        self.sv_aug[:-1, :n_feat] = self.sv[:-1]
        self.sv_aug[:-1, n_feat] = -np.repeat(self.gamma, self.widths) * norms
        self.sv_aug[:-1, n_feat + 1] = 1.0
        self.sv_aug[-1, n_feat] = NO_KERNEL
        #: each model's largest squared support-vector norm: bounds the expansion's rounding error (_score_batch)
        self.sv_norm_max = np.maximum.reduceat(norms, self.sv_start)


def _score_batch(
    features: np.ndarray,
    row_order: np.ndarray,
    block_model: np.ndarray,
    block_start: np.ndarray,
    block_len: np.ndarray,
    block_rows: int,
    stacked: _Stacked,
    out: np.ndarray,
) -> None:
    """Score a batch of blocks, each padded to ``block_rows`` rows and the batch's widest model."""
    width = int(stacked.widths[block_model].max())
    lane = np.arange(block_rows)
    real_row = lane < block_len[:, None]
    rows = row_order[block_start[:, None] + np.where(real_row, lane, 0)]  # padding repeats the block's first row
    col = np.arange(width)
    real_sv = col < stacked.widths[block_model][:, None]
    sv_index = np.where(real_sv, stacked.sv_start[block_model][:, None] + col, stacked.padding)
    dual = stacked.dual[sv_index]  # padding weighs 0
    n_feat = features.shape[1]
    # A window of astronomically large values overflows the expansion (inf, then inf - inf): such a row is a far
    # one, its exponents recomputed from differences below, so the intermediate steps' warnings say nothing.
    with np.errstate(over="ignore", invalid="ignore"):
        x = features[rows]  # (blocks, block_rows, F), scaled as StandardScaler.transform does: subtract, then divide
        x -= stacked.mean[block_model][:, None, :]
        x /= stacked.scale[block_model][:, None, :]
        gamma = stacked.gamma[block_model][:, None]
        # [2g x, 1, -g |x|^2] . [sv, -g |sv|^2, 1] = -g (|x|^2 + |sv|^2 - 2 x.sv) = -g |x - sv|^2, the exponent of
        # every (row, support vector) pair from one small matrix product per block, no other pass over the block.
        aug = np.empty((len(block_model), block_rows, n_feat + 2))
        np.multiply(x, 2.0 * gamma[:, :, None], out=aug[:, :, :n_feat])
        aug[:, :, n_feat] = 1.0
        squared = np.einsum("brf,brf->br", x, x)
        aug[:, :, n_feat + 1] = -gamma * squared
        work = np.matmul(aug, stacked.sv_aug[sv_index].transpose(0, 2, 1))  # (blocks, block_rows, width)
        # The expansion's rounding error grows with g (|x|^2 + |sv|^2): where that is large (a far-out window, an
        # extreme gamma) the exponent is taken from the differences instead, as libsvm computes it, so it never
        # turns positive and overflows.
        far = (gamma * (squared + stacked.sv_norm_max[block_model][:, None]) > EXPANSION_LIMIT) & real_row
        if far.any():
            _exact_exponents(x, far, sv_index, gamma, stacked, work)
        np.exp(work, out=work)
        values = np.matmul(work, dual[:, :, None])[:, :, 0] + stacked.intercept[block_model][:, None]
    out[rows[real_row]] = values[real_row]  # a padding row repeating a far-out one may be NaN: never written


def _exact_exponents(
    x: np.ndarray, far: np.ndarray, sv_index: np.ndarray, gamma: np.ndarray, stacked: _Stacked, work: np.ndarray
) -> None:
    """``work``'s exponents -g |x - sv|^2 of the ``far`` rows, from the differences (padding lanes: NO_KERNEL), a
    few rows at a time within the element budget."""
    blocks, rows = np.nonzero(far)
    width, n_feat = sv_index.shape[1], x.shape[2]
    step = max(1, ELEMENT_BUDGET // (width * n_feat))
    for at in range(0, len(blocks), step):
        b, r = blocks[at : at + step], rows[at : at + step]
        index = sv_index[b]
        diff = x[b, r][:, None, :] - stacked.sv[index]  # (k, width, F)
        exponent = -gamma[b] * np.einsum("kwf,kwf->kw", diff, diff)
        work[b, r] = np.where(index == stacked.padding, NO_KERNEL, exponent)


def sensor_codes(windows: pd.DataFrame) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Each row's sensor as a code into the sorted list of distinct (device_id, tag)."""
    codes, uniques = pd.MultiIndex.from_frame(windows[["device_id", "tag"]]).factorize(sort=True)
    return codes.astype(np.int64), [tuple(key) for key in uniques]


def score(windows: pd.DataFrame, models: dict[tuple[str, str], ModelArrays]) -> pd.DataFrame:
    """Score every window; adds ``score`` and ``is_anomaly``.

    Raises ``KeyError`` naming the sensors without a model: deciding what to do with them (quarantine)
    is the caller's job, not something to hide here. The windows carry the columns of the models' feature set
    (``features.add_features`` derives those that are not the window's own).
    """
    codes, keys = sensor_codes(windows)
    missing = [key for key in keys if key not in models]
    if missing:
        raise KeyError(f"no model for {len(missing)} sensor(s), e.g. {missing[:3]}")
    sets = sorted({models[k].features for k in keys})
    if len(sets) > 1:
        raise ValueError(f"models of several feature sets {sets} cannot be scored together: score each version alone")
    matrix = feature_sets.feature_matrix(windows, sets[0]) if sets else np.empty((0, 0))
    values = decision_function(matrix, codes, [models[k] for k in keys])
    out = windows.copy()
    out["score"] = values
    thresholds = np.array([models[k].threshold for k in keys])  # 0 unless calibrated at training
    out["is_anomaly"] = values <= thresholds[codes]
    return out
