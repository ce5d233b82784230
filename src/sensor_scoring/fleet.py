"""The data of the fleet and sensor pages (Airflow UI views) and of the HTML report: bounded queries on Parquet.

The fleet page reads only the hourly health partitions (``steps.health``): one row per sensor and hour, already
aggregated, a few columns read with pyarrow, so an hour range at 100k sensors stays cheap (bench/bench_fleet.py).
The sensor page reads the hour's predictions and quarantine partitions filtered to one sensor, over a bounded
range. Airflow-free: the views in ``sensor_scoring_airflow.views`` and ``python -m sensor_scoring report`` share it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sensor_scoring import layout, settings as config
from sensor_scoring.contracts import REASON_COLUMN
from sensor_scoring.models import pack, registry
from sensor_scoring.steps import health
from sensor_scoring.steps.interval import hours_of
from sensor_scoring.storage import Storage

#: Longest range of the fleet page (a week of hours) and of the sensor page (a day: it reads whole partitions).
MAX_FLEET_HOURS = 7 * 24
MAX_SENSOR_HOURS = 24
#: Devices in one page of the heatmap, and drifting sensors listed.
DEVICES_PER_PAGE = 50
TOP_DRIFTING = 20
#: Windows of one sensor drawn at most (a day has 1440).
MAX_SENSOR_WINDOWS = 5000
#: A window is an anomaly where its decision value is not above this (``scorer.score``).
THRESHOLD = 0.0
HEALTH_COLUMNS = ["device_id", "tag", "windows", "anomalies", "psi", "drifting", "drift_hours", "quarantined"]


class RangeError(ValueError):
    """A range the pages refuse: reversed, not on whole hours, or longer than they read."""


def check_range(start: datetime, end: datetime, limit: int) -> list[datetime]:
    """The whole hours of [start, end); a clear error beyond ``limit`` hours or off whole hours."""
    if end <= start:
        raise RangeError(f"end {end.isoformat()} is not after start {start.isoformat()}")
    if any(t.minute or t.second or t.microsecond for t in (start, end)):
        raise RangeError("start and end must be whole hours")
    hours = hours_of(start, end)
    if len(hours) > limit:
        raise RangeError(f"{len(hours)} hours asked, at most {limit} are shown at once; narrow the range")
    return hours


@dataclass
class FleetView:
    """What the fleet page shows for an hour range."""

    hours: list[datetime]
    #: anomalies per hour (rows, in order) and device (columns: this page of devices, most anomalous first)
    heatmap: pd.DataFrame
    devices_total: int
    device_page: int
    #: device_id, tag, drifting_hours, max_drift_hours, max_psi, anomalies, windows: most drifting first
    drifting: pd.DataFrame
    #: quarantined rows per hour (rows) and reason (columns), from the health manifests
    quarantine_reasons: pd.DataFrame
    #: the run that wrote each hour's health, and hours without health (not committed, or before the step existed)
    runs: dict[datetime, str] = field(default_factory=dict)
    missing_hours: list[datetime] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)


def _read_table(storage: Storage, container: str, path: str, columns: list[str], filters=None) -> pa.Table | None:
    try:
        data = storage.read_bytes(container, path)
    except FileNotFoundError:
        return None
    return pq.read_table(io.BytesIO(data), columns=columns, filters=filters)


def fleet_view(
    storage: Storage,
    containers: config.Containers,
    start: datetime,
    end: datetime,
    *,
    device_page: int = 0,
    devices_per_page: int = DEVICES_PER_PAGE,
    top: int = TOP_DRIFTING,
) -> FleetView:
    """The fleet page's data over [start, end), from the health partitions and manifests only."""
    hours = check_range(start, end, MAX_FLEET_HOURS)
    per_device, drifting_tables, runs, missing, reasons = [], [], {}, [], {}
    totals = {"windows": 0, "anomalies": 0, "quarantined": 0, "sensors_drifting": 0}
    for number, h in enumerate(hours):
        manifest = health.read_manifest(storage, containers, h)
        table = _read_table(storage, containers.health, layout.Partition(h).data, HEALTH_COLUMNS)
        if manifest is None or table is None:
            missing.append(h)
            continue
        runs[h] = manifest.run_id
        reasons[h] = manifest.quarantine_reasons
        totals["windows"] += manifest.windows
        totals["anomalies"] += manifest.anomalies
        totals["quarantined"] += manifest.quarantined + manifest.unattributed_quarantined
        totals["sensors_drifting"] += manifest.drifting
        # aggregated hour by hour: what is kept is one row per device, plus the few drifting sensors
        devices = table.group_by("device_id").aggregate([("anomalies", "sum")]).to_pandas()
        per_device.append(devices.assign(hour=number))
        drifting_tables.append(table.filter(pc.field("drifting")))
    by_device = pd.concat(per_device, ignore_index=True) if per_device else _EMPTY_BY_DEVICE
    order = by_device.groupby("device_id")["anomalies_sum"].sum().sort_values(ascending=False, kind="stable")
    devices = list(order.index[device_page * devices_per_page : (device_page + 1) * devices_per_page])
    shown = by_device[by_device["device_id"].isin(devices)]
    heatmap = (
        shown.pivot_table(index="hour", columns="device_id", values="anomalies_sum", aggfunc="sum", fill_value=0)
        .reindex(index=range(len(hours)), columns=devices, fill_value=0)
        .astype("int64")
    )
    heatmap.index = pd.DatetimeIndex([pd.Timestamp(h) for h in hours], name="hour")
    drifting_rows = pa.concat_tables(drifting_tables) if drifting_tables else _empty_health()
    drifting = (
        drifting_rows.group_by(["device_id", "tag"])
        .aggregate(
            [("drifting", "count"), ("drift_hours", "max"), ("psi", "max"), ("anomalies", "sum"), ("windows", "sum")]
        )
        .to_pandas()
        .rename(
            columns={
                "drifting_count": "drifting_hours",
                "drift_hours_max": "max_drift_hours",
                "psi_max": "max_psi",
                "anomalies_sum": "anomalies",
                "windows_sum": "windows",
            }
        )
        .sort_values(["max_drift_hours", "drifting_hours", "max_psi"], ascending=False)
        .head(top)
        .reset_index(drop=True)
    )
    quarantine = pd.DataFrame.from_dict(reasons, orient="index").fillna(0).astype("int64")
    quarantine = quarantine.reindex(index=hours, fill_value=0).sort_index(axis=1)
    return FleetView(
        hours=hours,
        heatmap=heatmap,
        devices_total=len(order),
        device_page=device_page,
        drifting=drifting,
        quarantine_reasons=quarantine,
        runs=runs,
        missing_hours=missing,
        totals=totals,
    )


