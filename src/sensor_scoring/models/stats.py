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

Health reads a version's table as a :class:`Reference` (:func:`read_reference`): per sensor only the numbers of the
hour of day it judges, in plain arrays, read ``READ_BATCH_ROWS`` sensors at a time. The table as pandas holds
every sensor's 24 hourly histograms as Python objects (about 7 KiB a sensor: 2 GiB at 300k sensors); the
reference holds about 300 bytes a sensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sensor_scoring.features import feature_matrix
from sensor_scoring.models.fitting import TrainedModel
from sensor_scoring.scorer import ModelArrays, decision_function
from sensor_scoring.storage import Storage, iter_parquet, parquet_bytes, parquet_frame

#: Bins of the reference histogram: ten deciles of the training decision values.
BINS = 10
#: The file beside ``models.parquet`` in a version's folder.
STATS_FILE = "training_stats.parquet"
#: Smoothing of empty bins in PSI (a bin with no window would make the logarithm infinite).
PSI_EPSILON = 1e-4
#: Training windows of one hour of day below which health compares with the whole range instead.
MIN_HOURLY_WINDOWS = 30
KEYS = ["device_id", "tag"]
#: Sensors' statistics read at a time into a :class:`Reference` (24 hourly histograms a sensor: decoding these
#: nested lists costs far more than their values; 8,192 sensors a batch peaked 100 MiB above 1,024).
READ_BATCH_ROWS = 1024
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


@dataclass(frozen=True)
class Reference:
    """What health compares one hour of a version's sensors with: row ``i`` of every array is sensor
    ``keys[i]``'s. ``edges``: its inner bin edges, padded to ``BINS - 1`` with +inf (a padded bin is empty on both
    sides, so it adds nothing to PSI); ``counts``: its reference histogram over them (zero-padded to ``BINS``),
    the training windows of the hour of day judged where it had at least ``MIN_HOURLY_WINDOWS`` of them, else its
    whole range (and always for statistics without hours), and ``shares`` the flagged share of the same windows;
    ``train_rows`` and ``false_alarm_rate`` (NaN: not calibrated, or statistics from before it was recorded)."""

    keys: pd.MultiIndex
    edges: np.ndarray
    counts: np.ndarray
    shares: np.ndarray
    train_rows: np.ndarray
    false_alarm_rate: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_batches(cls, batches: Iterable[pa.RecordBatch], hour_of_day: int | None) -> Reference:
        """From a statistics table's record batches (``COLUMNS``; older tables lack some), batch by batch."""
        parts = [_reference_part(batch, hour_of_day) for batch in batches if batch.num_rows]
        if not parts:
            empty = pd.MultiIndex.from_arrays([pd.Series([], dtype=str), pd.Series([], dtype=str)], names=KEYS)
            return cls(empty, np.zeros((0, BINS - 1)), np.zeros((0, BINS)), *(np.zeros(0) for _ in range(3)))
        devices = pd.concat([p.pop("device_id") for p in parts], ignore_index=True)
        tags = pd.concat([p.pop("tag") for p in parts], ignore_index=True)
        keys = pd.MultiIndex.from_arrays([devices, tags], names=KEYS)
        return cls(keys, **{name: np.concatenate([p[name] for p in parts]) for name in parts[0]})

    @classmethod
    def from_frame(cls, table: pd.DataFrame, hour_of_day: int | None) -> Reference:
        """From a statistics table as :func:`read` returns it (or as a test writes one)."""
        return cls.from_batches(pa.Table.from_pandas(table, preserve_index=False).to_batches(), hour_of_day)


def read_reference(storage: Storage, container: str, version: str, hour_of_day: int | None) -> Reference | None:
    """A version's :class:`Reference` for ``hour_of_day`` (None: the whole range), read ``READ_BATCH_ROWS``
    sensors at a time; None for a version registered without statistics."""
    batches = iter_parquet(storage, container, stats_path(version), None, READ_BATCH_ROWS)
    first = next(batches, None)
    if first is None:
        return None
    return Reference.from_batches(_chain(first, batches), hour_of_day)


def _chain(first: pa.RecordBatch, rest: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
    yield first
    yield from rest


def _padded(column: pa.Array, width: int, fill: float) -> np.ndarray:
    """A list column as a (rows, width) float matrix: each row's values, then ``fill`` (a null list: all fill)."""
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(lengths) and lengths.max() > width:
        raise ValueError(f"a statistics list of {int(lengths.max())} values where at most {width} are expected")
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(float)
    out = np.full((len(column), width), fill)
    starts = np.cumsum(lengths) - lengths
    out[np.repeat(np.arange(len(column)), lengths), np.arange(len(values)) - np.repeat(starts, lengths)] = values
    return out


def _at_hour(column: pa.Array, rows: np.ndarray, hour_of_day: int) -> pa.Array:
    """Element ``hour_of_day`` of the lists of ``column`` at ``rows`` (each of which has 24)."""
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    return pc.list_flatten(column).take(pa.array(starts[rows] + hour_of_day))


def _reference_part(batch: pa.RecordBatch, hour_of_day: int | None) -> dict[str, object]:
    """One batch of sensors' :class:`Reference` arrays (and their keys as pandas series)."""
    names = batch.schema.names
    rows = batch.num_rows
    counts = _padded(batch.column(names.index("counts")), BINS, 0.0)
    shares = batch.column(names.index("train_flagged_share")).to_numpy(zero_copy_only=False).astype(float)
    if hour_of_day is not None and "hourly_counts" in names and "hourly_flagged_share" in names:
        hourly = batch.column(names.index("hourly_counts"))
        full = np.flatnonzero(pc.fill_null(pc.list_value_length(hourly), 0).to_numpy(zero_copy_only=False) == 24)
        if len(full):
            at = _padded(_at_hour(hourly, full, hour_of_day), BINS, 0.0)
            enough = at.sum(axis=1) >= MIN_HOURLY_WINDOWS
            counts[full[enough]] = at[enough]
            share = _at_hour(batch.column(names.index("hourly_flagged_share")), full[enough], hour_of_day)
            shares[full[enough]] = share.to_numpy(zero_copy_only=False).astype(float)
    calibrated = (
        batch.column(names.index("false_alarm_rate")).to_numpy(zero_copy_only=False).astype(float)
        if "false_alarm_rate" in names
        else np.full(rows, np.nan)
    )
    return {
        "device_id": batch.column(names.index("device_id")).to_pandas(),
        "tag": batch.column(names.index("tag")).to_pandas(),
        "edges": _padded(batch.column(names.index("edges")), BINS - 1, np.inf),
        "counts": counts,
        "shares": shares,
        "train_rows": batch.column(names.index("train_rows")).to_numpy(zero_copy_only=False).astype(float),
        "false_alarm_rate": calibrated,
    }
