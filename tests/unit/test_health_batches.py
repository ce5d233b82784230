"""model_health reads the committed partitions in batches and sums per sensor, and its rows, manifest and alerts are
exactly those of the whole-frame computation it replaced (kept here, as the reference, not in the package).

The hour: a predictions partition written the way commit writes it (a ParquetWriter, one small row group per
shard write, then the rows a subset rescoring kept, so a sensor's rows are split across row groups and batches),
with two model versions (one without statistics), hour-of-day statistics for some sensors and not others, sensors
with one window, ties and extreme scores, a quarantine partition with attributed, unattributed and ``no_model``
rows. Read with batches of a few rows and with one batch, both equal the reference bit for bit.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sensor_scoring import layout, settings as config, storage as st
from sensor_scoring.contracts import PREDICTION_SCHEMA, QUARANTINE_SCHEMA, REASON_COLUMN
from sensor_scoring.models import stats as model_stats
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps import health
from sensor_scoring.storage import LocalStorage

HOUR = datetime(2026, 3, 2, 7, tzinfo=timezone.utc)
H = timedelta(hours=1)
KEYS = ["device_id", "tag"]
THRESHOLDS = health.Thresholds(psi=0.05, anomaly_excess=0.2, hours=2)


# --- the whole-frame computation model_health did before it read by batches: the reference ---


def reference_rows(predictions, quarantine, training, previous, thresholds, hour_of_day):
    scored = predictions.groupby(KEYS, sort=True, observed=True).agg(
        windows=("score", "size"),
        anomalies=("is_anomaly", "sum"),
        score_mean=("score", "mean"),
        model_version=("model_version", "max"),
    )
    q = quarantine.groupby(KEYS, sort=True, observed=True).size().rename("quarantined")
    out = scored.join(q, how="outer").reset_index()
    out["windows"] = out["windows"].fillna(0).astype("int64")
    out["anomalies"] = out["anomalies"].fillna(0).astype("int64")
    out["quarantined"] = out["quarantined"].fillna(0).astype("int64")
    out["anomaly_rate"] = np.where(out["windows"] > 0, out["anomalies"] / out["windows"].clip(lower=1), np.nan)
    out["quarantine_share"] = out["quarantined"] / (out["windows"] + out["quarantined"])
    out["train_flagged_share"] = np.nan
    out["expected_rate"] = np.nan
    out["psi"] = np.nan
    out["status"] = np.where(out["windows"] > 0, health.STATUS_NO_STATS, health.STATUS_NOT_SCORED)
    for version, table in training.items():
        if table is None or table.empty:
            continue
        _reference_psi(out, predictions[predictions["model_version"] == version], table, hour_of_day)
    # the judgement from the sums is the product's own (decide): what is compared here is how the sums are made
    return health.decide(out, lambda back: previous if back == 1 else None, thresholds)


def _reference_psi(out, predictions, table, hour_of_day):
    ref = table.reset_index(drop=True)
    ref_index = pd.MultiIndex.from_frame(ref[KEYS])
    row_sensor = ref_index.get_indexer(pd.MultiIndex.from_frame(predictions[KEYS]))
    known = row_sensor >= 0
    width = model_stats.BINS - 1
    edges = np.full((len(ref), width), np.inf)
    counts = np.zeros((len(ref), width + 1))
    reference = [np.asarray(c, dtype=float) for c in ref["counts"]]
    shares = ref["train_flagged_share"].to_numpy(dtype=float).copy()
    for i, (hourly, hourly_share) in enumerate(zip(ref["hourly_counts"], ref["hourly_flagged_share"])):
        if hourly is not None and len(hourly) == 24:
            at = np.asarray(hourly[hour_of_day], dtype=float)
            if at.sum() >= model_stats.MIN_HOURLY_WINDOWS:
                reference[i], shares[i] = at, float(hourly_share[hour_of_day])
    for i, (e, c) in enumerate(zip(ref["edges"], reference)):
        edges[i, : len(e)] = e
        counts[i, : len(c)] = c
    values = predictions["score"].to_numpy(dtype=float)[known]
    sensor = row_sensor[known]
    bins = (values[:, None] >= edges[sensor]).sum(axis=1)
    observed = np.bincount(sensor * (width + 1) + bins, minlength=len(ref) * (width + 1)).reshape(len(ref), -1)
    have = observed.sum(axis=1) > 0
    r = np.clip(counts / counts.sum(axis=1, keepdims=True).clip(min=1), model_stats.PSI_EPSILON, None)
    o = np.clip(observed / observed.sum(axis=1, keepdims=True).clip(min=1), model_stats.PSI_EPSILON, None)
    value = np.where(have, ((o - r) * np.log(o / r)).sum(axis=1), np.nan)
    at = pd.MultiIndex.from_frame(out[KEYS]).get_indexer(ref_index)
    hit = (at >= 0) & have
    out.loc[at[hit], "psi"] = value[hit]
    out.loc[at[hit], "train_flagged_share"] = shares[hit]
    calibrated = ref["false_alarm_rate"].to_numpy(dtype=float)
    expected = np.fmax(np.fmax(shares, calibrated), 1.0 / (ref["train_rows"].to_numpy(dtype=float) + 1.0))
    out.loc[at[hit], "expected_rate"] = expected[hit]
    out.loc[at[hit], "status"] = health.STATUS_OK


# --- the committed hour ---


def _predictions(rng: np.random.Generator) -> list[pd.DataFrame]:
    """The shard writes of the hour, in commit's order: shards of sensors, then the rows a rescoring kept."""
    writes = []
    for shard in range(6):
        devices = [f"dev-{shard:02d}-{d}" for d in range(3)]
        rows = []
        for d in devices:
            for tag in ("pressure", "temperature"):
                n = int(rng.integers(1, 61))  # a sparse sensor's few windows, a full one's sixty
                rows.append(pd.DataFrame({"device_id": d, "tag": tag, "minute": rng.choice(60, n, replace=False)}))
        writes.append(pd.concat(rows, ignore_index=True))
    frame = pd.concat(writes, ignore_index=True)
    rows = len(frame)
    score = rng.normal(0.2, 0.4, rows) * 10.0 ** rng.integers(-3, 3, rows)  # magnitudes a plain sum would round
    score[rng.choice(rows, 20, replace=False)] = 0.0  # on an edge
    frame["score"] = score
    frame["is_anomaly"] = score <= 0
    frame["model_version"] = np.where(frame["device_id"].str.startswith("dev-05"), "v-old", "v2")
    kept = frame.sample(frac=0.3, random_state=1).sort_index()  # rows kept as committed, written last
    rest = frame.drop(index=kept.index)
    bounds = np.linspace(0, len(rest), 10).astype(int)
    return [*(rest.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])), kept]