_HEALTH_TYPES = [pa.string(), pa.string(), pa.int64(), pa.int64(), pa.float64(), pa.bool_(), pa.int64(), pa.int64()]
_EMPTY_BY_DEVICE = pd.DataFrame(
    {"device_id": pd.Series(dtype=str), "anomalies_sum": pd.Series(dtype="int64"), "hour": []}
)


def _empty_health() -> pa.Table:
    return pa.table({c: pa.array([], t) for c, t in zip(HEALTH_COLUMNS, _HEALTH_TYPES)})


@dataclass
class SensorView:
    """What the sensor page shows for one (device_id, tag) over an hour range."""

    device_id: str
    tag: str
    hours: list[datetime]
    #: window_end, score, is_anomaly, model_version (at most MAX_SENSOR_WINDOWS, oldest first)
    windows: pd.DataFrame
    #: window_end, reason, source_file, run_id
    quarantined: pd.DataFrame
    #: per hour: windows, anomalies, psi, drifting, drift_hours, status (from health)
    health: pd.DataFrame
    #: model version -> {"train_start", "train_end", "train_rows", "train_flagged_share"} (from the registry)
    models: dict[str, dict[str, object]]
    threshold: float = THRESHOLD
    truncated: bool = False


def sensor_view(
    storage: Storage, containers: config.Containers, device_id: str, tag: str, start: datetime, end: datetime
) -> SensorView:
    """The sensor page's data over [start, end): its windows and quarantined rows, its health, its models."""
    hours = check_range(start, end, MAX_SENSOR_HOURS)
    only = [("device_id", "==", device_id), ("tag", "==", tag)]
    scored, rejected, healthy = [], [], []
    for h in hours:
        part = layout.Partition(h).data
        table = _read_table(
            storage, containers.predictions, part, ["window_end", "score", "is_anomaly", "model_version"], only
        )
        if table is not None:
            scored.append(table.to_pandas())
        table = _read_table(
            storage, containers.quarantine, part, ["window_end", REASON_COLUMN, "source_file", "run_id"], only
        )
        if table is not None:
            rejected.append(table.to_pandas())
        cols = ["windows", "anomalies", "anomaly_rate", "psi", "drifting", "drift_hours", "status", "model_version"]
        table = _read_table(storage, containers.health, part, cols, only)
        if table is not None and len(table):
            healthy.append(table.to_pandas().assign(hour=pd.Timestamp(h)))
    windows = _concat(scored, ["window_end", "score", "is_anomaly", "model_version"]).sort_values("window_end")
    truncated = len(windows) > MAX_SENSOR_WINDOWS
    windows = windows.tail(MAX_SENSOR_WINDOWS).reset_index(drop=True)
    quarantined = _concat(rejected, ["window_end", REASON_COLUMN, "source_file", "run_id"])
    found = [str(v) for v in windows["model_version"].dropna().unique()]
    return SensorView(
        device_id=device_id,
        tag=tag,
        hours=hours,
        windows=windows,
        quarantined=quarantined.reset_index(drop=True),
        health=_concat(healthy, ["hour", *cols]).reset_index(drop=True),
        models={v: _training_of(storage, containers, v, device_id, tag) for v in found},
        truncated=truncated,
    )


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _training_of(
    storage: Storage, containers: config.Containers, version: str, device_id: str, tag: str
) -> dict[str, object]:
    """The sensor's row of a version's index: its training range; empty when the registry lacks it."""
    try:
        index = registry.read_index(storage, containers.models, version)
    except (FileNotFoundError, pack.ModelIntegrityError):
        return {}
    row = index[(index["device_id"] == device_id) & (index["tag"] == tag)]
    if row.empty:
        return {}
    first = row.iloc[0]
    return {k: first[k] for k in ("train_start", "train_end", "train_rows", "train_flagged_share") if k in row}
