"""Subset rescoring: replace some sensors' rows of committed hours, keep every other row as it was.

A rescoring names devices and/or tags. load_and_validate takes only their windows; commit then reads each
hour's committed partition, keeps the rows outside the subset (``keep_unrescored``) and writes them back beside
the new ones, so the partition's counts still describe the whole hour. Duplicates leave no row behind, so they
are recorded per sensor: a later subset rescoring must know which sensors they belonged to.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sensor_scoring import layout, storage as st
from sensor_scoring.contracts import (
    PREDICTION_SCHEMA,
    QUARANTINE_SCHEMA,
    Counts,
    Manifest,
    RescoringRecord,
    SensorDuplicates,
    Subset,
)
from sensor_scoring.steps.interval import Hour

log = logging.getLogger(__name__)

_NO_KEY = "\x00"  # stands in for a missing device_id or tag while counting, so such rows count too


def subset_of(devices: list[str] | None, tags: list[str] | None) -> Subset | None:
    """The subset a run's params name, sorted; None when they name everything (a full run)."""
    subset = Subset(devices=tuple(sorted(set(devices or []))), tags=tuple(sorted(set(tags or []))))
    return subset if (subset.devices or subset.tags) else None


def in_subset(device_id: str | None, tag: str | None, subset: Subset) -> bool:
    """Whether one sensor is in the subset (a missing key is in no list)."""
    return (not subset.devices or device_id in subset.devices) and (not subset.tags or tag in subset.tags)


def subset_mask(frame: pd.DataFrame, subset: Subset | None) -> pd.Series | None:
    """Rows of ``frame`` inside the subset; None when the subset is everything (nothing to filter)."""
    if subset is None:
        return None
    mask = pd.Series(True, index=frame.index)
    if subset.devices:
        mask &= frame["device_id"].isin(subset.devices).fillna(False).astype(bool)
    if subset.tags:
        mask &= frame["tag"].isin(subset.tags).fillna(False).astype(bool)
    return mask


def select_sensors(windows: pd.DataFrame, devices: list[str] | None, tags: list[str] | None) -> pd.DataFrame:
    """The windows of the chosen devices and tags (an empty or missing list means all of them)."""
    mask = subset_mask(windows, subset_of(devices, tags))
    return windows if mask is None else windows.loc[mask].reset_index(drop=True)


def _sensor_counts(frame: pd.DataFrame) -> pd.Series:
    """Rows per (hour, device_id, tag), vectorised: an hour can hold millions of windows."""
    if frame.empty:
        empty = pd.MultiIndex.from_arrays([[], [], []], names=["hour", "device_id", "tag"])
        return pd.Series(dtype="int64", index=empty)
    keys = pd.DataFrame(
        {
            "hour": frame["window_end"].dt.floor("h"),
            "device_id": frame["device_id"].astype("string").fillna(_NO_KEY),
            "tag": frame["tag"].astype("string").fillna(_NO_KEY),
        }
    )
    return keys.groupby(["hour", "device_id", "tag"], dropna=False).size()  # a stray without window_end counts too


def duplicates_by_sensor(
    landed: pd.DataFrame, valid: pd.DataFrame, quarantined: pd.DataFrame
) -> dict[str, tuple[SensorDuplicates, ...]]:
    """Per ISO hour, the exact copies collapsed for each sensor (usually nothing): landed - valid - quarantined."""
    dups = _sensor_counts(landed).sub(_sensor_counts(valid), fill_value=0)
    dups = dups.sub(_sensor_counts(quarantined), fill_value=0)
    by_hour: dict[str, list[SensorDuplicates]] = {}
    for (h, device_id, tag), n in dups[dups > 0].sort_index().items():
        by_hour.setdefault(pd.Timestamp(h).isoformat(), []).append(
            SensorDuplicates(
                device_id=None if device_id == _NO_KEY else str(device_id),
                tag=None if tag == _NO_KEY else str(tag),
                duplicates=int(n),
            )
        )
    return {h: tuple(entries) for h, entries in by_hour.items()}