def _as_committed(frame: pd.DataFrame) -> pa.Table:
    end = pd.Timestamp(HOUR) + pd.to_timedelta(frame["minute"], unit="min")
    full = frame.drop(columns="minute").assign(
        window_end=end,
        window_start=end - pd.Timedelta(minutes=1),
        value_avg=1.0,
        value_min=0.0,
        value_max=2.0,
        value_std=0.5,
        reading_count=6,
        run_id="run",
        scored_at=pd.Timestamp(HOUR + H),
    )
    return pa.Table.from_pandas(full, schema=PREDICTION_SCHEMA, preserve_index=False)


def _quarantine(rng: np.random.Generator) -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            "device_id": ["dev-00-0"] * 3 + ["dev-09-0"] * 60 + ["dev-09-1"] * 5 + [None] * 4 + ["dev-01-2"],
            "tag": ["pressure"] * 3 + ["pressure"] * 60 + ["temperature"] * 5 + [None, "pressure", None, None] + [None],
            REASON_COLUMN: ["non_finite_value"] * 3 + ["no_model"] * 65 + ["null_key"] * 4 + ["null_key"],
        }
    )
    return rows.assign(
        window_end=pd.Timestamp(HOUR),
        value_avg=np.nan,
        value_min=0.0,
        value_max=1.0,
        value_std=0.1,
        reading_count=6.0,
        source_file="f.json",
        run_id="run",
    ).sample(frac=1.0, random_state=2)


