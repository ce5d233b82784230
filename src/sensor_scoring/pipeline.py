"""The hour's steps, one function per DAG task, with blob storage in and out and small dicts between them.

Each step is idempotent: it writes to paths derived from the run and overwrites what a failed try left, so
Airflow retries and re-runs never double a row. The DAG passes only the returned dicts (a few hundred bytes
per shard) through XCom; the data itself stays in the staging container.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sensor_scoring import settings as config, models, storage as st
from sensor_scoring.scorer import score
from sensor_scoring.storage import Storage
from sensor_scoring.validation import REASON_COLUMN, check_windows
from sensor_scoring.windows import (
    HOUR,
    SOURCE_COLUMN,
    WINDOW,
    folders_for_interval,
)

log = logging.getLogger(__name__)

PREDICTION_SCHEMA = pa.schema([
    ("device_id", pa.string()),
    ("tag", pa.string()),
    ("window_start", pa.timestamp("us", tz="UTC")),
    ("window_end", pa.timestamp("us", tz="UTC")),
    ("value_avg", pa.float64()),
    ("value_min", pa.float64()),
    ("value_max", pa.float64()),
    ("value_std", pa.float64()),
    ("reading_count", pa.int64()),
    ("score", pa.float64()),
    ("is_anomaly", pa.bool_()),
    ("model_version", pa.string()),
    ("run_id", pa.string()),
    ("scored_at", pa.timestamp("us", tz="UTC")),
])
QUARANTINE_SCHEMA = pa.schema([
    ("device_id", pa.string()),
    ("tag", pa.string()),
    ("window_end", pa.timestamp("us", tz="UTC")),
    ("value_avg", pa.float64()),
    ("value_min", pa.float64()),
    ("value_max", pa.float64()),
    ("value_std", pa.float64()),
    ("reading_count", pa.float64()),  # float: a quarantined count may be fractional or missing
    (SOURCE_COLUMN, pa.string()),
    (REASON_COLUMN, pa.string()),
    ("run_id", pa.string()),
])


class StorageUnavailable(RuntimeError):
    """Blob storage stayed unreachable through the whole retry budget of a call."""


def names_storage_outages(step):  # type: ignore[no-untyped-def]
    """Say plainly when a step failed because storage stayed away, instead of a bare socket error."""

    @functools.wraps(step)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return step(*args, **kwargs)
        except Exception as exc:
            from azure.core.exceptions import ServiceRequestError, ServiceResponseError

            if not isinstance(exc, (ServiceRequestError, ServiceResponseError)):
                raise
            first = args[0] if args else None
            storage = getattr(first, "storage", first)
            where = storage.describe() if hasattr(storage, "describe") else "blob storage"
            retries = getattr(storage, "retry_total", "?")
            raise StorageUnavailable(
                f"{step.__name__}: {where} is unreachable after {retries} retries with exponential backoff "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). Check the storage account and the "
                f"network; the budget is set by {st.RETRIES_ENV} and {st.RETRY_BACKOFF_ENV}."
            ) from exc

    return wrapper


class AccountingError(RuntimeError):
    """Landed windows that are neither scored, quarantined nor counted duplicates: refuse to commit."""


@dataclass(frozen=True)
class Hour:
    """Where one run reads and writes: its storage, containers, id and interval [start, end)."""

    storage: Storage
    containers: config.Containers
    run_id: str
    start: datetime
    end: datetime

    @property
    def run_key(self) -> str:
        return run_key(self.run_id)


def run_key(run_id: str) -> str:
    """A blob-safe, collision-free folder name for a run id (Airflow ids hold ``:`` and ``+``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)[:80]
    return f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def resolve_interval(
    window_start: str | None,
    window_end: str | None,
    data_interval_start: datetime | None,
    data_interval_end: datetime | None,
    run_after: datetime | None = None,
) -> tuple[datetime, datetime]:
    """The hours a run scores: explicit params, else the data interval, else the last complete hour.

    Manual runs in Airflow 3 may have no logical date and a zero-length interval; they then score the
    hour that ended last before the run was requested. Bounds must sit on whole hours, since an hour's
    partition is replaced as a whole.
    """
    if window_start or window_end:
        if not (window_start and window_end):
            raise ValueError("give both window_start and window_end, or neither")
        start, end = parse_utc(window_start), parse_utc(window_end)
    elif data_interval_start and data_interval_end and data_interval_end > data_interval_start:
        start, end = data_interval_start, data_interval_end
    else:
        moment = run_after or data_interval_end or datetime.now(timezone.utc)
        end = moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        start = end - HOUR
    start, end = _plain_utc(start), _plain_utc(end)
    for name, bound in (("start", start), ("end", end)):
        if bound.minute or bound.second or bound.microsecond:
            raise ValueError(f"window {name} {bound.isoformat()} is not on a whole hour")
    if end <= start:
        raise ValueError(f"window end {end.isoformat()} is not after window start {start.isoformat()}")
    return start, end


