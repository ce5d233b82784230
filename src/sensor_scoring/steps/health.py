"""model_health: after commit, how each sensor's model did in each committed hour, against its training.

Cheap by construction: it reads only the hour's two committed partitions (predictions and quarantine, a few
columns), the neighbouring hours' health partitions (for consecutive drifting hours) and the training statistics of
the model versions the hour used (``models.stats``). Its memory does not grow with the hour: the partitions are
read ``BATCH_ROWS`` rows at a time into per-sensor sums (:class:`HourTally`), so it holds tables of one row per
sensor and one batch of windows, never the hour's windows. Per sensor and hour:

- ``anomaly_rate`` (anomalies / windows scored) against ``expected_rate``: the larger of the model's calibrated
  false-alarm rate (the share of normal windows held back from its fit that it may flag) and
  ``train_flagged_share``, the share its model flagged on its own training windows of the same hour of day (of the
  whole range where training saw too few windows at that hour of day: ``stats.MIN_HOURLY_WINDOWS``): a daily cycle
  makes one hour unlike a whole day;
- ``psi``, the population stability index of the hour's decision values over the training deciles (the same hour
  of day's histogram where there is one, as above);
- ``quarantine_share``, quarantined / (scored + quarantined) of the sensor's windows;
- ``drifting``: the hour's anomalies are both improbable and many for a healthy sensor: ``p_value``, the chance of
  at least as many among its windows at the expected rate (binomial), is at most ``SIGNIFICANCE``, and the anomaly
  rate is at least the expected rate + ``SCORING_DRIFT_ANOMALY_EXCESS`` (flags of a healthy sensor come in runs, so
  significance alone marks a wandering baseline's busy hour); or (only when ``SCORING_DRIFT_PSI`` is above 0: 0 is
  off) PSI >= it with at least ``MIN_WINDOWS`` windows. The test replaces a minimum count of windows: a sensor
  reporting every 20 minutes is judged on its three windows. An hour with too few of a sensor's windows to be
  improbable even if all were flagged (one window, at a rate above ``SIGNIFICANCE``: a sensor reporting hourly or
  less often) is judged together with the sensor's windows of the hours before it, of the same model version,
  back to ``POOL_HOURS`` hours in all, as soon as the pooled windows can be improbable; only an hour with an
  anomaly of its own is marked. ``judged_windows`` says how many windows the test judged.
- ``drift_hours``: the consecutive drifting hours ending at this one, over the stored health partitions: the count
  of the sensor's last earlier hour with a scored window plus one. An hour in which the sensor had no scored window
  (it reports every few hours) neither extends nor breaks its run, back to ``POOL_HOURS`` hours; an hour without a
  health partition breaks it. After writing an hour the following hours are judged again while they change, at
  least ``POOL_HOURS`` - 1 of them (:func:`_carry_forward`), so the counts, and the alerts, do not depend on the
  order hours are scored or re-scored in.
- ``status`` ``model lost``: the sensor's windows were quarantined ``no_model`` although it had a model the hour
  before, the same hour the day before, or in the production version before the one scoring the hour (a promotion
  that dropped it). Such an hour is not a quiet success: the manifest counts them (``models_lost``) and the DAG
  sends a ``models_lost`` alert. A sensor that never had a model stays ``not scored``, unalerted.

A sensor whose version was registered without statistics gets ``status = "no training statistics"`` and no PSI:
health never fails for it. Written as ``health/date=YYYY-MM-DD/hour=HH/part-00000.parquet`` (``layout.Partition``)
with ``_manifest.json`` (:class:`HealthManifest`), the pre-aggregated source of the fleet page and the report.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sensor_scoring import layout, settings as config, storage as st
from sensor_scoring.contracts import REASON_COLUMN
from sensor_scoring.models import stats as model_stats
from sensor_scoring.records import Record
from sensor_scoring.runs.common import names_storage_outages
from sensor_scoring.runs.scope import Scope
from sensor_scoring.storage import Storage

log = logging.getLogger(__name__)

#: Fewer scored windows than this in an hour say too little to judge their PSI.
MIN_WINDOWS = 10
#: The chance, for a healthy sensor whose windows are flagged independently at its expected rate, that an hour is
#: marked drifting: one sensor-hour in a thousand, stated before any source was measured (docs/operating.md).
SIGNIFICANCE = 0.001
#: Hours, this one included, whose windows a thin hour (one window a sensor) is judged with; also how far back a
#: run of drifting hours looks for the sensor's last hour with a window. Six: a sensor reporting every two hours
#: has three windows in them, enough for the test at the calibrated rates (0.02**2 <= SIGNIFICANCE).
POOL_HOURS = 6
#: The columns of an earlier hour's health rows that judging an hour reads.
EARLIER_COLUMNS = ["device_id", "tag", "model_version", "windows", "anomalies", "drift_hours"]
#: Sensors named in a manifest (and so in an alert); the partition lists them all.
MAX_LISTED = 100
STATUS_OK = "ok"
STATUS_NO_STATS = "no training statistics"
STATUS_NOT_SCORED = "not scored"
STATUS_MODEL_LOST = "model lost"
#: Hours after a re-scored hour whose drift counts are recomputed at most (a run longer than this is cut there).
MAX_CARRY_HOURS = 24 * 7
#: Rows of a committed partition read at a time: with the per-sensor tables, what sets the step's memory (a
#: batch of the five columns read is a few MiB), whatever the hour holds.
BATCH_ROWS = 65_536
KEYS = ["device_id", "tag"]
PREDICTION_COLUMNS = ["device_id", "tag", "score", "is_anomaly", "model_version"]
QUARANTINE_COLUMNS = ["device_id", "tag", REASON_COLUMN]

#: An hour's earlier health rows: ``earlier(1)`` the hour before's, None where an hour has no health partition.
Earlier = Callable[[int], "pd.DataFrame | None"]

HEALTH_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("tag", pa.string()),
        ("model_version", pa.string()),
        ("windows", pa.int64()),
        ("anomalies", pa.int64()),
        ("anomaly_rate", pa.float64()),
        ("train_flagged_share", pa.float64()),
        ("expected_rate", pa.float64()),
        ("p_value", pa.float64()),
        ("judged_windows", pa.int64()),
        ("psi", pa.float64()),
        ("score_mean", pa.float64()),
        ("quarantined", pa.int64()),
        ("quarantine_share", pa.float64()),
        ("drifting", pa.bool_()),
        ("drift_hours", pa.int64()),
        ("status", pa.string()),
    ]
)


@dataclasses.dataclass(frozen=True)
class Thresholds(Record):
    """When a sensor drifts, and for how many hours before it is alerted (settings ``SCORING_DRIFT_*``)."""

    KIND = "drift thresholds"
    psi: float
    anomaly_excess: float
    hours: int

    @classmethod
    def from_settings(cls, settings: config.Settings | None = None) -> Thresholds:
        s = settings or config.current()
        return cls(psi=s.drift_psi, anomaly_excess=s.drift_anomaly_excess, hours=s.drift_hours)


@dataclasses.dataclass(frozen=True)
class HealthManifest(Record):
    """``_manifest.json`` of an hour's health partition: totals (equal to the partition's sums) and the sensors
    drifting for ``thresholds.hours`` consecutive hours (``alerting``; the first ``MAX_LISTED`` named)."""

    KIND: ClassVar[str] = "health manifest"
    SCHEMA_VERSION: ClassVar[int | None] = 1
    hour: datetime
    run_id: str
    computed_at: datetime
    model_versions: tuple[str, ...]
    thresholds: Thresholds
    sensors: int
    windows: int
    anomalies: int
    quarantined: int
    unattributed_quarantined: int
    no_statistics: int
    drifting: int
    alerting: int
    alerting_sensors: tuple[str, ...]
    quarantine_reasons: dict[str, int]
    #: sensors quarantined ``no_model`` that had a model before (``STATUS_MODEL_LOST``); the first MAX_LISTED named
    models_lost: int = 0
    models_lost_sensors: tuple[str, ...] = ()


@names_storage_outages
def model_health(hour: Scope, thresholds: Thresholds | None = None) -> list[HealthManifest]:
    """Compute and write the health partition of every hour of the run, in order, and recompute the drift counts
    of the hours after each that were written before it. Returns the run's hours' manifests, then those of later
    hours that now have sensors alerting that they had not (so their alert is sent now)."""
    thresholds = thresholds or Thresholds.from_settings()
    stats_cache: dict[tuple[str, int], model_stats.Reference | None] = {}
    stored = _HealthRows(hour.storage, hour.containers.health)
    ours, later = [], {}
    for h in hour.hours:
        # one hour of day's references at a time (a version without statistics is remembered as such)
        stats_cache = {k: v for k, v in stats_cache.items() if v is None or k[1] == h.astimezone(timezone.utc).hour}
        manifest, changed = _hour_health(hour, h, thresholds, stats_cache, stored)
        ours.append(manifest)
        later.update({m.hour: m for m in changed})
    mine = set(hour.hours)
    return ours + [m for h, m in sorted(later.items()) if h not in mine]


class _HealthRows:
    """Hours' health rows as judging an hour looks back at them (``EARLIER_COLUMNS``): read from the health
    partitions once each, or just written. Holds POOL_HOURS hours before the latest asked for, at most."""

    def __init__(self, storage: Storage, container: str) -> None:
        self._storage, self._container = storage, container
        self._rows: dict[datetime, pd.DataFrame | None] = {}

    def get(self, h: datetime) -> pd.DataFrame | None:
        if h not in self._rows:
            path = layout.Partition(h).data
            self._rows[h] = _read_columns(self._storage, self._container, path, EARLIER_COLUMNS)
        return self._rows[h]

    def put(self, h: datetime, rows: pd.DataFrame) -> None:
        """``rows``, just written for hour ``h``; hours more than POOL_HOURS before it are let go."""
        self._rows = {k: v for k, v in self._rows.items() if k >= h - POOL_HOURS * layout.HOUR}
        self._rows[h] = rows[EARLIER_COLUMNS]

    def before(self, h: datetime) -> Earlier:
        """The rows of the hours before ``h``: ``(1)`` the hour before."""
        return lambda back: self.get(h - back * layout.HOUR)


def _read_columns(storage: Storage, container: str, path: str, columns: list[str] | None) -> pd.DataFrame | None:
    """Only ``columns`` of a committed Parquet blob (None: all it has); None when the hour has no such partition."""
    try:
        data = storage.read_bytes(container, path)
    except FileNotFoundError:
        return None
    frame: pd.DataFrame = pq.read_table(io.BytesIO(data), columns=columns).to_pandas()
    return frame


def sensor_health(
    predictions: pd.DataFrame,
    quarantine: pd.DataFrame,
    training: dict[str, pd.DataFrame | None],
    previous: pd.DataFrame | Sequence[pd.DataFrame | None] | None,
    thresholds: Thresholds,
    *,
    hour_of_day: int | None = None,
) -> pd.DataFrame:
    """The health rows of one hour (``HEALTH_SCHEMA``), from its predictions (device_id, tag, score, is_anomaly,
    model_version), its attributed quarantine rows (device_id, tag), the statistics table of each model version
    (None: registered without) and the earlier hours' health rows: the previous hour's (None: no previous hour), or
    a sequence of them, the hour before first (None where an hour has none). ``hour_of_day``: the
    hour's UTC hour, to compare with training at the same time of day where the statistics have it. The frames
    whole, as one batch of :class:`HourTally`: the step itself feeds the tally the partitions batch by batch."""

    def statistics(version: str) -> model_stats.Reference | None:
        table = training.get(version)
        return None if table is None or table.empty else model_stats.Reference.from_frame(table, hour_of_day)

    frames = [previous] if previous is None or isinstance(previous, pd.DataFrame) else list(previous)
    tally = HourTally(statistics)
    tally.add_predictions(predictions)
    tally.add_quarantine(quarantine)
    return tally.rows(lambda back: frames[back - 1] if back <= len(frames) else None, thresholds)


class _VersionBins:
    """One model version's training reference and the hour's decision values counted over its sensors' edges."""

    def __init__(self, reference: model_stats.Reference) -> None:
        self.reference = reference
        self.observed = np.zeros(reference.counts.shape, dtype=np.int64)
        self.row_of_slot = np.zeros(0, dtype=np.int64)  # the reference's row of each tally slot, -1: none

    def add(self, tally: HourTally, slots: np.ndarray, scores: np.ndarray) -> None:
        """Count rows (their sensors' ``slots`` in ``tally``, decision values ``scores``) into their bins."""
        known_slots = len(self.row_of_slot)
        if known_slots < len(tally.devices):  # sensors new to the tally: looked up once each
            new = pd.MultiIndex.from_arrays([tally.devices[known_slots:], tally.tags[known_slots:]])
            self.row_of_slot = np.concatenate([self.row_of_slot, self.reference.keys.get_indexer(new)])
        row_sensor = self.row_of_slot[slots]
        known = row_sensor >= 0
        values, sensor = scores[known], row_sensor[known]
        for start in range(0, len(values), 1_000_000):  # (rows x edges) booleans, a million rows at a time
            part = slice(start, start + 1_000_000)
            bins = (values[part, None] >= self.reference.edges[sensor[part]]).sum(axis=1)
            np.add.at(self.observed, (sensor[part], bins), 1)


