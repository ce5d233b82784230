"""Reading a run's windows in bounded slices: the read_windows step and the checks every shard runs.

An hour (or any range) is read by groups of landed files (``read_windows``, one mapped task per group of about
``READ_GROUP_BYTES``): each group keeps the windows the run owns (``windows.ownership``), sets strays and rows the
reader rejected aside with their reason, and routes every row by sensor into the input folder of its shard, so
every copy of a window meets its duplicates in one shard. Each shard then checks its windows with the
great-expectations suite and adds their features (``check_shard``) before it scores them: no task ever holds the
whole hour. ``read_range`` runs the same functions one after the other in one process: what training reads.
Which shard a sensor goes to, and which files form a group, is ``steps.plan``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sensor_scoring import layout, storage as st
from sensor_scoring.contracts import (
    MISSING_COLUMN,
    READER_REASONS,
    REASON_COLUMN,
    ROW_REASONS,
    SOURCE_COLUMN,
    CorruptFile,
    HourSummary,
    HourValidation,
    Interval,
    ReadContainers,
    ReadResult,
    ReadSpec,
    SensorDuplicates,
    ShardPlan,
    ShardResult,
    ShardValidation,
    SkippedContextFile,
    SourceFiles,
    Subset,
    ValidationReport,
    ValidationThresholdError,
)
from sensor_scoring.features import LOOKBACK_MINUTES, add_features
from sensor_scoring.layout import HOUR
from sensor_scoring.runs.common import PART_KINDS, count_by_hour, hour_key, names_storage_outages, read_parts
from sensor_scoring.runs.rescoring import duplicates_by_sensor, select_sensors
from sensor_scoring.runs.scope import Scope
from sensor_scoring.storage import Storage
from sensor_scoring.validation import Checked, check_windows
from sensor_scoring.windows import (
    LATE_HORIZON,
    LandedFiles,
    WindowSchemaError,
    corrupt_owner,
    folder_hour,
    folders_for_interval,
    list_folders,
    partition_hours,
    read_files,
    restricted,
    set_aside_strays,
)

if TYPE_CHECKING:
    from sensor_scoring.validation.expectations import Bounds

log = logging.getLogger(__name__)

#: Default of the DAG param ``max_quarantine_share``: above this share of an hour's landed windows failing
#: validation, the run fails (and alerts) instead of committing.
DEFAULT_MAX_QUARANTINE_SHARE = 0.1
#: Landed bytes a read task takes at most (a group holds at least one file): sets a read task's memory, whatever
#: the hour's size. About 300,000 windows of Stream Analytics' line-separated JSON.
READ_GROUP_BYTES = 64 * 2**20


# --- planning the reads (called by plan_shards and read_range) ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Listing:
    """The blobs a run reads: its own folders' and the hour before's (read as lookback context only)."""

    folders: tuple[str, ...]
    files: tuple[str, ...]
    sizes: tuple[int, ...]


def list_range(scope: Scope, late_folders: int = LATE_HORIZON) -> Listing:
    """The run's folders (its hours and ``max(late_folders, LATE_HORIZON)`` later ones: a window's owner never
    depends on the parameter) and the hour before's folder, listed once: names and sizes, nothing read."""
    own = folders_for_interval(scope.start, scope.end, late_folders=max(late_folders, LATE_HORIZON))
    previous = folders_for_interval(scope.start - HOUR, scope.start, late_folders=LATE_HORIZON)
    blobs = list_folders(scope.storage, scope.containers.windows, list(dict.fromkeys(previous + own)))
    return Listing(tuple(own), tuple(b.name for b in blobs), tuple(int(b.size or 0) for b in blobs))