@dataclass
class Kept:
    """The rows of one committed hour that a subset rescoring leaves alone, and what they count."""

    predictions: pa.Table
    quarantine: pd.DataFrame
    duplicates_by_sensor: tuple[SensorDuplicates, ...]
    #: The hour's manifest before this run; None for an hour never committed.
    previous: Manifest | None

    @property
    def scored(self) -> int:
        return int(self.predictions.num_rows)

    @property
    def anomalies(self) -> int:
        if not self.scored:
            return 0
        return int(pc.sum(pc.cast(self.predictions["is_anomaly"], pa.int64())).as_py() or 0)

    @property
    def duplicates(self) -> int:
        return sum(d.duplicates for d in self.duplicates_by_sensor)

    @property
    def landed(self) -> int:
        return self.scored + len(self.quarantine) + self.duplicates

    @property
    def history(self) -> tuple[RescoringRecord, ...]:
        """The subset rescorings of the hour since its last full run."""
        return self.previous.rescored if self.previous is not None else ()


def keep_unrescored(hour: Hour, subset: Subset | None) -> dict[datetime, Kept]:
    """For a subset rescoring: each hour's committed rows outside the subset (empty dict for a full run).

    Predictions stay Arrow tables read straight from the committed file, so kept rows are rewritten with
    identical values; an hour never committed before keeps nothing.
    """
    if subset is None:
        return {}
    kept = {}
    for h in hour.hours:
        kept[h] = _keep_hour(hour, h, subset)
        log.info(
            "Hour %s: keeping %d prediction(s) and %d quarantined row(s) outside the subset %s",
            h.isoformat(),
            kept[h].scored,
            len(kept[h].quarantine),
            subset.to_dict(),
        )
    return kept


def _keep_hour(hour: Hour, h: datetime, subset: Subset) -> Kept:
    part, storage, containers = layout.Partition(h), hour.storage, hour.containers
    try:
        data = storage.read_bytes(containers.predictions, part.manifest)
    except FileNotFoundError:
        log.warning("Hour %s was never committed: the subset rescoring writes only the subset's rows", h.isoformat())
        return Kept(PREDICTION_SCHEMA.empty_table(), pd.DataFrame(columns=QUARANTINE_SCHEMA.names), (), None)
    previous = Manifest.from_json(data, source=st.make_uri(containers.predictions, part.manifest))
    table = pq.read_table(io.BytesIO(storage.read_bytes(containers.predictions, part.data)))
    table = table.select(PREDICTION_SCHEMA.names).cast(PREDICTION_SCHEMA)
    in_table = subset_mask(table.select(["device_id", "tag"]).to_pandas(), subset)
    if in_table is not None:
        table = table.filter(pa.array(~in_table.to_numpy(dtype=bool)))
    quarantine = st.read_parquet(storage, containers.quarantine, part.data)
    in_quarantine = subset_mask(quarantine, subset)
    if in_quarantine is not None and len(quarantine):
        quarantine = quarantine.loc[~in_quarantine].reset_index(drop=True)
    dups = tuple(d for d in previous.duplicates_by_sensor if not in_subset(d.device_id, d.tag, subset))
    return Kept(predictions=table, quarantine=quarantine, duplicates_by_sensor=dups, previous=previous)


def rescoring_history(
    subset: Subset | None, kept: Kept | None, counts: Counts, *, run_id: str, model_version: str, committed_at: datetime
) -> tuple[RescoringRecord, ...]:
    """The manifest's ``rescored``: the subset rescorings since the last full run, this one last (empty for a
    full run, which replaces the whole hour). This run's entry counts only the rows it replaced."""
    if subset is None or kept is None:
        return ()
    scored = counts.scored - kept.scored
    quarantined = counts.quarantined - len(kept.quarantine)
    duplicates = counts.duplicates - kept.duplicates
    mine = Counts(
        landed=scored + quarantined + duplicates,
        scored=scored,
        quarantined=quarantined,
        duplicates=duplicates,
        anomalies=counts.anomalies - kept.anomalies,
    )
    entry = RescoringRecord(
        run_id=run_id,
        model_version=model_version,
        devices=subset.devices,
        tags=subset.tags,
        committed_at=committed_at,
        counts=mine,
    )
    return (*kept.history, entry)


def model_versions(local: Path) -> dict[str, int]:
    """Prediction rows per model version in a partition file (several after a subset rescoring)."""
    versions = pq.read_table(local, columns=["model_version"]).column("model_version").to_pandas().value_counts()
    return {str(v): int(n) for v, n in sorted(versions.items())}