class HourTally:
    """Per-sensor sums of one hour's predictions and quarantine rows, added batch by batch in the order they are
    read; what :func:`sensor_health` judges. It holds one row per sensor (and per sensor of each version's
    statistics), never a window: windows scored, anomalies, the scores' mean, the highest model version, each
    version's histogram of decision values over its training edges, rows quarantined, the quarantine reasons
    and the sensors quarantined ``no_model``. ``statistics`` gives a version's training statistics (None:
    registered without) when its first row is met; versions are judged in name order (a sensor with rows of two
    versions in an hour takes the numbers of the later name).

    The mean is summed as pandas' grouped mean sums, Kahan-compensated in row order, so the rows are the same
    bit for bit however the partition is cut into batches (tests/unit/test_health_batches.py)."""

    def __init__(self, statistics: Callable[[str], model_stats.Reference | None]) -> None:
        self._statistics = statistics
        self.seen: set[str] = set()  # every model version of a prediction row
        self.versions: dict[str, _VersionBins] = {}  # those with statistics
        self._version_dtype: object = None
        self._slots: dict[tuple[str, str], int] = {}
        self.devices: list[str] = []  # of each slot
        self.tags: list[str] = []
        self._windows = np.zeros(0, dtype=np.int64)
        self._anomalies = np.zeros(0, dtype=np.int64)
        self._sum = np.zeros(0)
        self._compensation = np.zeros(0)
        self._counted = np.zeros(0, dtype=np.int64)  # scores that are not NaN: the mean's denominator
        self._version = np.full(0, None, dtype=object)
        self._quarantined = np.zeros(0, dtype=np.int64)
        self._key_dtypes: tuple[object, object] | None = None
        self.unattributed = 0
        self.reasons: dict[str, int] = {}
        self.no_model: set[tuple[str, str]] = set()

    def _slots_of(self, devices: pd.Series, tags: pd.Series) -> np.ndarray:
        """Each row's sensor slot; sensors not met before get the next ones (one dictionary lookup a sensor of
        the batch: the rows' keys are factorised as integer pairs first)."""
        if self._key_dtypes is None:
            self._key_dtypes = (devices.dtype, tags.dtype)
        device_codes, device_names = pd.factorize(devices)
        tag_codes, tag_names = pd.factorize(tags)
        codes, pairs = pd.factorize(device_codes.astype(np.int64) * len(tag_names) + tag_codes)
        found = np.empty(len(pairs), dtype=np.int64)
        # one string object a device of the batch and one a tag name for the run: a sensor costs its key tuple
        device_list, tag_list = device_names.tolist(), [sys.intern(t) if isinstance(t, str) else t for t in tag_names]
        for i, pair in enumerate(pairs.tolist()):
            d, t = device_list[pair // len(tag_list)], tag_list[pair % len(tag_list)]
            slot = self._slots.get((d, t))
            if slot is None:
                slot = self._slots[(d, t)] = len(self.devices)
                self.devices.append(d)
                self.tags.append(t)
            found[i] = slot
        self._grow(len(self.devices))
        return found[codes]

    def _grow(self, size: int) -> None:
        if size <= len(self._windows):
            return
        more = max(size, 2 * len(self._windows)) - len(self._windows)
        self._windows = np.concatenate([self._windows, np.zeros(more, dtype=np.int64)])
        self._anomalies = np.concatenate([self._anomalies, np.zeros(more, dtype=np.int64)])
        self._sum = np.concatenate([self._sum, np.zeros(more)])
        self._compensation = np.concatenate([self._compensation, np.zeros(more)])
        self._counted = np.concatenate([self._counted, np.zeros(more, dtype=np.int64)])
        self._version = np.concatenate([self._version, np.full(more, None, dtype=object)])
        self._quarantined = np.concatenate([self._quarantined, np.zeros(more, dtype=np.int64)])

    def add_predictions(self, rows: pd.DataFrame) -> None:
        """Prediction rows (device_id, tag, score, is_anomaly, model_version); rows without a key count nowhere."""
        if self._version_dtype is None:
            self._version_dtype = rows["model_version"].dtype
        for version in sorted(str(v) for v in rows["model_version"].dropna().unique()):
            if version not in self.seen:
                self.seen.add(version)
                reference = self._statistics(version)
                if reference is not None and len(reference):
                    self.versions[version] = _VersionBins(reference)
        keyed = (rows["device_id"].notna() & rows["tag"].notna()).to_numpy()
        if not keyed.all():
            rows = rows[keyed]
        if rows.empty:
            return
        slots = self._slots_of(rows["device_id"], rows["tag"])
        scores = rows["score"].to_numpy(dtype=float)
        np.add.at(self._windows, slots, 1)
        np.add.at(self._anomalies, slots[rows["is_anomaly"].to_numpy(dtype=bool, na_value=False)], 1)
        self._add_scores(slots, scores)
        version_codes, names = pd.factorize(rows["model_version"])  # a null version: -1, no version
        for code, version in enumerate(names):
            mine = version_codes == code
            at = np.unique(slots[mine])
            current = self._version[at]
            later = np.array([c is None or version > c for c in current], dtype=bool)  # the highest name, as max
            self._version[at[later]] = version
            if version in self.versions:
                self.versions[version].add(self, slots[mine], scores[mine])

    def _add_scores(self, slots: np.ndarray, scores: np.ndarray) -> None:
        """Kahan-sum each sensor's scores in row order, as pandas' grouped mean does (NaN skipped; a compensation
        made NaN by an infinite score reset to 0): one vectorised step per row rank within a sensor, so each step
        touches a sensor once."""
        order = np.argsort(slots, kind="stable")
        slots, scores = slots[order], scores[order]
        starts = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1]])
        rank = np.arange(len(slots)) - np.repeat(starts, np.diff(np.r_[starts, len(slots)]))
        by_rank = np.argsort(rank, kind="stable")
        done = 0
        with np.errstate(invalid="ignore"):
            for count in np.bincount(rank):
                step = by_rank[done : done + count]
                done += count
                value = scores[step]
                kept = value == value
                at, value = slots[step][kept], value[kept]
                self._counted[at] += 1
                y = value - self._compensation[at]
                t = self._sum[at] + y
                compensation = t - self._sum[at] - y
                compensation[compensation != compensation] = 0.0
                self._compensation[at] = compensation
                self._sum[at] = t

    def add_quarantine(self, rows: pd.DataFrame) -> None:
        """Quarantine rows (device_id, tag, and ``reason`` where known): rows without a sensor are counted as
        unattributed; reasons are counted over all rows."""
        if REASON_COLUMN in rows:
            for reason, count in rows[REASON_COLUMN].dropna().value_counts(sort=False).items():
                self.reasons[str(reason)] = self.reasons.get(str(reason), 0) + int(count)
        attributed = rows[rows["device_id"].notna() & rows["tag"].notna()]
        self.unattributed += len(rows) - len(attributed)
        if attributed.empty:
            return
        slots = self._slots_of(attributed["device_id"], attributed["tag"])
        np.add.at(self._quarantined, slots, 1)
        if REASON_COLUMN in attributed:
            orphans = attributed.loc[attributed[REASON_COLUMN] == "no_model", KEYS]
            self.no_model.update(orphans.itertuples(index=False, name=None))

    def add(self, predictions: Iterable[pd.DataFrame], quarantine: Iterable[pd.DataFrame]) -> HourTally:
        for batch in predictions:
            self.add_predictions(batch)
        for batch in quarantine:
            self.add_quarantine(batch)
        return self

    def quarantine_reasons(self) -> dict[str, int]:
        """Rows per quarantine reason, most first (ties in the order first met): ``value_counts`` of the rows."""
        counts = pd.Series(self.reasons, dtype="int64")
        return {str(k): int(v) for k, v in counts.sort_values(ascending=False).items()}

    def rows(self, earlier: Earlier, thresholds: Thresholds) -> pd.DataFrame:
        """The hour's health rows (``HEALTH_SCHEMA``), one per sensor scored or quarantined, sorted by sensor."""
        size = len(self.devices)
        windows, quarantined = self._windows[:size], self._quarantined[:size]
        slots = np.flatnonzero((windows > 0) | (quarantined > 0))
        dtypes = self._key_dtypes or (str, str)
        out = pd.DataFrame(
            {
                "device_id": pd.Series(self.devices, dtype=object)[slots].astype(dtypes[0]).array,
                "tag": pd.Series(self.tags, dtype=object)[slots].astype(dtypes[1]).array,
                "slot": slots,
            }
        )
        out = out.sort_values(KEYS, kind="stable", ignore_index=True)  # the order of a grouping by sensor
        slots = out.pop("slot").to_numpy()
        counted = self._counted[slots]
        out["windows"] = windows[slots]
        out["anomalies"] = self._anomalies[slots]
        out["score_mean"] = np.where(counted > 0, self._sum[slots] / np.maximum(counted, 1), np.nan)
        out["model_version"] = pd.Series(self._version[slots], dtype=object).astype(self._version_dtype or str).array
        out["quarantined"] = quarantined[slots]
        row_of_slot = np.full(size, -1, dtype=np.int64)
        row_of_slot[slots] = np.arange(len(slots))
        versions = [self.versions[v] for v in sorted(self.versions)]
        return _judge(out, row_of_slot, versions, earlier, thresholds)


