"""The data of the fleet and sensor pages (Airflow UI views) and of the HTML report: bounded queries on Parquet.

The fleet page reads only the hourly health partitions (``steps.health``): one row per sensor and hour, already
aggregated, a few columns read with pyarrow, so an hour range at 100k sensors stays cheap (bench/bench_fleet.py).
The sensor page reads the hour's predictions, quarantine and health partitions filtered to one sensor, over a
bounded range, by ranged reads (``storage.read_parquet_rows``): each partition's footer and the row groups whose
statistics can hold the sensor, about a MB an hour at 100k sensors instead of the whole partition. Airflow-free: the
views in ``sensor_scoring_airflow.views`` and ``python -m sensor_scoring report`` share it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sensor_scoring import layout, settings as config
from sensor_scoring.contracts import REASON_COLUMN
from sensor_scoring.layout import HOUR
from sensor_scoring.models import registry
from sensor_scoring.names import check_version
from sensor_scoring.runs.scope import hours_of
from sensor_scoring.steps import health
from sensor_scoring.storage import Storage, read_parquet_rows

#: Longest range of the fleet page (a week of hours) and of the sensor page (a day: 3 partitions an hour).
MAX_FLEET_HOURS = 7 * 24
MAX_SENSOR_HOURS = 24
#: The range a page shows when it is given no ``start`` (ending at ``end``, or at the end of the current hour).
DEFAULT_HOURS = 24
#: Devices in one page of the heatmap, and drifting sensors listed.
DEVICES_PER_PAGE = 50
TOP_DRIFTING = 20
#: Highest device page a request may ask for (50 devices a page: five million devices).
MAX_DEVICE_PAGE = 100_000
#: Windows of one sensor drawn at most (a day has 1440).
MAX_SENSOR_WINDOWS = 5000
#: Model versions of one sensor whose training range is looked up (the newest that scored it in the range).
MAX_MODEL_VERSIONS = 5
#: A device id or tag asked for: at most this many characters, none of them a control character. Names are only
#: compared with the partitions' values (a filter), never put into a path.
MAX_NAME_LENGTH = 256
#: A window is an anomaly where its decision value is not above this (``scorer.score``).
THRESHOLD = 0.0
HEALTH_COLUMNS = ["device_id", "tag", "windows", "anomalies", "psi", "drifting", "drift_hours", "quarantined"]
#: The most storage calls one request makes, whatever it asks (the range limits times the blobs of an hour):
#: the fleet view reads an hour's health manifest and partition; the sensor view reads an hour's predictions,
#: quarantine and health partitions, and per model version its manifest and index (after two existence checks).
#: Neither lists a container. A partition the sensor view reads is one blob: a properties request, then a few ranged
#: reads (its footer, the row groups that can hold the sensor).
FLEET_MAX_READS = 2 * MAX_FLEET_HOURS
SENSOR_MAX_READS = 3 * MAX_SENSOR_HOURS + 4 * MAX_MODEL_VERSIONS

_ISO_EXAMPLE = "2026-11-24T05:00Z"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class RangeError(ValueError):
    """A request the pages refuse before reading anything: a time that is not an ISO time, a range reversed, off
    whole UTC hours or longer than they read, a device page or name out of bounds. The message states the rule."""


def parse_bound(text: str, name: str) -> datetime:
    """An ISO 8601 time given as ``start``/``end``, in UTC: no offset means UTC, any other offset is converted
    (``19:00+02:00`` is ``17:00Z``), so every hour shown and labelled is a UTC hour, as partitions are."""
    rule = f"{name} must be an ISO 8601 time on a whole UTC hour, like {_ISO_EXAMPLE} (no offset means UTC)"
    if len(text) > 64:
        raise RangeError(f"{name} is {len(text)} characters long: {rule}")
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        utc = moment.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise RangeError(f"{name} {text!r} is not a valid time ({exc}): {rule}") from None
    if utc.minute or utc.second or utc.microsecond:
        shown = f" ({utc:%Y-%m-%dT%H:%M}Z in UTC)" if moment.utcoffset() else ""
        raise RangeError(f"{name} {text!r}{shown} is not on a whole UTC hour: {rule}")
    return utc.replace(tzinfo=timezone.utc)


def check_range(start: datetime, end: datetime, limit: int) -> list[datetime]:
    """The whole UTC hours of [start, end); a clear error beyond ``limit`` hours or off whole hours. The span is
    computed before any hour is listed, so an absurd range is refused at once."""
    start, end = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
    if end <= start:
        raise RangeError(f"end {end.isoformat()} is not after start {start.isoformat()}")
    if any(t.minute or t.second or t.microsecond for t in (start, end)):
        raise RangeError("start and end must be whole UTC hours")
    span = (end - start) // HOUR
    if span > limit:
        raise RangeError(f"{span} hours asked, at most {limit} are shown at once; narrow the range")
    return hours_of(start, end)


def request_range(
    start: str | None, end: str | None, limit: int, *, default_hours: int = DEFAULT_HOURS, now: datetime | None = None
) -> list[datetime]:
    """The hours a request's ``start``/``end`` texts name (each optional), checked before anything is read: no
    ``end`` is the end of the current UTC hour, no ``start`` is ``default_hours`` (at most ``limit``) before it."""
    given = parse_bound(start, "start") if start else None
    if end:
        stop = parse_bound(end, "end")
    else:
        moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        stop = moment.replace(minute=0, second=0, microsecond=0) + HOUR
    try:
        first = given or stop - min(default_hours, limit) * HOUR
    except OverflowError:
        raise RangeError(f"the range before end {end!r} leaves the calendar; give a start") from None
    return check_range(first, stop, limit)


def check_name(value: str, what: str) -> str:
    """A device id or tag as a request gives it: refused when empty, longer than ``MAX_NAME_LENGTH`` or holding a
    control character (no landed name can be matched by such a text that the pages could show)."""
    if not value or len(value) > MAX_NAME_LENGTH or _CONTROL.search(value):
        raise RangeError(
            f"{what} must be 1 to {MAX_NAME_LENGTH} characters without control characters "
            f"(got {len(value)} characters{', with a control character' if _CONTROL.search(value) else ''})"
        )
    return value


def check_page(page: int) -> int:
    if not 0 <= page <= MAX_DEVICE_PAGE:
        raise RangeError(f"page must be a whole number from 0 to {MAX_DEVICE_PAGE}, got {page}")
    return page


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


def _read_table(storage: Storage, container: str, path: str, columns: list[str]) -> pa.Table | None:
    """A whole partition in one request: the fleet page wants every sensor's row of the hour."""
    try:
        data = storage.read_bytes(container, path)
    except FileNotFoundError:
        return None
    return pq.read_table(io.BytesIO(data), columns=columns)


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
    """The fleet page's data over [start, end), from the health partitions and manifests only (at most
    ``FLEET_MAX_READS`` reads: the range and page are checked first)."""
    hours = check_range(start, end, MAX_FLEET_HOURS)
    check_page(device_page)
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
    """The sensor page's data over [start, end): its windows and quarantined rows, its health, its models (at most
    ``SENSOR_MAX_READS`` reads: the range and names are checked first)."""
    hours = check_range(start, end, MAX_SENSOR_HOURS)
    check_name(device_id, "device_id")
    check_name(tag, "tag")
    # through ranged reads: each partition's footer and the row groups whose statistics can hold the sensor
    only = [("device_id", "==", device_id), ("tag", "==", tag)]
    scored, rejected, healthy = [], [], []
    for h in hours:
        part = layout.Partition(h).data
        table = read_parquet_rows(
            storage, containers.predictions, part, ["window_end", "score", "is_anomaly", "model_version"], only
        )
        if table is not None:
            scored.append(table.to_pandas())
        table = read_parquet_rows(
            storage, containers.quarantine, part, ["window_end", REASON_COLUMN, "source_file", "run_id"], only
        )
        if table is not None:
            rejected.append(table.to_pandas())
        cols = ["windows", "anomalies", "anomaly_rate", "psi", "drifting", "drift_hours", "status", "model_version"]
        table = read_parquet_rows(storage, containers.health, part, cols, only)
        if table is not None and len(table):
            healthy.append(table.to_pandas().assign(hour=pd.Timestamp(h)))
    windows = _concat(scored, ["window_end", "score", "is_anomaly", "model_version"]).sort_values("window_end")
    truncated = len(windows) > MAX_SENSOR_WINDOWS
    windows = windows.tail(MAX_SENSOR_WINDOWS).reset_index(drop=True)
    quarantined = _concat(rejected, ["window_end", REASON_COLUMN, "source_file", "run_id"])
    # the newest versions that scored the sensor in the range (a day normally has one or two)
    found = [str(v) for v in reversed(windows["model_version"].dropna().unique())][:MAX_MODEL_VERSIONS]
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
    """The sensor's row of a version's index: its training range; empty when the registry lacks it. Existence is
    checked first: the registry's own errors for a missing version list every version (a listing per request)."""
    base = f"versions/{version}/"
    try:
        check_version(version)
        if not (
            storage.exists(containers.models, base + "manifest.json")
            and storage.exists(containers.models, base + "models.parquet")
        ):
            return {}
        index = registry.read_index(storage, containers.models, version)
    except (FileNotFoundError, ValueError, LookupError):  # not a version name, a registry fault, a tampered index
        return {}
    row = index[(index["device_id"] == device_id) & (index["tag"] == tag)]
    if row.empty:
        return {}
    first = row.iloc[0]
    return {k: first[k] for k in ("train_start", "train_end", "train_rows", "train_flagged_share") if k in row}