def _statistics(sensors: pd.DataFrame, rng: np.random.Generator, hourly: bool) -> pd.DataFrame:
    rows = []
    for i, (d, t) in enumerate(sensors.itertuples(index=False, name=None)):
        edges = np.unique(np.round(np.sort(rng.normal(0.2, 0.4, 9)), 1 if i % 3 == 0 else 6))  # some deduplicated
        counts = rng.integers(0, 50, len(edges) + 1)
        hourly_counts = [list(rng.integers(0, 8, len(edges) + 1)) for _ in range(24)] if hourly else []
        rows.append(
            {
                "device_id": d,
                "tag": t,
                "train_rows": int(counts.sum()),
                "train_flagged_share": float(rng.uniform(0, 0.05)),
                "score_mean": 0.2,
                "score_std": 0.4,
                "edges": list(edges),
                "counts": list(counts),
                "hourly_counts": hourly_counts,
                "hourly_flagged_share": list(rng.uniform(0, 0.05, 24)) if hourly else [],
                "false_alarm_rate": float("nan") if i % 4 == 0 else 0.02,
            }
        )
    return pd.DataFrame(rows, columns=list(model_stats.COLUMNS))


@pytest.fixture
def hour(tmp_path) -> tuple[Scope, dict]:
    """The committed hour on a directory storage; the frames the reference reads whole."""
    rng = np.random.default_rng(7)
    storage, containers, part = LocalStorage(tmp_path), config.Containers(), layout.Partition(HOUR)
    writes = _predictions(rng)
    local = tmp_path / "predictions.parquet"
    with pq.ParquetWriter(local, PREDICTION_SCHEMA) as writer:
        for rows in writes:
            for start in range(0, len(rows), 40):  # row groups of at most 40 rows
                writer.write_table(_as_committed(rows.iloc[start : start + 40]))
    storage.upload_file(containers.predictions, part.data, local)
    quarantine = _quarantine(rng)
    storage.write_bytes(containers.quarantine, part.data, st.parquet_bytes(quarantine, QUARANTINE_SCHEMA))
    predictions = pd.concat(writes, ignore_index=True)
    sensors = predictions.loc[predictions["model_version"] == "v2", KEYS].drop_duplicates()
    # v2's statistics: all its sensors but one, one more that was not scored, a third with the hour of day thin
    table = _statistics(pd.concat([sensors.iloc[1:], pd.DataFrame({"device_id": ["gone"], "tag": ["x"]})]), rng, True)
    table.loc[table.index[::3], "hourly_counts"] = pd.Series(
        [[[1] * len(e) + [1] for _ in range(24)] for e in table["edges"].iloc[::3]], index=table.index[::3]
    )
    model_stats.store_table(storage, containers.models, "v2", table)
    # the hour before: every sensor of two devices drifting for some hours already
    previous = pd.DataFrame(
        {"device_id": ["dev-00-0", "dev-00-0", "dev-01-1"], "tag": ["pressure", "temperature", "pressure"]}
    ).assign(model_version="v2", status=health.STATUS_OK, drifting=True, drift_hours=[1, 3, 4])
    for column in ("windows", "anomalies", "quarantined"):
        previous[column] = 60 if column == "windows" else 0
    previous = previous.reindex(columns=health.HEALTH_SCHEMA.names)
    storage.write_bytes(
        containers.health, layout.Partition(HOUR - H).data, st.parquet_bytes(previous, health.HEALTH_SCHEMA)
    )
    scope = Scope(storage, containers, "health-run", HOUR, HOUR + H)
    frames = {
        "predictions": predictions[["device_id", "tag", "score", "is_anomaly", "model_version"]],
        "quarantine": quarantine[["device_id", "tag", REASON_COLUMN]].reset_index(drop=True),
        "training": {"v-old": None, "v2": model_stats.read(storage, containers.models, "v2")},
        "previous": previous[health.EARLIER_COLUMNS],
    }
    return scope, frames