def _judge(
    out: pd.DataFrame,
    row_of_slot: np.ndarray,
    versions: Iterable[_VersionBins],
    earlier: Earlier,
    thresholds: Thresholds,
) -> pd.DataFrame:
    """The health rows from the per-sensor sums (``out``: keys, windows, anomalies, score_mean, model_version,
    quarantined; ``row_of_slot``: each tally slot's row, -1: none): rates, PSI and expected rates by version,
    then drift and its hours (:func:`decide`)."""
    out["anomaly_rate"] = np.where(out["windows"] > 0, out["anomalies"] / out["windows"].clip(lower=1), np.nan)
    out["quarantine_share"] = out["quarantined"] / (out["windows"] + out["quarantined"])
    out["train_flagged_share"] = np.nan
    out["expected_rate"] = np.nan
    out["psi"] = np.nan
    out["status"] = np.where(out["windows"] > 0, STATUS_NO_STATS, STATUS_NOT_SCORED)
    for bins in versions:
        _add_psi(out, bins, row_of_slot)
    return decide(out, earlier, thresholds)


def decide(rows: pd.DataFrame, earlier: Earlier, thresholds: Thresholds) -> pd.DataFrame:
    """``p_value``, ``judged_windows``, ``drifting`` and ``drift_hours`` of an hour's health rows, from their
    counts, expected rates, PSI and status and the earlier hours' rows (``earlier(1)``: the hour before; None: no
    health partition there, which ends the look back). One rule for an hour written now and for a later hour judged
    again (:func:`_carry_forward`). A row whose expected rate is unknown (written before it was stored) keeps its
    ``drifting``."""
    out = rows.copy()
    status_ok = (out["status"] == STATUS_OK).to_numpy()
    known = out["expected_rate"].notna().to_numpy()
    judged = status_ok & known
    expected = np.nan_to_num(out["expected_rate"].to_numpy(dtype=float))
    windows = out["windows"].to_numpy(dtype=np.int64)
    anomalies = out["anomalies"].to_numpy(dtype=np.int64)
    n, k = _pooled(out, windows, anomalies, expected, judged, earlier)
    p_value = binomial_tail(k, n, expected)
    excess = (p_value <= SIGNIFICANCE) & (k / np.maximum(n, 1) >= expected + thresholds.anomaly_excess)
    excess &= anomalies > 0  # a pooled hour is marked only with an anomaly of its own
    shifted = (out["psi"] >= thresholds.psi).to_numpy() & (windows >= MIN_WINDOWS) if thresholds.psi > 0 else False
    drifting = judged & (excess | shifted)  # PSI 0: reported, not judged
    kept = status_ok & ~known
    stored_drifting = out["drifting"].fillna(False).to_numpy(dtype=bool) if "drifting" in out else False
    out["drifting"] = np.where(kept, stored_drifting, drifting).astype(bool)
    stored_p = out["p_value"].to_numpy(dtype=float) if "p_value" in out else np.full(len(out), np.nan)
    out["p_value"] = np.where(kept, stored_p, np.where(judged, p_value, np.nan))
    out["judged_windows"] = np.where(judged, n, windows).astype(np.int64)
    out["drift_hours"] = drift_hours(out, earlier)
    return out[HEALTH_SCHEMA.names]