def _plain_utc(moment: datetime) -> datetime:
    """A stdlib UTC datetime: pendulum's (Airflow's) loses its zone in some arithmetic."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment} has no time zone")
    return datetime.fromtimestamp(moment.timestamp(), tz=timezone.utc)


def parse_utc(text: str) -> datetime:
    """An ISO time; UTC when it names no offset."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def hours_of(start: datetime, end: datetime) -> list[datetime]:
    out, moment = [], start
    while moment < end:
        out.append(moment)
        moment += HOUR
    return out


@names_storage_outages
def windows_landed(hour: Hour, *, late_folders: int, settle_minutes: float, now: datetime | None = None) -> tuple[bool, str]:
    """Has the interval's output landed? Stream Analytics gives no end-of-hour marker, so:

    landed when a folder after the interval holds a blob (the job has moved on), or when the interval's
    folders hold blobs and none was written in the last ``settle_minutes`` (the job has gone quiet).
    """
    now = now or datetime.now(timezone.utc)
    folders = folders_for_interval(hour.start, hour.end, late_folders=0)
    after = folders_for_interval(hour.end, hour.end + HOUR * max(1, late_folders), late_folders=0)
    container = hour.containers.windows
    for folder in after:
        if hour.storage.list(container, folder + "/"):
            return True, f"windows have landed: the stream has moved on to folder {folder}"
    blobs = [b for folder in folders for b in hour.storage.list(container, folder + "/")]
    if not blobs:
        return False, f"no windows yet in {', '.join(folders)}"
    quiet = now - max(b.last_modified for b in blobs)
    if quiet >= timedelta(minutes=settle_minutes):
        return True, f"windows have landed: {len(blobs)} file(s), none new for {quiet}"
    return False, f"{len(blobs)} file(s) so far, last one {quiet} ago; waiting for {settle_minutes} quiet minutes"