def _reference(frames: dict) -> tuple[pd.DataFrame, dict[str, int], int]:
    quarantine = frames["quarantine"]
    attributed = quarantine.dropna(subset=KEYS)
    rows = reference_rows(
        frames["predictions"], attributed, frames["training"], frames["previous"], THRESHOLDS, HOUR.hour
    )
    reasons = {str(k): int(v) for k, v in quarantine[REASON_COLUMN].value_counts().items()}
    return rows, reasons, len(quarantine) - len(attributed)


@pytest.mark.parametrize("batch_rows", [7, 64, health.BATCH_ROWS])
def test_health_read_in_batches_equals_the_whole_frame_computation(hour, batch_rows, monkeypatch):
    scope, frames = hour
    monkeypatch.setattr(health, "BATCH_ROWS", batch_rows)
    [manifest] = health.model_health(scope, THRESHOLDS)
    written = st.read_parquet(scope.storage, scope.containers.health, layout.Partition(HOUR).data)

    rows, reasons, unattributed = _reference(frames)
    pd.testing.assert_frame_equal(
        written, pd.DataFrame(pa.Table.from_pandas(rows, health.HEALTH_SCHEMA).to_pandas()), check_exact=True
    )
    assert len(rows) > 30 and rows["status"].nunique() == 3 and rows["drifting"].any()  # the cases are there
    assert (rows["drift_hours"] > 1).any() and rows["psi"].notna().any()
    expected = health.write_health(
        LocalStorage(scope.storage.root / "ref"),
        scope.containers,
        HOUR,
        rows,
        "health-run",
        THRESHOLDS,
        unattributed,
        reasons,
    )
    assert manifest == dataclass_replace(expected, computed_at=manifest.computed_at)
    assert list(manifest.quarantine_reasons) == list(reasons)  # the same order in the manifest's JSON


def dataclass_replace(manifest: health.HealthManifest, **changes: object) -> health.HealthManifest:
    import dataclasses

    return dataclasses.replace(manifest, **changes)


def test_sensor_health_of_whole_frames_equals_the_reference(hour):
    """The frame API (what the fleet benchmark and callers with frames use) is the same tally, one batch."""
    _, frames = hour
    attributed = frames["quarantine"].dropna(subset=KEYS)
    rows = health.sensor_health(
        frames["predictions"], attributed, frames["training"], frames["previous"], THRESHOLDS, hour_of_day=HOUR.hour
    )
    reference = reference_rows(
        frames["predictions"], attributed, frames["training"], frames["previous"], THRESHOLDS, HOUR.hour
    )
    pd.testing.assert_frame_equal(rows, reference, check_exact=True)


def test_the_partitions_are_read_in_batches_of_the_needed_columns(hour, monkeypatch):
    """Neither partition is read whole: each is opened as a Parquet file and read in batches of BATCH_ROWS rows,
    only the columns health needs; the version's training statistics in batches of sensors too (when its first
    prediction row is met)."""
    scope, _ = hour
    calls = []
    original = pq.ParquetFile.iter_batches

    def recording(self, *args, **kwargs):
        calls.append((kwargs.get("batch_size"), tuple(kwargs.get("columns") or ())))
        return original(self, *args, **kwargs)

    read_bytes = scope.storage.read_bytes

    def not_whole(container: str, path: str) -> bytes:
        committed = (scope.containers.predictions, scope.containers.quarantine)
        assert not (container in committed and path == layout.Partition(HOUR).data), "a partition read whole"
        return read_bytes(container, path)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    monkeypatch.setattr(scope.storage, "read_bytes", not_whole)
    monkeypatch.setattr(health, "BATCH_ROWS", 50)
    health.model_health(scope, THRESHOLDS)
    assert calls == [
        (50, tuple(health.PREDICTION_COLUMNS)),
        (model_stats.READ_BATCH_ROWS, ()),  # every column of the statistics of v2 (v-old has none)
        (50, ("device_id", "tag", REASON_COLUMN)),
    ]


def test_an_hour_without_partitions_has_no_rows(tmp_path):
    scope = Scope(LocalStorage(tmp_path), config.Containers(), "empty", HOUR, HOUR + H)
    [manifest] = health.model_health(scope, THRESHOLDS)
    assert manifest.sensors == 0 and manifest.windows == 0 and manifest.quarantine_reasons == {}