def _pooled(
    rows: pd.DataFrame,
    windows: np.ndarray,
    anomalies: np.ndarray,
    expected: np.ndarray,
    judged: np.ndarray,
    earlier: Earlier,
) -> tuple[np.ndarray, np.ndarray]:
    """The windows and anomalies each judged row is tested on: its hour's, and for a thin row (too few windows to
    be improbable were all flagged: ``expected ** windows > SIGNIFICANCE``) those of its sensor's earlier hours of
    the same model version, an hour at a time, until they can be or POOL_HOURS hours are in."""
    n, k = windows.copy(), anomalies.copy()
    thin = judged & (windows > 0) & (expected**windows > SIGNIFICANCE)
    keys = [*KEYS, "model_version"]
    for back in range(1, POOL_HOURS):
        if not thin.any():
            break
        frame = earlier(back)
        if frame is None:
            break
        before = frame[[*keys, "windows", "anomalies"]].drop_duplicates(KEYS, keep="last")
        matched = rows[keys].merge(before, how="left", on=keys)
        n = n + np.where(thin, matched["windows"].fillna(0).to_numpy(dtype=np.int64), 0)
        k = k + np.where(thin, matched["anomalies"].fillna(0).to_numpy(dtype=np.int64), 0)
        thin &= expected**n > SIGNIFICANCE
    return n, k