def file_groups(sizes: Sequence[int], group_bytes: int = READ_GROUP_BYTES) -> list[list[int]]:
    """Consecutive files in groups of at most ``group_bytes`` (a larger file is a group of its own)."""
    groups: list[list[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if not groups or total + size > group_bytes:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += size
    return groups


def stage_reads(
    scope: Scope,
    listing: Listing,
    *,
    shards: int,
    routing: str | None,
    subset: Subset | None,
    group_bytes: int = READ_GROUP_BYTES,
) -> list[ReadSpec]:
    """Write one spec per group of files (``layout.Run.read``); a run with no file still reads once (an empty
    group), so that every run reports on its folders the same way."""
    run = layout.Run(scope.run_key)
    groups = file_groups(listing.sizes, group_bytes) or [[]]
    specs = []
    for number, members in enumerate(groups):
        folder = run.read(number)
        spec = ReadSpec(
            run_id=scope.run_id,
            run_key=scope.run_key,
            group=number,
            start=scope.start,
            end=scope.end,
            containers=ReadContainers(windows=scope.containers.windows, staging=scope.containers.staging),
            files=tuple(listing.files[i] for i in members),
            folders=listing.folders,
            shards=shards,
            routing=routing,
            subset=subset,
            output_prefix=st.make_uri(scope.containers.staging, folder.folder),
        )
        scope.storage.write_bytes(scope.containers.staging, folder.spec, spec.to_json())
        specs.append(spec)
    return specs


# --- read_windows: one group of files, routed by sensor -----------------------------------------------------------


def sensor_slots(frame: pd.DataFrame) -> np.ndarray:
    """A stable 64-bit hash of each row's (device_id, tag), the same in every process (missing names included):
    the slot that routes a sensor no routing table names."""
    device = frame["device_id"].astype("string").fillna("\0")
    tag = frame["tag"].astype("string").fillna("\0")
    keys = (device + "\x1f" + tag).astype(object)
    return pd.util.hash_pandas_object(keys, index=False).to_numpy(dtype=np.uint64)


def route(frame: pd.DataFrame, shards: int, routing: pd.DataFrame | None) -> np.ndarray:
    """The shard of each row: its sensor's in ``routing`` (device_id, tag, shard), else its slot modulo
    ``shards``."""
    out = (sensor_slots(frame) % np.uint64(max(shards, 1))).astype(np.int64)
    if routing is not None and len(routing) and len(frame):
        known = pd.MultiIndex.from_arrays([routing["device_id"].astype(object), routing["tag"].astype(object)])
        rows = pd.MultiIndex.from_arrays([frame["device_id"].astype(object), frame["tag"].astype(object)])
        found = known.get_indexer(rows)
        hit = found >= 0
        out[hit] = routing["shard"].to_numpy(dtype=np.int64)[found[hit]]
    return out


@names_storage_outages
def read_windows(storage: Storage, spec_uri: str) -> ReadResult:
    """Read one group of landed files, keep the windows the run owns and route every row to its shard.

    A file whose structure breaks the contract fails the task (``WindowSchemaError``, naming file and column) if
    it is in the run's own folders; one of the hour before's folder, read only for the lookback, is named in the
    result instead. Corrupt files are listed (the hour that owns each copies and quarantines it in commit).
    ``result.json`` is written last: its presence means every part of the group is in place.
    """
    spec = ReadSpec.from_json(storage.read_bytes(*st.parse_uri(spec_uri)), source=spec_uri)
    staging, windows = spec.containers.staging, spec.containers.windows
    run = layout.Run(spec.run_key)
    read = read_files(storage, windows, spec.files, keep_broken=True)
    own_folders = list(spec.folders)
    own = restricted(read, own_folders, spec.start, spec.end)
    own.raise_broken()
    previous = [folder for folder in _folders_of(spec.files) if folder not in own_folders]
    before = restricted(read, previous + own_folders, spec.start - HOUR, spec.start)
    devices = list(spec.subset.devices) if spec.subset else None
    tags = list(spec.subset.tags) if spec.subset else None
    names = _stage_names(storage, staging, run.read(spec.group), own, spec.subset)
    landed, rejected = set_aside_strays(
        select_sensors(own.windows, devices, tags), select_sensors(own.rejected, devices, tags)
    )
    ends = before.windows["window_end"]
    recent = before.windows.loc[(ends >= pd.Timestamp(spec.start - timedelta(minutes=LOOKBACK_MINUTES))).to_numpy()]
    context = select_sensors(recent, devices, tags)
    routing = st.read_parquet(storage, *st.parse_uri(spec.routing)) if spec.routing else None
    for kind, frame in zip(PART_KINDS, (landed, rejected, context)):
        if not len(frame):
            continue
        shard_of = route(frame, spec.shards, routing)
        for number, rows in frame.groupby(shard_of, sort=True):
            path = run.shard(int(number)).part(spec.group, kind)
            storage.write_bytes(staging, path, st.parquet_bytes(rows.reset_index(drop=True)))
    all_landed = pd.concat([landed, rejected], ignore_index=True) if len(rejected) else landed
    result = ReadResult(
        group=spec.group,
        output_prefix=spec.output_prefix,
        files=len(own.files),
        read=len(own.read),
        empty_files=tuple(own.empty),
        corrupt_files=tuple(
            CorruptFile(c.file, c.bytes, c.sha256, c.error, corrupt_file_hour(c.file, spec), c.reason)
            for c in own.corrupt
        ),
        landed_by_hour=dict(count_by_hour(partition_hours(all_landed, spec.start, spec.end))),
        lookback_skipped=_lookback_skipped(read, own_folders, spec.start),
        names=names,
    )
    storage.write_bytes(staging, run.read(spec.group).result, result.to_json())
    log.info(
        "Read group %d: %d file(s), %d window(s) owned, %d set aside, %d lookback window(s), routed to %d shard(s)",
        spec.group,
        len(spec.files),
        len(landed),
        len(rejected),
        len(context),
        spec.shards,
    )
    return result


def _folders_of(files: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(f.rsplit("/", 1)[0] for f in files if "/" in f))


def _stage_names(
    storage: Storage, staging: str, folder: layout.Shard, own: LandedFiles, subset: Subset | None
) -> str | None:
    """With a subset: the sensors the group's own files hold, staged for commit's check that the subset matches
    something landed (``runs.rescoring.check_subset_matches``); None for a full run."""
    if subset is None:
        return None
    frames = [f.reindex(columns=["device_id", "tag"]) for f in (own.windows, own.rejected) if len(f)]
    names = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["device_id", "tag"])
    names = names.astype(object).drop_duplicates().reset_index(drop=True)
    path = folder.folder + "names.parquet"
    storage.write_bytes(staging, path, st.parquet_bytes(names.astype("string")))
    return st.make_uri(staging, path)


def read_result(storage: Storage, output_prefix: str) -> dict[str, object]:
    """A read task's ``result.json`` in its XCom form (what every backend returns for the mapped task)."""
    container, prefix = st.parse_uri(output_prefix)
    path = layout.Shard(prefix).result
    return ReadResult.from_json(storage.read_bytes(container, path), source=st.make_uri(container, path)).to_dict()


def corrupt_file_hour(name: str, scope: Scope | ReadSpec) -> datetime | None:
    """The hour of the run that lists, copies and quarantines a corrupt file: its owner
    (``windows.corrupt_owner``, its folder's hour) if the run's interval holds it, else None (a late folder's file:
    its own hour's run lists it, so that it is in exactly one manifest). A file in no hour folder: the run's last
    hour."""
    found = corrupt_owner(name)
    if found is None:
        return scope.end - HOUR
    return found if scope.start <= found < scope.end else None


def _lookback_skipped(read: LandedFiles, own_folders: Sequence[str], start: datetime) -> tuple[SkippedContextFile, ...]:
    """The files of the hour before that the lookback leaves out: broken or corrupt files of folders only the
    lookback reads (a file of a folder the run reads as its own is this run's: it fails the run, or is quarantined
    by it)."""
    own = tuple(f.rstrip("/") + "/" for f in own_folders)
    broken = [SkippedContextFile(b.file, MISSING_COLUMN, b.error) for b in read.broken]
    corrupt = [SkippedContextFile(c.file, c.reason, c.error) for c in read.corrupt]
    skipped = tuple(f for f in (*broken, *corrupt) if not f.file.startswith(own))
    for f in skipped:
        log.warning(
            "Lookback of %s left out %s (%s): its windows are not looked back at; it is its own hour's to fix (%s)",
            start.isoformat(),
            f.file,
            f.reason,
            f.error,
        )
    return skipped


# --- check_shard: the suite and the features, per shard -----------------------------------------------------------


@dataclasses.dataclass
class ShardCheck:
    """One shard's windows after the suite: valid (with features), quarantined (with reasons), and its report."""

    checked: Checked
    validation: ShardValidation
    #: Every landed row of the shard (the reader's rejected rows included), as the read tasks routed them.
    landed: int


def check_shard(
    storage: Storage, staging: str, folder: str, start: datetime, end: datetime, bounds: Bounds | None = None
) -> ShardCheck:
    """The suite's split of a shard's windows (what a shard checks before it scores, and what training reads).

    The lookback of the interval's first windows is the hour before's windows the read tasks routed here as
    context, validated by the same suite (a window it rejects is not looked back at; that hour's run quarantines
    it); later windows look back at the interval's own valid windows: exactly what an hour-by-hour run takes."""
    from sensor_scoring.validation.expectations import load_bounds

    bounds = bounds or load_bounds()
    parts = read_parts(storage, staging, folder)
    landed, rejected, context = parts["landed"], parts["rejected"], parts["context"]
    checked = with_rejected(_validate(landed, start, end, bounds), rejected)
    if len(context):  # nothing landed before (a new fleet, a gap): no suite run on nothing
        from sensor_scoring.validation.expectations import SchemaViolation

        try:
            context = check_windows(context, start - HOUR, start, bounds).valid
        except SchemaViolation as exc:
            raise WindowSchemaError(f"{exc} in the windows of the hour before (read as the lookback)") from exc
    checked.valid = add_features(checked.valid, context)
    all_landed = landed
    if len(rejected):
        all_landed = pd.concat([landed, rejected.drop(columns=[REASON_COLUMN])], ignore_index=True)
    landed_hours = partition_hours(all_landed, start, end)
    quarantined = checked.quarantined
    q_hours = partition_hours(quarantined, start, end) if len(quarantined) else pd.Series(dtype="datetime64[ns, UTC]")
    failing: dict[str, Counter[str]] = {}
    for h, joined in zip(q_hours, quarantined[REASON_COLUMN] if len(quarantined) else []):
        key = hour_key(h) if not pd.isna(h) else hour_key(end - HOUR)
        failing.setdefault(key, Counter()).update(str(joined).split(";"))
    validation = ShardValidation(
        landed_by_hour=dict(count_by_hour(landed_hours)),
        duplicates_by_hour=dict(count_by_hour(landed_hours.loc[checked.duplicate_index])) if checked.duplicates else {},
        failing_rows_by_hour=dict(count_by_hour(q_hours)) if len(quarantined) else {},
        failing_by_hour={h: dict(c) for h, c in failing.items()},
        duplicates_by_sensor=duplicates_by_sensor(all_landed, checked.valid, quarantined),
        valid=len(checked.valid),
        sensors=int(checked.valid[["device_id", "tag"]].drop_duplicates().shape[0]),
        expectations=tuple(checked.expectations),
        seconds=round(checked.seconds, 3),
    )
    return ShardCheck(checked=checked, validation=validation, landed=len(all_landed))


def _validate(landed: pd.DataFrame, start: datetime, end: datetime, bounds: Bounds) -> Checked:
    """The suite's split of the owned windows; a broken structure fails naming the files it came from."""
    from sensor_scoring.validation.expectations import SchemaViolation

    try:
        return check_windows(landed, start, end, bounds)
    except SchemaViolation as exc:
        files = sorted(set(landed[SOURCE_COLUMN].dropna()))
        more = " ..." if len(files) > 5 else ""
        raise WindowSchemaError(f"{exc} in the windows of {', '.join(files[:5])}{more}") from exc


def with_rejected(checked: Checked, rejected: pd.DataFrame) -> Checked:
    """The suite's split plus the rows the reader rejected (a value not of its type) and the strays: quarantined
    with their reason, after the suite's rows. ``duplicate_index`` stays valid: rejected rows come after the
    landed rows in the frame the counts are taken from."""
    if not len(rejected):
        return checked
    checked.quarantined = pd.concat([checked.quarantined, rejected], ignore_index=True)
    return checked


# --- read_range: the same functions in one process (training, and any caller that needs the range at once) ------


@dataclasses.dataclass
class RangeRead:
    """A range's windows as the hourly run's shards see them: valid (with features) and quarantined."""

    valid: pd.DataFrame
    quarantined: pd.DataFrame
    reads: list[ReadResult]
    files: int


def read_range(
    scope: Scope,
    *,
    late_folders: int = LATE_HORIZON,
    subset: Subset | None = None,
    shards: int = 1,
) -> RangeRead:
    """Read and check [start, end) through the hourly run's own functions (``stage_reads``, ``read_windows``,
    ``check_shard``), one after the other in this process: the windows training gathers are exactly the
    windows the hourly run scores or quarantines. Staged under the run's folder in staging, deleted after."""
    scope = dataclasses.replace(scope, run_id=f"read-range:{scope.run_id}")  # never an hourly run's staging
    run = layout.Run(scope.run_key)
    storage, staging = scope.storage, scope.containers.staging
    storage.delete_prefix(staging, run.prefix)
    try:
        specs = stage_reads(scope, list_range(scope, late_folders), shards=shards, routing=None, subset=subset)
        reads = [read_windows(storage, st.make_uri(staging, run.read(s.group).spec)) for s in specs]
        checks = [check_shard(storage, staging, run.shard(n).input, scope.start, scope.end) for n in range(shards)]
    finally:
        storage.delete_prefix(staging, run.prefix)
    valid = pd.concat([c.checked.valid for c in checks], ignore_index=True)
    quarantined = pd.concat([c.checked.quarantined for c in checks], ignore_index=True)
    return RangeRead(valid=valid, quarantined=quarantined, reads=reads, files=sum(r.files for r in reads))


# --- the run's validation report, from its read tasks and shards (commit) ------------------------------------------


def _merge_expectations(shards: Sequence[ShardValidation]) -> tuple[dict[str, Any], ...]:
    """One summary per expectation of the suite over every shard: failed anywhere, unexpected rows summed."""
    merged: dict[str, dict[str, Any]] = {}
    for shard in shards:
        for item in shard.expectations:
            key = f"{item.get('expectation')}|{sorted(item.get('kwargs', {}).items())}|{item.get('reason')}"
            if key not in merged:
                merged[key] = dict(item)
                continue
            into = merged[key]
            into["success"] = bool(into.get("success")) and bool(item.get("success"))
            for count in ("element_count", "unexpected_count"):
                a, b = into.get(count), item.get(count)
                into[count] = None if a is None or b is None else int(a) + int(b)
    return tuple(merged.values())


def summarize(
    scope: Scope,
    plan: ShardPlan,
    reads: Sequence[ReadResult],
    shards: Sequence[ShardResult],
    *,
    max_quarantine_share: float,
    bounds: dict[str, object],
    subset_not_found: Subset | None = None,
) -> tuple[HourSummary, ValidationReport]:
    """The run's summary and validation report, summed over its read tasks and shards: what one process reading
    the whole hour would have reported (a failed shard's windows were never checked: they count as landed only)."""
    from sensor_scoring.validation.expectations import SUITE_NAME

    validations = [r.validation for r in shards if r.validation is not None]
    landed: Counter[str] = Counter()
    for r in reads:
        landed.update(r.landed_by_hour)
    duplicates: Counter[str] = Counter()
    failing_rows: Counter[str] = Counter()
    failing: dict[str, Counter[str]] = {}
    by_sensor: dict[str, list[SensorDuplicates]] = {}
    for v in validations:
        duplicates.update(v.duplicates_by_hour)
        failing_rows.update(v.failing_rows_by_hour)
        for key, reasons in v.failing_by_hour.items():
            failing.setdefault(key, Counter()).update(reasons)
        for key, entries in v.duplicates_by_sensor.items():
            by_sensor.setdefault(key, []).extend(entries)
    corrupt = [c for r in reads for c in r.corrupt_files if c.hour is not None]  # None: a later hour lists it
    empty = [f for r in reads for f in r.empty_files]
    skipped = tuple(f for r in reads for f in r.lookback_skipped)
    hours = {}
    for h in scope.hours:
        key = h.isoformat()
        reasons = failing.get(key, Counter())
        share = failing_rows[key] / landed[key] if landed[key] else 0.0
        hours[key] = HourValidation(
            suite=SUITE_NAME,
            hour=h,
            run_id=scope.run_id,
            landed=landed[key],
            duplicates=duplicates[key],
            failing_rows=failing_rows[key],
            failing_share=round(share, 6),
            max_quarantine_share=max_quarantine_share,
            threshold_exceeded=share > max_quarantine_share,
            failing_rows_by_reason={r: reasons[r] for r in (*READER_REASONS, *ROW_REASONS) if reasons[r]},
            quarantined_files=tuple(c for c in corrupt if c.hour == h),
            empty_files=tuple(f for f in empty if (folder_hour(f) or scope.start) == h),
            lookback_skipped_files=skipped if h == scope.start else (),
        )
    run = layout.Run(scope.run_key)
    total_dups = sum(duplicates.values())
    report = ValidationReport(
        suite=SUITE_NAME,
        run_id=scope.run_id,
        interval=Interval(start=scope.start, end=scope.end),
        evaluated_rows=int(sum(landed.values()) - total_dups),
        seconds=round(sum(v.seconds for v in validations), 3),
        physical_bounds=bounds,
        expectations=_merge_expectations(validations),
        hours=hours,
    )
    all_reasons: Counter[str] = Counter()
    for reasons in failing.values():
        all_reasons.update(reasons)
    summary = HourSummary(
        run_id=scope.run_id,
        run_key=scope.run_key,
        start=scope.start,
        end=scope.end,
        files_read=sum(r.files for r in reads),
        folders=plan.folders,
        landed=sum(landed.values()),
        landed_by_hour={h: v.landed for h, v in hours.items() if v.landed},
        valid=sum(v.valid for v in validations),
        duplicates=total_dups,
        quarantined=sum(failing_rows.values()),
        quarantine_reasons=dict(all_reasons),
        sensors=sum(v.sensors for v in validations),
        quarantined_files=tuple(corrupt),
        empty_files=tuple(empty),
        max_quarantine_share=max_quarantine_share,
        validation_report=st.make_uri(scope.containers.staging, run.validation_report),
        subset=plan.subset,
        duplicates_by_sensor={
            h: tuple(sorted(e, key=lambda d: (d.device_id or "", d.tag or ""))) for h, e in sorted(by_sensor.items())
        },
        source_files=SourceFiles(
            seen=sum(r.files for r in reads),
            read=sum(r.read for r in reads),
            empty=len(empty),
            quarantined=len(corrupt),
            other_hours=sum(len(r.corrupt_files) for r in reads) - len(corrupt),
        ),
        generations=plan.generations,
        subset_not_found=subset_not_found,
    )
    _log_loaded(summary, report)
    return summary, report


def _log_loaded(summary: HourSummary, report: ValidationReport) -> None:
    log.info(
        "Read %d file(s) in %s: %d window(s) owned by [%s, %s); %d valid, %d quarantined %s, %d duplicate(s) collapsed",
        summary.files_read,
        ", ".join(summary.folders),
        summary.landed,
        summary.start.isoformat(),
        summary.end.isoformat(),
        summary.valid,
        summary.quarantined,
        summary.quarantine_reasons,
        summary.duplicates,
    )
    log.info(
        "Validation (great-expectations suite %s, %d expectations, %.2f s in the shards): %s",
        report.suite,
        len(report.expectations),
        report.seconds,
        "; ".join(
            f"{h}: {r.failing_rows}/{r.landed} failing {r.failing_rows_by_reason or ''}"
            for h, r in report.hours.items()
        ),
    )
    for c in summary.quarantined_files:
        log.warning("Quarantined file %s (%d bytes, %s): %s", c.file, c.bytes, c.reason, c.error)
    for h, r in report.hours.items():
        if not r.landed:
            log.warning(
                "Hour %s: no windows landed%s; it will be committed as an empty partition (status empty)",
                h,
                f" ({len(r.quarantined_files)} corrupt file(s))" if r.quarantined_files else "",
            )


def refuse_above_threshold(
    report: ValidationReport, max_quarantine_share: float, *, report_uri: str, failing_uri: str
) -> None:
    """Fail the run, before anything is committed, if an hour's failing share is above the threshold."""
    over = {h: r for h, r in report.hours.items() if r.threshold_exceeded}
    if not over:
        return
    detail = "; ".join(
        f"hour {h}: {r.failing_rows} of {r.landed} windows ({r.failing_share:.1%}) failed "
        f"validation ({', '.join(f'{k} {v}' for k, v in r.failing_rows_by_reason.items())})"
        for h, r in over.items()
    )
    raise ValidationThresholdError(
        f"{detail}; above max_quarantine_share {max_quarantine_share:.1%}. Nothing was committed. "
        f"Validation report: {report_uri}; failing rows: {failing_uri}. "
        "Fix the input and re-run the hour, or re-run with a higher max_quarantine_share to score the rest."
    )