def _quarantine_frame(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    out = frame.reindex(columns=[f.name for f in QUARANTINE_SCHEMA]).copy()
    out["reading_count"] = pd.to_numeric(out["reading_count"], errors="coerce").astype("float64")
    out["run_id"] = run_id
    return out


#: Default of the DAG param ``max_quarantine_share``: above this share of an hour's landed windows failing
#: validation, the run fails (and alerts) instead of committing.
DEFAULT_MAX_QUARANTINE_SHARE = 0.1
_FOLDER = re.compile(r"^(\d{4})/(\d{2})/(\d{2})/(\d{2})/")


class DataError(ValueError):
    """The input is wrong, not the infrastructure: retrying cannot help, so the task fails without retries."""


class ValidationThresholdError(DataError):
    """Too large a share of an hour's windows failed validation; the report and rows are kept in staging."""


def folder_hour(source_file: str) -> datetime | None:
    """The hour of the Stream Analytics folder (``YYYY/MM/DD/HH/``) a file landed in."""
    match = _FOLDER.match(source_file)
    return datetime(*map(int, match.groups()), tzinfo=timezone.utc) if match else None  # type: ignore[misc]


def _folder_hours(files: pd.Series) -> pd.Series:
    """``folder_hour`` of each row's source file, computed once per distinct file (an hour has few files)."""
    hours = {name: folder_hour(str(name)) for name in pd.unique(files.dropna())}
    return pd.to_datetime(files.map(hours), utc=True)


def partition_hours(frame: pd.DataFrame, start: datetime, end: datetime) -> pd.Series:
    """The hour partition each row belongs to: its window_end's hour inside [start, end), else the hour of
    the folder it landed in (a stray window or one without window_end is kept where it was found)."""
    ends = frame["window_end"]
    inside = (ends >= pd.Timestamp(start)) & (ends < pd.Timestamp(end))
    by_window = ends.dt.floor("h")
    by_folder = _folder_hours(frame[SOURCE_COLUMN])
    return by_window.where(inside.fillna(False).astype(bool), by_folder).astype("datetime64[ns, UTC]")


def select_hour_rows(windows: pd.DataFrame, start: datetime, end: datetime, late_folders: int) -> pd.DataFrame:
    """The rows this run owns: window_end in [start, end) from any folder read, plus strays of its own folders.

    A stray sits in one of the interval's own folders but no run will ever read it there: its window_end is
    missing, or its hour's run (which reads that hour's folder and ``late_folders`` more) does not reach this
    folder. Strays are validated (and quarantined as ``window_outside_interval`` or ``null_key``) by this run,
    so that nothing landed is silently skipped by every hour. Assumes every run uses the same late_folders.
    """
    ends = windows["window_end"]
    inside = ((ends >= pd.Timestamp(start)) & (ends < pd.Timestamp(end))).fillna(False).astype(bool)
    folder = _folder_hours(windows[SOURCE_COLUMN])
    own = (folder >= pd.Timestamp(start)) & (folder < pd.Timestamp(end))
    own_hour = ends.dt.floor("h")
    claimed = (folder >= own_hour) & (folder <= own_hour + pd.Timedelta(hours=late_folders))
    stray = own.fillna(False).astype(bool) & ~inside & ~claimed.fillna(False).astype(bool)
    return windows.loc[inside | stray].reset_index(drop=True)


def _hour_key(moment: pd.Timestamp | datetime) -> str:
    return pd.Timestamp(moment).to_pydatetime().isoformat()


def _count_by_hour(hours: pd.Series) -> Counter:
    """Rows per partition hour, keyed by ISO hour (counted first, converted once per hour)."""
    return Counter({_hour_key(h): int(n) for h, n in hours.value_counts(dropna=False).items() if not pd.isna(h)})


@names_storage_outages
def load_and_validate(hour: Hour, *, late_folders: int = 1,
                      max_quarantine_share: float = DEFAULT_MAX_QUARANTINE_SHARE,
                      devices: list[str] | None = None, tags: list[str] | None = None) -> dict[str, object]:
    """Read the interval's folders, keep the windows it owns, validate them with the suite, stage the result.

    Corrupt files are set aside whole (listed in the summary and later the manifest); a file with a broken
    structure raises ``WindowSchemaError`` naming file and column. Per hour, if the share of landed windows
    failing validation exceeds ``max_quarantine_share``, ``ValidationThresholdError`` is raised after the
    validation report and the failing rows are staged, so that the failed run shows why.

    With ``devices``/``tags`` (a rescoring subset) only those sensors' windows are taken: the rest of the
    hour stays as committed before (see ``keep_unrescored``).
    """
    from sensor_scoring.validation.expectations import ROW_REASONS, SUITE_NAME, SchemaViolation, load_bounds
    from sensor_scoring.windows import WindowSchemaError, read_landed_files

    folders = folders_for_interval(hour.start, hour.end, late_folders=late_folders)
    read = read_landed_files(hour.storage, hour.containers.windows, folders)
    landed = select_sensors(select_hour_rows(read.windows, hour.start, hour.end, late_folders), devices, tags)
    bounds = load_bounds()
    try:
        checked = check_windows(landed, hour.start, hour.end, bounds)
    except SchemaViolation as exc:
        files = sorted(set(landed[SOURCE_COLUMN].dropna()))
        raise WindowSchemaError(f"{exc} in the windows of {', '.join(files[:5])}{' ...' if len(files) > 5 else ''}") from exc
    prefix = st.staging_prefix(hour.run_key)
    staging = hour.containers.staging
    quarantined = _quarantine_frame(checked.quarantined, hour.run_id)
    hour.storage.write_bytes(staging, prefix + "valid.parquet", st.parquet_bytes(checked.valid))
    hour.storage.write_bytes(staging, prefix + "quarantine-validate.parquet",
                             st.parquet_bytes(quarantined, QUARANTINE_SCHEMA))

    landed_hours = partition_hours(landed, hour.start, hour.end)
    per_hour_landed = _count_by_hour(landed_hours)
    dup_hours = _count_by_hour(landed_hours.loc[checked.duplicate_index]) if checked.duplicates else Counter()
    q_hours = partition_hours(checked.quarantined, hour.start, hour.end).map(_hour_key) if len(checked.quarantined) else pd.Series(dtype=object)
    interval_hours = [h.isoformat() for h in hours_of(hour.start, hour.end)]
    corrupt = [{**c, "hour": _corrupt_file_hour(str(c["file"]), hour).isoformat()} for c in read.corrupt]
    reports = {}
    for h in interval_hours:
        rows = checked.quarantined.loc[(q_hours == h).to_numpy()] if len(checked.quarantined) else checked.quarantined
        reasons = Counter(r for joined in rows[REASON_COLUMN] for r in str(joined).split(";")) if len(rows) else Counter()
        failing = len(rows)
        share = failing / per_hour_landed[h] if per_hour_landed[h] else 0.0
        reports[h] = {
            "suite": SUITE_NAME,
            "hour": h,
            "run_id": hour.run_id,
            "landed": per_hour_landed[h],
            "duplicates": dup_hours[h],
            "failing_rows": failing,
            "failing_share": round(share, 6),
            "max_quarantine_share": max_quarantine_share,
            "threshold_exceeded": share > max_quarantine_share,
            "failing_rows_by_reason": {r: reasons[r] for r in ROW_REASONS if reasons[r]},
            "quarantined_files": [c for c in corrupt if c["hour"] == h],
            "empty_files": [f for f in read.empty if (folder_hour(f) or hour.start).isoformat() == h],
        }
    report = {
        "suite": SUITE_NAME,
        "run_id": hour.run_id,
        "interval": {"start": hour.start.isoformat(), "end": hour.end.isoformat()},
        "evaluated_rows": int(len(landed) - checked.duplicates),
        "seconds": round(checked.seconds, 3),
        "physical_bounds": bounds.as_dict(),
        "expectations": checked.expectations,
        "hours": reports,
    }
    report_uri = st.make_uri(staging, prefix + "validation.json")
    hour.storage.write_bytes(staging, prefix + "validation.json", json.dumps(report, indent=2, default=str).encode())
    summary = {
        "run_id": hour.run_id,
        "run_key": hour.run_key,
        "start": hour.start.isoformat(),
        "end": hour.end.isoformat(),
        "files_read": len(read.files),
        "folders": folders,
        "landed": len(landed),
        "landed_by_hour": dict(per_hour_landed),
        "valid": len(checked.valid),
        "duplicates": checked.duplicates,
        "quarantined": len(checked.quarantined),
        "quarantine_reasons": dict(Counter(checked.quarantined[REASON_COLUMN])) if len(checked.quarantined) else {},
        "sensors": int(checked.valid[["device_id", "tag"]].drop_duplicates().shape[0]),
        "quarantined_files": corrupt,
        "empty_files": read.empty,
        "max_quarantine_share": max_quarantine_share,
        "validation_report": report_uri,
    }
    summary.update(subset_summary(landed, checked.valid, checked.quarantined, devices, tags))
    log.info(
        "Read %d file(s) in %s: %d window(s) owned by [%s, %s); %d valid, %d quarantined %s, %d duplicate(s) collapsed",
        len(read.files), ", ".join(folders), len(landed), hour.start.isoformat(), hour.end.isoformat(),
        len(checked.valid), len(checked.quarantined), summary["quarantine_reasons"], checked.duplicates,
    )
    log.info("Validation (great-expectations suite %s, %d expectations, %.2f s): %s", SUITE_NAME,
             len(checked.expectations), checked.seconds,
             "; ".join(f"{h}: {r['failing_rows']}/{r['landed']} failing {r['failing_rows_by_reason'] or ''}"
                       for h, r in reports.items()))
    for c in corrupt:
        log.warning("Quarantined corrupt file %s (%d bytes): %s", c["file"], c["bytes"], c["error"])
    for h, r in reports.items():
        if not r["landed"]:
            log.warning("Hour %s: no windows landed%s; it will be committed as an empty partition (status empty)", h,
                        f" ({len(r['quarantined_files'])} corrupt file(s))" if r["quarantined_files"] else "")
    over = {h: r for h, r in reports.items() if r["threshold_exceeded"]}
    if over:
        detail = "; ".join(f"hour {h}: {r['failing_rows']} of {r['landed']} windows ({r['failing_share']:.1%}) failed "
                           f"validation ({', '.join(f'{k} {v}' for k, v in r['failing_rows_by_reason'].items())})"
                           for h, r in over.items())
        raise ValidationThresholdError(
            f"{detail}; above max_quarantine_share {max_quarantine_share:.1%}. Nothing was committed. "
            f"Validation report: {report_uri}; failing rows: {st.make_uri(staging, prefix + 'quarantine-validate.parquet')}. "
            "Fix the input and re-run the hour, or re-run with a higher max_quarantine_share to score the rest."
        )
    return summary


def _corrupt_file_hour(name: str, hour: Hour) -> datetime:
    """A corrupt file is listed under its folder's hour if the run owns it, else under the run's last hour
    (a late folder: the file may hold this interval's late windows)."""
    found = folder_hour(name)
    if found is not None and hour.start <= found < hour.end:
        return found
    return hour.end - HOUR


@names_storage_outages
def plan_shards(hour: Hour, summary: dict[str, object], *, model_version: str, sensors_per_shard: int) -> list[dict[str, object]]:
    """Group sensors with a model into shards of ``sensors_per_shard``, one input blob and spec per shard.

    Sensors without a model in the chosen version are quarantined as ``no_model``. Returns one small dict
    per shard (spec URI and a label for the UI): that list is what the DAG maps over.
    """
    if sensors_per_shard < 1:
        raise ValueError("sensors_per_shard must be at least 1")
    staging, prefix = hour.containers.staging, st.staging_prefix(hour.run_key)
    valid = st.read_parquet(hour.storage, staging, prefix + "valid.parquet")
    version = models.resolve_version(hour.storage, hour.containers.models, model_version)
    index = models.read_index(hour.storage, hour.containers.models, version)
    sensors = valid[["device_id", "tag"]].drop_duplicates().sort_values(["device_id", "tag"])
    joined = sensors.merge(index[["device_id", "tag", "pack", "row", "sha256"]], on=["device_id", "tag"], how="left")
    has_model = joined["pack"].notna()
    orphans = valid.merge(joined.loc[~has_model, ["device_id", "tag"]], on=["device_id", "tag"])
    hour.storage.write_bytes(
        staging, prefix + "quarantine-plan.parquet",
        st.parquet_bytes(_quarantine_frame(orphans.assign(**{REASON_COLUMN: "no_model"}), hour.run_id), QUARANTINE_SCHEMA),
    )
    hour.storage.write_bytes(staging, prefix + "plan.json", json.dumps({"model_version": version}).encode())
    modelled = joined.loc[has_model].reset_index(drop=True)
    modelled["row"] = modelled["row"].astype("int64")
    modelled["shard"] = np.arange(len(modelled)) // sensors_per_shard
    # one pass over the hour: every window learns its shard, then each shard's rows are one group
    rows_by_shard = dict(iter(valid.merge(modelled[["device_id", "tag", "shard"]], on=["device_id", "tag"]).groupby("shard")))
    shards = []
    for number, members in modelled.groupby("shard", sort=True):
        number = int(number)
        shard_dir = st.shard_prefix(hour.run_key, number)
        rows = rows_by_shard[number].drop(columns="shard")
        hour.storage.write_bytes(staging, shard_dir + "input.parquet", st.parquet_bytes(rows))
        spec = {
            "run_id": hour.run_id,
            "run_key": hour.run_key,
            "shard": number,
            "model_version": version,
            "containers": {"models": hour.containers.models, "staging": staging},
            "input": st.make_uri(staging, shard_dir + "input.parquet"),
            "output_prefix": st.make_uri(staging, shard_dir),
            "models": members[["device_id", "tag", "pack", "row", "sha256"]].to_dict(orient="records"),
        }
        spec_uri = st.make_uri(staging, shard_dir + "spec.json")
        hour.storage.write_bytes(staging, shard_dir + "spec.json", json.dumps(spec).encode())
        shards.append({"spec_uri": spec_uri, "shard": number, "sensors": len(members), "windows": len(rows),
                       "label": shard_label(number, members)})
    log.info("Model version %s: %d sensor(s) in %d shard(s) of up to %d; %d sensor(s) without a model (%d windows quarantined)",
             version, len(modelled), len(shards), sensors_per_shard, int((~has_model).sum()), len(orphans))
    return shards


def shard_label(number: int, members: pd.DataFrame) -> str:
    """Name of a mapped task instance in the UI: the sensors it scores."""
    first = f"{members.iloc[0]['device_id']}/{members.iloc[0]['tag']}"
    if len(members) == 1:
        return first
    last = f"{members.iloc[-1]['device_id']}/{members.iloc[-1]['tag']}"
    return f"shard {number}: {first} .. {last} ({len(members)} sensors)"


@names_storage_outages
def score_shard(storage: Storage, spec_uri: str) -> dict[str, object]:
    """The work of one shard, the same wherever it runs: load its models, score, write outputs.

    ``result.json`` is written last; its presence means the shard's outputs are complete.
    """
    container, spec_path = st.parse_uri(spec_uri)
    spec = json.loads(storage.read_bytes(container, spec_path))
    in_container, in_path = st.parse_uri(spec["input"])
    out_container, out_prefix = st.parse_uri(spec["output_prefix"])
    windows = st.read_parquet(storage, in_container, in_path)
    wanted = pd.DataFrame(spec["models"])
    loaded, refused = models.load_models(storage, spec["containers"]["models"], spec["model_version"], wanted)
    sensors = pd.MultiIndex.from_frame(windows[["device_id", "tag"]])
    usable = sensors.isin(list(loaded))
    scored = score(windows.loc[usable], loaded) if usable.any() else windows.iloc[:0].assign(score=[], is_anomaly=[])
    now = pd.Timestamp.now(tz="UTC")
    scored = scored.assign(
        window_start=scored["window_end"] - WINDOW,
        model_version=spec["model_version"],
        run_id=spec["run_id"],
        scored_at=now,
    )
    reasons = pd.DataFrame([(d, t, r) for (d, t), r in refused.items()], columns=["device_id", "tag", REASON_COLUMN])
    rejected = windows.loc[~usable].merge(reasons, on=["device_id", "tag"], how="left")
    rejected[REASON_COLUMN] = rejected[REASON_COLUMN].fillna("model_missing")
    predictions = scored.reindex(columns=PREDICTION_SCHEMA.names)
    storage.write_bytes(out_container, out_prefix + "predictions.parquet", st.parquet_bytes(predictions, PREDICTION_SCHEMA))
    storage.write_bytes(out_container, out_prefix + "quarantine.parquet",
                        st.parquet_bytes(_quarantine_frame(rejected, spec["run_id"]), QUARANTINE_SCHEMA))
    result = {
        "shard": spec["shard"],
        "output_prefix": spec["output_prefix"],
        "scored": len(predictions),
        "anomalies": int(predictions["is_anomaly"].sum()),
        "quarantined": len(rejected),
        "sensors": len(wanted),
        "refused_models": {f"{d}/{t}": r for (d, t), r in sorted(refused.items())},
    }
    storage.write_bytes(out_container, out_prefix + "result.json", json.dumps(result).encode())
    return result


def read_shard_result(storage: Storage, output_prefix: str) -> dict[str, object]:
    container, prefix = st.parse_uri(output_prefix)
    return json.loads(storage.read_bytes(container, prefix + "result.json"))


def _file_sha256(path: Path) -> str:
    """Hash a file in chunks: an hour's file can be far larger than one shard."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


VALIDATION_FILE = "_validation.json"


def _staged_report(storage: Storage, staging: str, prefix: str) -> dict[str, object]:
    """The run's validation report, staged by load_and_validate (absent for runs staged before it existed)."""
    try:
        return json.loads(storage.read_bytes(staging, prefix + "validation.json"))
    except FileNotFoundError:
        return {}


def _quarantine_files(storage: Storage, hour: Hour, part: str, corrupt: list[dict[str, object]]) -> list[dict[str, object]]:
    """Copy each corrupt file of the hour beside its quarantine partition (under ``files/``), kept byte for byte."""
    storage.delete_prefix(hour.containers.quarantine, part + "files/")
    listed = []
    for entry in corrupt:
        name = str(entry["file"])
        try:
            data = storage.read_bytes(hour.containers.windows, name)
            copy = part + "files/" + name
            storage.write_bytes(hour.containers.quarantine, copy, data)
            where = st.make_uri(hour.containers.quarantine, copy)
        except FileNotFoundError:
            where = None  # deleted from windows since it was read; the manifest still names it
        listed.append({"file": name, "bytes": entry["bytes"], "sha256": entry["sha256"], "error": entry["error"],
                       "reason": "corrupt_file", "copy": where})
    return listed


@names_storage_outages
def commit(hour: Hour, summary: dict[str, object], shard_results: list[dict[str, object]]) -> list[dict[str, object]]:
    """Check the accounting, then replace each hour's predictions and quarantine partitions.

    Each partition is one Parquet file uploaded in one blob commit (old or new, never a mix), followed by
    its ``_manifest.json``. Shard outputs are streamed into per-hour files on local disk, so memory holds one
    shard at a time however large the hour is.
    """
    storage, staging, prefix = hour.storage, hour.containers.staging, st.staging_prefix(hour.run_key)
    model_version = json.loads(storage.read_bytes(staging, prefix + "plan.json"))["model_version"]
    quarantine = pd.concat(
        [st.read_parquet(storage, staging, prefix + name) for name in ("quarantine-validate.parquet", "quarantine-plan.parquet")]
        + [st.read_parquet(storage, *st.parse_uri(r["output_prefix"] + "quarantine.parquet")) for r in shard_results],
        ignore_index=True,
    )
    scored_total = sum(int(r["scored"]) for r in shard_results)
    accounted = scored_total + len(quarantine) + int(summary["duplicates"])
    if accounted != summary["landed"]:
        raise AccountingError(
            f"landed {summary['landed']} windows but scored {scored_total} + quarantined {len(quarantine)} "
            f"+ duplicates {summary['duplicates']} = {accounted}; refusing to commit"
        )
    hours = hours_of(hour.start, hour.end)
    manifests = []
    with tempfile.TemporaryDirectory(prefix="commit-") as tmp:
        writers = {h: pq.ParquetWriter(Path(tmp) / f"{h:%Y%m%d%H}.parquet", PREDICTION_SCHEMA) for h in hours}
        counts = {h: Counter() for h in hours}
        try:
            kept = keep_unrescored(hour, hours, summary.get("subset"))  # a subset rescoring keeps the other rows
            for h, rest in kept.items():
                writers[h].write_table(rest.predictions)
                counts[h].update(scored=rest.scored, anomalies=rest.anomalies)
            for result in sorted(shard_results, key=lambda r: int(r["shard"])):
                frame = st.read_parquet(storage, *st.parse_uri(result["output_prefix"] + "predictions.parquet"))
                for h, rows in frame.groupby(frame["window_end"].dt.floor("h"), sort=True):
                    h = h.to_pydatetime()
                    writers[h].write_table(pa.Table.from_pandas(rows, schema=PREDICTION_SCHEMA, preserve_index=False))
                    counts[h]["scored"] += len(rows)
                    counts[h]["anomalies"] += int(rows["is_anomaly"].sum())
        finally:
            for writer in writers.values():
                writer.close()
        q_hour = partition_hours(quarantine, hour.start, hour.end)
        report = _staged_report(storage, staging, prefix)
        committed_at = datetime.now(timezone.utc).isoformat()
        for h in hours:
            part = st.partition_prefix(h)
            local = Path(tmp) / f"{h:%Y%m%d%H}.parquet"
            storage.upload_file(hour.containers.predictions, part + st.PARTITION_FILE, local)
            q_rows = quarantine.loc[q_hour == pd.Timestamp(h)]
            if h in kept:
                q_rows = pd.concat([kept[h].quarantine, q_rows], ignore_index=True)
            storage.write_bytes(hour.containers.quarantine, part + st.PARTITION_FILE, st.parquet_bytes(q_rows, QUARANTINE_SCHEMA))
            landed = int(summary["landed_by_hour"].get(h.isoformat(), 0))  # type: ignore[union-attr]
            landed += kept[h].landed if h in kept else 0  # a subset rescoring: rows it keeps count too
            hour_report = (report.get("hours") or {}).get(h.isoformat(), {})
            duplicates = landed - counts[h]["scored"] - len(q_rows)
            expected_duplicates = hour_report.get("duplicates", 0) + (kept[h].duplicates if h in kept else 0)
            if "duplicates" in hour_report and duplicates != expected_duplicates:
                raise AccountingError(
                    f"hour {h.isoformat()}: landed {landed} but scored {counts[h]['scored']} + quarantined {len(q_rows)} "
                    f"+ duplicates {expected_duplicates} = {counts[h]['scored'] + len(q_rows) + expected_duplicates}; "
                    "refusing to commit")
            bad_files = _quarantine_files(storage, hour, part, [c for c in summary.get("quarantined_files", [])  # type: ignore[union-attr]
                                                               if c["hour"] == h.isoformat()])
            if hour_report:
                storage.write_bytes(hour.containers.quarantine, part + VALIDATION_FILE,
                                    json.dumps({**report, "hours": {h.isoformat(): hour_report}}, indent=2, default=str).encode())
            manifest = {
                "run_id": hour.run_id,
                "model_version": model_version,
                "hour": h.isoformat(),
                "interval": {"start": hour.start.isoformat(), "end": hour.end.isoformat()},
                "committed_at": committed_at,
                "counts": {
                    "landed": landed,
                    "scored": counts[h]["scored"],
                    "quarantined": len(q_rows),
                    "duplicates": duplicates,
                    "anomalies": counts[h]["anomalies"],
                },
                "quarantine_reasons": dict(Counter(q_rows[REASON_COLUMN])),
                "files": [{
                    "container": hour.containers.predictions,
                    "path": part + st.PARTITION_FILE,
                    "rows": counts[h]["scored"],
                    "bytes": local.stat().st_size,
                    "sha256": _file_sha256(local),
                }, {
                    "container": hour.containers.quarantine,
                    "path": part + st.PARTITION_FILE,
                    "rows": len(q_rows),
                }],
                "source_folders": summary["folders"],
                # the hour's status and its file-level quarantine: readers may rely on these keys
                "status": "scored" if landed else "empty",
                "quarantined_files": bad_files,
                "empty_files": [f for f in summary.get("empty_files", []) if (folder_hour(f) or h) == h],  # type: ignore[union-attr]
                "validation": {
                    "suite": report.get("suite"),
                    "report": f"az://{hour.containers.quarantine}/{part}{VALIDATION_FILE}" if hour_report else None,
                    "failing_rows": hour_report.get("failing_rows"),
                    "failing_share": hour_report.get("failing_share"),
                    "failing_rows_by_reason": hour_report.get("failing_rows_by_reason"),
                    "max_quarantine_share": hour_report.get("max_quarantine_share"),
                },
            }
            manifest.update(rescoring_record(manifest, summary, kept.get(h), local))
            body = json.dumps(manifest, indent=2).encode()
            storage.write_bytes(hour.containers.predictions, part + st.MANIFEST_FILE, body)
            storage.write_bytes(hour.containers.quarantine, part + st.MANIFEST_FILE, body)
            manifests.append(manifest)
            log.info("Committed %s: %s", part, manifest["counts"])
            if not landed:
                log.warning("Committed %s as an EMPTY hour: no windows landed for it%s", part,
                            f"; {len(bad_files)} corrupt file(s) quarantined" if bad_files else "")
    storage.delete_prefix(staging, prefix)
    return manifests


# --- Subset rescoring: replace some sensors' rows of committed hours, keep every other row as it was. ---

def select_sensors(windows: pd.DataFrame, devices: list[str] | None, tags: list[str] | None) -> pd.DataFrame:
    """The windows of the chosen devices and tags (an empty or missing list means all of them)."""
    mask = _subset_mask(windows, {"devices": list(devices or []), "tags": list(tags or [])})
    return windows if mask is None else windows.loc[mask].reset_index(drop=True)


def _subset_mask(frame: pd.DataFrame, subset: dict[str, list[str]] | None) -> pd.Series | None:
    """Rows of ``frame`` inside the subset; None when the subset is everything (nothing to filter)."""
    if not subset or not (subset.get("devices") or subset.get("tags")):
        return None
    mask = pd.Series(True, index=frame.index)
    if subset.get("devices"):
        mask &= frame["device_id"].isin(subset["devices"]).fillna(False).astype(bool)
    if subset.get("tags"):
        mask &= frame["tag"].isin(subset["tags"]).fillna(False).astype(bool)
    return mask


_NO_KEY = "\x00"  # stands in for a missing device_id or tag while counting, so such rows count too


def _sensor_counts(frame: pd.DataFrame) -> pd.Series:
    """Rows per (hour, device_id, tag), vectorised: an hour can hold millions of windows."""
    if frame.empty:
        return pd.Series(dtype="int64", index=pd.MultiIndex.from_arrays([[], [], []], names=["hour", "device_id", "tag"]))
    keys = pd.DataFrame({
        "hour": frame["window_end"].dt.floor("h"),
        "device_id": frame["device_id"].astype("string").fillna(_NO_KEY),
        "tag": frame["tag"].astype("string").fillna(_NO_KEY),
    })
    return keys.groupby(["hour", "device_id", "tag"], dropna=False).size()  # a stray without window_end counts too


def subset_summary(landed: pd.DataFrame, valid: pd.DataFrame, quarantined: pd.DataFrame,
                   devices: list[str] | None, tags: list[str] | None) -> dict[str, object]:
    """What ``load_and_validate`` adds to its summary for rescoring: the subset and duplicates per sensor.

    Duplicates are collapsed, so no row shows them afterwards; a later subset rescoring must know which
    sensors they belonged to, or the hour's ``landed`` count could not be rebuilt. Usually an empty list.
    """
    dups = _sensor_counts(landed).sub(_sensor_counts(valid), fill_value=0).sub(_sensor_counts(quarantined), fill_value=0)
    by_hour: dict[str, list[dict[str, object]]] = {}
    for (h, device_id, tag), n in dups[dups > 0].sort_index().items():
        by_hour.setdefault(pd.Timestamp(h).isoformat(), []).append({
            "device_id": None if device_id == _NO_KEY else device_id,
            "tag": None if tag == _NO_KEY else tag,
            "duplicates": int(n),
        })
    subset = {"devices": sorted(set(devices or [])), "tags": sorted(set(tags or []))}
    return {"subset": subset if (subset["devices"] or subset["tags"]) else None, "duplicates_by_sensor": by_hour}


@dataclass
class Kept:
    """The rows of one committed hour that a subset rescoring leaves alone, and what they count."""

    predictions: pa.Table
    quarantine: pd.DataFrame
    duplicates_by_sensor: list[dict[str, object]]
    previous: dict[str, object]

    @property
    def scored(self) -> int:
        return self.predictions.num_rows

    @property
    def anomalies(self) -> int:
        import pyarrow.compute as pc

        return int(pc.sum(pc.cast(self.predictions["is_anomaly"], pa.int64())).as_py() or 0) if self.scored else 0

    @property
    def duplicates(self) -> int:
        return sum(int(d["duplicates"]) for d in self.duplicates_by_sensor)

    @property
    def landed(self) -> int:
        return self.scored + len(self.quarantine) + self.duplicates


def keep_unrescored(hour: Hour, hours: list[datetime], subset: dict[str, list[str]] | None) -> dict[datetime, Kept]:
    """For a subset rescoring: each hour's committed rows outside the subset (empty dict for a full run).

    Predictions stay Arrow tables read straight from the committed file, so kept rows are rewritten with
    identical values; an hour never committed before keeps nothing.
    """
    if not subset or not (subset.get("devices") or subset.get("tags")):
        return {}
    kept = {}
    for h in hours:
        part = st.partition_prefix(h)
        try:
            previous = json.loads(hour.storage.read_bytes(hour.containers.predictions, part + st.MANIFEST_FILE))
            table = pq.read_table(io.BytesIO(hour.storage.read_bytes(hour.containers.predictions, part + st.PARTITION_FILE)))
            quarantine = st.read_parquet(hour.storage, hour.containers.quarantine, part + st.PARTITION_FILE)
        except FileNotFoundError:
            log.warning("Hour %s was never committed: the subset rescoring writes only the subset's rows", h.isoformat())
            previous, table, quarantine = {}, PREDICTION_SCHEMA.empty_table(), pd.DataFrame(columns=QUARANTINE_SCHEMA.names)
        table = table.select(PREDICTION_SCHEMA.names).cast(PREDICTION_SCHEMA)
        in_subset = _subset_mask(table.select(["device_id", "tag"]).to_pandas(), subset)
        table = table.filter(pa.array(~in_subset.to_numpy(dtype=bool))) if in_subset is not None else table
        q_in = _subset_mask(quarantine, subset)
        quarantine = quarantine.loc[~q_in].reset_index(drop=True) if q_in is not None and len(quarantine) else quarantine
        if "duplicates_by_sensor" in previous:
            dups = [d for d in previous["duplicates_by_sensor"]  # type: ignore[union-attr]
                    if not bool(_subset_mask(pd.DataFrame([d]), subset).iloc[0])]
        else:  # committed before per-sensor duplicates were recorded: keep its count whole
            dups = [{"device_id": None, "tag": None, "duplicates": int(previous.get("counts", {}).get("duplicates", 0))}]
            dups = [d for d in dups if d["duplicates"]]
        kept[h] = Kept(predictions=table, quarantine=quarantine, duplicates_by_sensor=dups, previous=previous)
        log.info("Hour %s: keeping %d prediction(s) and %d quarantined row(s) outside the subset %s",
                 h.isoformat(), table.num_rows, len(quarantine), subset)
    return kept


def rescoring_record(manifest: dict[str, object], summary: dict[str, object], kept: Kept | None,
                     local: Path) -> dict[str, object]:
    """Manifest fields for rescoring: what this run replaced (``subset``), the history of subset rescorings
    since the last full run (``rescored``), duplicates per sensor and rows per model version in the file.
    """
    h = str(manifest["hour"])
    dups = list(kept.duplicates_by_sensor if kept else []) + list(summary.get("duplicates_by_sensor", {}).get(h, []))  # type: ignore[union-attr]
    versions = pq.read_table(local, columns=["model_version"]).column("model_version").to_pandas().value_counts()
    subset = summary.get("subset")
    history: list[dict[str, object]] = []
    if subset:
        counts = manifest["counts"]  # type: ignore[index]
        mine = {
            "scored": counts["scored"] - kept.scored,  # type: ignore[union-attr]
            "quarantined": counts["quarantined"] - len(kept.quarantine),  # type: ignore[union-attr]
            "duplicates": counts["duplicates"] - kept.duplicates,  # type: ignore[union-attr]
            "anomalies": counts["anomalies"] - kept.anomalies,  # type: ignore[union-attr]
        }
        mine = {"landed": mine["scored"] + mine["quarantined"] + mine["duplicates"], **mine}
        history = list(kept.previous.get("rescored", [])) + [{  # type: ignore[union-attr]
            "run_id": manifest["run_id"],
            "model_version": manifest["model_version"],
            "devices": subset["devices"],  # type: ignore[index]
            "tags": subset["tags"],  # type: ignore[index]
            "committed_at": manifest["committed_at"],
            "counts": mine,
        }]
    return {
        "subset": subset,
        "rescored": history,
        "model_versions": {str(v): int(n) for v, n in sorted(versions.items())},
        "duplicates_by_sensor": dups,
    }