def binomial_tail(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(X >= k) for X ~ Binomial(n, p), row by row: the chance of at least ``k`` flags among ``n`` windows each
    flagged with probability ``p``. The upper tail's terms summed in log space, vectorised over sensors (an hour has
    a few dozen windows a sensor; no dependency beyond numpy)."""
    k, n = np.asarray(k, dtype=np.int64), np.asarray(n, dtype=np.int64)
    p = np.asarray(p, dtype=float)
    out = np.where(k <= 0, 1.0, np.where((p >= 1.0) & (k <= n), 1.0, 0.0))
    todo = np.flatnonzero((k > 0) & (k <= n) & (p > 0.0) & (p < 1.0))
    if len(todo) == 0:
        return out
    top = int(n[todo].max())
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, top + 1)))])
    j = np.arange(top + 1)
    for start in range(0, len(todo), 10_000):  # (sensors x windows) terms, ten thousand sensors at a time
        rows = todo[start : start + 10_000]
        kk, nn, pp = k[rows, None], n[rows, None], p[rows, None]
        rest = np.clip(nn - j, 0, None)
        terms = log_factorial[nn] - log_factorial[j] - log_factorial[rest] + j * np.log(pp) + rest * np.log1p(-pp)
        out[rows] = np.minimum(1.0, np.where((j >= kk) & (j <= nn), np.exp(terms), 0.0).sum(axis=1))
    return out


def drift_hours(rows: pd.DataFrame, earlier: Earlier) -> np.ndarray:
    """Consecutive drifting hours ending at ``rows``' hour: where drifting, one more than the count of the sensor's
    last earlier hour with a scored window (an hour without one is passed over, back to POOL_HOURS hours; an hour
    without a health partition ends the look back)."""
    drifting = rows["drifting"].to_numpy(dtype=bool)
    before = np.zeros(len(rows), dtype=np.int64)
    found = ~drifting  # only a drifting row's run is looked up: the hour before is read only if one is
    for back in range(1, POOL_HOURS):
        if found.all():
            break
        frame = earlier(back)
        if frame is None:
            break
        seen = frame.loc[frame["windows"] > 0, [*KEYS, "drift_hours"]].drop_duplicates(KEYS, keep="last")
        matched = rows[KEYS].merge(seen, how="left", on=KEYS)["drift_hours"]  # a join on the key columns
        take = ~found & matched.notna().to_numpy()
        before[take] = matched.to_numpy()[take].astype(np.int64)
        found |= take
    return np.where(drifting, before + 1, 0).astype("int64")


def expected_rates(reference: model_stats.Reference, shares: np.ndarray) -> np.ndarray:
    """The anomaly rate a healthy hour of each model has: the larger of its calibrated false-alarm rate (statistics
    from before it was recorded: none), its training flagged share ``shares`` and 1 / (training windows + 1), the
    least a model's training can vouch for (a share of 0 would make a single flag improbable)."""
    floor = 1.0 / (reference.train_rows + 1.0)
    return np.fmax(np.fmax(shares, reference.false_alarm_rate), floor)


def _add_psi(out: pd.DataFrame, bins: _VersionBins, row_of_slot: np.ndarray) -> None:
    """PSI of each sensor scored with ``bins``' version, vectorised over its sensors: the hour's histogram against
    the reference one (``models.stats.Reference``: of the hour of day where training had enough windows then)."""
    reference, observed = bins.reference, bins.observed
    counts, expected = reference.counts, reference.shares
    have = observed.sum(axis=1) > 0
    r = np.clip(counts / counts.sum(axis=1, keepdims=True).clip(min=1), model_stats.PSI_EPSILON, None)
    o = np.clip(observed / observed.sum(axis=1, keepdims=True).clip(min=1), model_stats.PSI_EPSILON, None)
    value = np.where(have, ((o - r) * np.log(o / r)).sum(axis=1), np.nan)
    # a sensor whose rows this hour were scored by this version takes its numbers (only such a sensor has a count,
    # and its tally slot was mapped to the reference when its rows were counted)
    at = np.full(len(reference), -1, dtype=np.int64)
    mapped = np.flatnonzero(bins.row_of_slot >= 0)
    at[bins.row_of_slot[mapped]] = row_of_slot[mapped]
    hit = (at >= 0) & have
    rows = at[hit]
    out.loc[rows, "psi"] = value[hit]
    out.loc[rows, "train_flagged_share"] = expected[hit]
    out.loc[rows, "expected_rate"] = expected_rates(reference, expected)[hit]
    out.loc[rows, "status"] = STATUS_OK


def _hour_health(
    hour: Scope,
    h: datetime,
    thresholds: Thresholds,
    stats_cache: dict[tuple[str, int], model_stats.Reference | None],
    stored: _HealthRows,
) -> tuple[HealthManifest, list[HealthManifest]]:
    """Write hour ``h``'s health; returns its manifest and those of later hours whose alerting grew by it."""
    storage, containers, part = hour.storage, hour.containers, layout.Partition(h)
    hour_of_day = h.astimezone(timezone.utc).hour

    def statistics(version: str) -> model_stats.Reference | None:
        missing = [k for k in stats_cache if k[0] == version and stats_cache[k] is None]
        if missing:
            return None
        key = (version, hour_of_day)
        if key not in stats_cache:
            stats_cache[key] = model_stats.read_reference(storage, containers.models, version, hour_of_day)
            if stats_cache[key] is None:
                log.warning("Model version %s has no training statistics: its sensors get no PSI", version)
        return stats_cache[key]

    tally = HourTally(statistics).add(
        (
            b.to_pandas()
            for b in st.iter_parquet(storage, containers.predictions, part.data, PREDICTION_COLUMNS, BATCH_ROWS)
        ),
        (
            b.to_pandas()
            for b in st.iter_parquet(storage, containers.quarantine, part.data, QUARANTINE_COLUMNS, BATCH_ROWS)
        ),
    )
    rows = tally.rows(stored.before(h), thresholds)
    lost = _models_lost(hour, h, tally.no_model)
    if lost:
        at = pd.MultiIndex.from_frame(rows[["device_id", "tag"]]).isin(lost)
        rows.loc[at, "status"] = STATUS_MODEL_LOST
    manifest = write_health(
        storage, containers, h, rows, hour.run_id, thresholds, tally.unattributed, tally.quarantine_reasons()
    )
    log.info(
        "Model health of %s: %d sensor(s), %d drifting, %d drifting %d+ hours, %d without training statistics, "
        "%d that lost their model",
        part.prefix,
        manifest.sensors,
        manifest.drifting,
        manifest.alerting,
        thresholds.hours,
        manifest.no_statistics,
        manifest.models_lost,
    )
    stored.put(h, rows)
    return manifest, _carry_forward(hour, h, thresholds, stored)


#: What judging an hour again may change.
_DECIDED = ["p_value", "judged_windows", "drifting", "drift_hours"]


def _carry_forward(hour: Scope, h: datetime, thresholds: Thresholds, stored: _HealthRows) -> list[HealthManifest]:
    """Judge the hours after ``h`` that have health again (:func:`decide`), while they change and for at least
    the POOL_HOURS - 1 hours whose pooled windows and runs may reach back to ``h``: an hour scored before the one
    before it counted a run from nothing, or pooled without it. Returns the rewritten manifests whose alerting
    sensors grew: those alerts are due now."""
    storage, containers = hour.storage, hour.containers
    grew = []
    for step in range(1, MAX_CARRY_HOURS + 1):
        later = h + step * layout.HOUR
        if later in hour.hours:
            break  # computed by this run, in order, after this hour
        rows = _read_columns(storage, containers.health, layout.Partition(later).data, None)
        old = read_manifest(storage, containers, later)
        if rows is None or old is None:
            break
        rows = rows.reindex(columns=HEALTH_SCHEMA.names)  # written before a column existed: null there
        judged = decide(rows, stored.before(later), thresholds)
        if judged[_DECIDED].astype("float64").equals(rows[_DECIDED].astype("float64")):
            stored.put(later, rows)
            if step >= POOL_HOURS - 1:
                break
            continue
        manifest = write_health(
            storage,
            containers,
            later,
            judged,
            old.run_id,
            thresholds,
            old.unattributed_quarantined,
            old.quarantine_reasons,
            models_lost=(old.models_lost, old.models_lost_sensors),
        )
        log.info("Drift of %s judged again after %s was (re)scored", later.isoformat(), h.isoformat())
        if manifest.alerting and set(manifest.alerting_sensors) - set(old.alerting_sensors):
            grew.append(manifest)
        stored.put(later, judged)
    return grew


def _models_lost(hour: Scope, h: datetime, wanted: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Of the sensors of the hour quarantined ``no_model`` (``wanted``), those that had a model before: scored the
    hour before or the same hour the day before (their health partitions), or listed in the production version
    the one scoring this hour replaced (the alias history). A sensor that never had a model is not among them."""
    if not wanted:
        return []
    had: set[tuple[str, str]] = set()

    def among_wanted(sensors: pd.DataFrame) -> set[tuple[str, str]]:
        """The wanted sensors among ``sensors`` (a fleet's keys), joined on the key columns: no tuple a sensor."""
        frame = pd.DataFrame(sorted(wanted), columns=KEYS)
        return set(sensors[KEYS].merge(frame, on=KEYS).itertuples(index=False, name=None))

    for earlier in (h - layout.HOUR, h - 24 * layout.HOUR):
        seen = _read_columns(
            hour.storage, hour.containers.health, layout.Partition(earlier).data, ["device_id", "tag", "windows"]
        )
        if seen is not None:
            had |= among_wanted(seen.loc[seen["windows"] > 0])
    replaced = _replaced_version(hour, h)
    if replaced is not None and wanted - had:
        from sensor_scoring.models import registry

        try:
            index = registry.read_index(hour.storage, hour.containers.models, replaced)
        except LookupError as exc:
            log.warning("Cannot read version %s to tell lost models: %s", replaced, exc)
        else:
            had |= among_wanted(index)
    return sorted(had)


def _replaced_version(hour: Scope, h: datetime) -> str | None:
    """The production version that the one scoring hour ``h`` (its predictions manifest's) replaced, if any."""
    import json

    from sensor_scoring.models import promotion

    try:
        scored_with = json.loads(
            hour.storage.read_bytes(hour.containers.predictions, layout.Partition(h).manifest)
        ).get("model_version")
    except (FileNotFoundError, ValueError, AttributeError):
        return None
    moves = [m for m in promotion.history(hour.storage, hour.containers.models) if m.get("version") == scored_with]
    previous = moves[-1].get("previous") if moves else None
    return str(previous) if previous else None


def write_health(
    storage: Storage,
    containers: config.Containers,
    h: datetime,
    rows: pd.DataFrame,
    run_id: str,
    thresholds: Thresholds,
    unattributed_quarantined: int,
    quarantine_reasons: dict[str, int],
    models_lost: tuple[int, tuple[str, ...]] | None = None,
) -> HealthManifest:
    """Write an hour's health rows (``sensor_health``) and then its manifest, whose totals are the rows' sums.
    ``models_lost``: the count and names to keep (a rewrite of drift hours), else counted from the rows' status."""
    part = layout.Partition(h)
    if models_lost is None:
        lost = rows.loc[rows["status"] == STATUS_MODEL_LOST, ["device_id", "tag"]]
        models_lost = (len(lost), tuple(f"{d}/{t}" for d, t in lost.head(MAX_LISTED).itertuples(index=False)))
    storage.write_bytes(containers.health, part.data, st.parquet_bytes(rows, HEALTH_SCHEMA))
    alerting = rows[rows["drift_hours"] >= thresholds.hours].sort_values(
        ["drift_hours", "psi"], ascending=False, na_position="last"
    )
    manifest = HealthManifest(
        hour=h,
        run_id=run_id,
        computed_at=datetime.now(timezone.utc),
        model_versions=tuple(sorted(str(v) for v in rows["model_version"].dropna().unique())),
        thresholds=thresholds,
        sensors=len(rows),
        windows=int(rows["windows"].sum()),
        anomalies=int(rows["anomalies"].sum()),
        quarantined=int(rows["quarantined"].sum()),
        unattributed_quarantined=unattributed_quarantined,
        no_statistics=int((rows["status"] == STATUS_NO_STATS).sum()),
        drifting=int(rows["drifting"].sum()),
        alerting=len(alerting),
        alerting_sensors=tuple(
            f"{d}/{t}" for d, t in alerting[["device_id", "tag"]].head(MAX_LISTED).itertuples(index=False)
        ),
        quarantine_reasons=quarantine_reasons,
        models_lost=models_lost[0],
        models_lost_sensors=models_lost[1],
    )
    storage.write_bytes(containers.health, part.manifest, manifest.to_json(indent=2))
    return manifest


def read_manifest(storage: Storage, containers: config.Containers, h: datetime) -> HealthManifest | None:
    """The health manifest of an hour, or None when the hour has no health partition."""
    path = layout.Partition(h).manifest
    try:
        data = storage.read_bytes(containers.health, path)
    except FileNotFoundError:
        return None
    return HealthManifest.from_json(data, source=st.make_uri(containers.health, path))
