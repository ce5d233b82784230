"""load_and_validate: read the interval's folders, keep the windows it owns, validate them, stage the result."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from sensor_scoring import layout, storage as st
from sensor_scoring.contracts import (
    MISSING_COLUMN,
    QUARANTINE_SCHEMA,
    READER_REASONS,
    REASON_COLUMN,
    ROW_REASONS,
    SOURCE_COLUMN,
    CorruptFile,
    HourSummary,
    HourValidation,
    Interval,
    SkippedContextFile,
    SourceFiles,
    Subset,
    ValidationReport,
    ValidationThresholdError,
)
from sensor_scoring.features import add_features, read_context
from sensor_scoring.layout import HOUR
from sensor_scoring.names import check_sensor_names
from sensor_scoring.runs.common import count_by_hour, hour_key, names_storage_outages, quarantine_frame
from sensor_scoring.runs.fence import read_generations
from sensor_scoring.runs.rescoring import check_subset_matches, duplicates_by_sensor, select_sensors, subset_of
from sensor_scoring.runs.scope import Scope
from sensor_scoring.validation import Checked, check_windows
from sensor_scoring.windows import (
    LandedFiles,
    WindowSchemaError,
    corrupt_owner,
    folder_hour,
    partition_hours,
    read_owned_with_lookback,
    set_aside_strays,
)

if TYPE_CHECKING:
    from sensor_scoring.validation.expectations import Bounds

log = logging.getLogger(__name__)

#: Default of the DAG param ``max_quarantine_share``: above this share of an hour's landed windows failing
#: validation, the run fails (and alerts) instead of committing.
DEFAULT_MAX_QUARANTINE_SHARE = 0.1


@names_storage_outages
def load_and_validate(
    hour: Scope,
    *,
    late_folders: int = 1,
    max_quarantine_share: float = DEFAULT_MAX_QUARANTINE_SHARE,
    devices: list[str] | None = None,
    tags: list[str] | None = None,
) -> HourSummary:
    """Read the interval's folders, keep the windows it owns, validate them with the suite, stage the result.

    Corrupt files are set aside whole (listed in the summary and later the manifest); a file with a broken
    structure raises ``WindowSchemaError`` naming file and column. Per hour, if the share of landed windows
    failing validation exceeds ``max_quarantine_share``, ``ValidationThresholdError`` is raised after the
    validation report and the failing rows are staged, so that the failed run shows why.

    With ``devices``/``tags`` (a rescoring subset) only those sensors' windows are taken: the rest of the
    hour stays as committed before (see ``runs.rescoring``).
    """
    from sensor_scoring.validation.expectations import load_bounds

    devices, tags = check_sensor_names(devices, "devices"), check_sensor_names(tags, "tags")
    generations = read_generations(hour)  # before any window is read: what commit is fenced on
    # the interval's windows and the lookback's (the hour before), the folder they share read once
    read, before = read_owned_with_lookback(hour.storage, hour.containers.windows, hour.start, hour.end, late_folders)
    interval = f"[{hour.start.isoformat()}, {hour.end.isoformat()})"  # a subset matching nothing fails here
    not_found = check_subset_matches((read.windows, read.rejected), devices, tags, interval=interval)
    landed, rejected = set_aside_strays(
        select_sensors(read.windows, devices, tags), select_sensors(read.rejected, devices, tags)
    )
    bounds = load_bounds()
    checked = with_rejected(_validate(landed, hour, bounds), rejected)
    checked.valid = with_features(hour, checked.valid, before, devices=devices, tags=tags)
    landed = pd.concat([landed, rejected.drop(columns=[REASON_COLUMN])], ignore_index=True) if len(rejected) else landed
    run, staging = layout.Run(hour.run_key), hour.containers.staging
    hour.storage.write_bytes(staging, run.valid, st.parquet_bytes(checked.valid))
    hour.storage.write_bytes(
        staging,
        run.validation_quarantine,
        st.parquet_bytes(quarantine_frame(checked.quarantined, hour.run_id), QUARANTINE_SCHEMA),
    )
    share = float(max_quarantine_share)
    report = validation_report(hour, landed, checked, read, bounds.as_dict(), share, lookback_skipped(read, before))
    hour.storage.write_bytes(staging, run.validation_report, report.to_json(indent=2))
    summary = hour_summary(hour, landed, checked, read, report, share, subset_of(devices, tags))
    summary = dataclasses.replace(summary, generations=generations, subset_not_found=not_found)
    _log_loaded(summary, report, checked)
    refuse_above_threshold(
        report, share, report_uri=summary.validation_report, failing_uri=st.make_uri(staging, run.validation_quarantine)
    )
    return summary


def _validate(landed: pd.DataFrame, hour: Scope, bounds: Bounds) -> Checked:
    """The suite's split of the owned windows; a broken structure fails naming the files it came from."""
    from sensor_scoring.validation.expectations import SchemaViolation

    try:
        return check_windows(landed, hour.start, hour.end, bounds)
    except SchemaViolation as exc:
        files = sorted(set(landed[SOURCE_COLUMN].dropna()))
        more = " ..." if len(files) > 5 else ""
        raise WindowSchemaError(f"{exc} in the windows of {', '.join(files[:5])}{more}") from exc


def with_features(
    hour: Scope,
    valid: pd.DataFrame,
    before: LandedFiles | None,
    *,
    devices: list[str] | None = None,
    tags: list[str] | None = None,
) -> pd.DataFrame:
    """The valid windows with every derived feature column (``features.add_features``), staged with them so each
    shard scores its version's feature set without reading anything more.

    The lookback of the interval's first windows is the hour before it (``features.read_context``: the valid
    windows that hour owns, context only, never scored or quarantined here); later windows look back at the
    interval's own valid windows, exactly the windows an hour-by-hour run would take as context. ``before``: what
    the hour before owns, if the caller read it already (None: read here).
    """
    context = read_context(hour.storage, hour.containers.windows, hour.start, read=before)
    return add_features(valid, select_sensors(context, devices, tags))


def with_rejected(checked: Checked, rejected: pd.DataFrame) -> Checked:
    """The suite's split plus the rows the reader rejected (a value not of its type): quarantined with the
    reader's reason, after the suite's rows. ``duplicate_index`` stays valid: rejected rows come after the
    landed rows in the frame the counts are taken from."""
    if not len(rejected):
        return checked
    checked.quarantined = pd.concat([checked.quarantined, rejected], ignore_index=True)
    return checked


def source_files(read: LandedFiles, hour: Scope) -> SourceFiles:
    """Every blob of the folders read, accounted for: read, empty, quarantined whole by this run, or a corrupt
    file of a late folder, which that folder's hour quarantines (``corrupt_file_hour``)."""
    mine = len(_corrupt_files(read, hour))
    return SourceFiles(
        seen=len(read.files),
        read=len(read.read),
        empty=len(read.empty),
        quarantined=mine,
        other_hours=len(read.corrupt) - mine,
    )


def corrupt_file_hour(name: str, hour: Scope) -> datetime | None:
    """The hour of the run that lists, copies and quarantines a corrupt file: its owner
    (``windows.corrupt_owner``, its folder's hour) if the run's interval holds it, else None (a late folder's file:
    its own hour's run lists it, so that it is in exactly one manifest). A file in no hour folder: the run's last
    hour."""
    found = corrupt_owner(name)
    if found is None:
        return hour.end - HOUR
    return found if hour.start <= found < hour.end else None


def _corrupt_files(read: LandedFiles, hour: Scope) -> tuple[CorruptFile, ...]:
    """The corrupt files this run owns (``corrupt_file_hour``), each under its hour."""
    listed = []
    for c in read.corrupt:
        owner = corrupt_file_hour(c.file, hour)
        if owner is not None:
            listed.append(CorruptFile(c.file, c.bytes, c.sha256, c.error, owner, c.reason))
    return tuple(listed)


def lookback_skipped(read: LandedFiles, before: LandedFiles) -> tuple[SkippedContextFile, ...]:
    """The files of the hour before that the lookback leaves out (``features.read_context``): broken or corrupt
    files of folders only the lookback reads (a file of a folder the run reads as its own is this run's: it
    fails the run, or is quarantined by it)."""
    own = tuple(f.rstrip("/") + "/" for f in read.folders)
    broken = [SkippedContextFile(b.file, MISSING_COLUMN, b.error) for b in before.broken]
    corrupt = [SkippedContextFile(c.file, c.reason, c.error) for c in before.corrupt]
    return tuple(f for f in (*broken, *corrupt) if not f.file.startswith(own))


def validation_report(
    hour: Scope,
    landed: pd.DataFrame,
    checked: Checked,
    read: LandedFiles,
    bounds: dict[str, object],
    max_quarantine_share: float,
    skipped: tuple[SkippedContextFile, ...] = (),
) -> ValidationReport:
    """The run's report: the suite's expectations and, per hour of the interval, what failed and why (and, for
    its first hour, the files of the hour before that the lookback left out: ``skipped``)."""
    from sensor_scoring.validation.expectations import SUITE_NAME

    landed_hours = partition_hours(landed, hour.start, hour.end)
    per_hour_landed = count_by_hour(landed_hours)
    dup_hours = count_by_hour(landed_hours.loc[checked.duplicate_index]) if checked.duplicates else Counter()
    quarantined = checked.quarantined
    q_hours = (
        partition_hours(quarantined, hour.start, hour.end).map(hour_key)
        if len(quarantined)
        else pd.Series(dtype=object)
    )
    corrupt = _corrupt_files(read, hour)
    hours = {}
    for h in hour.hours:
        key = h.isoformat()
        rows = quarantined.loc[(q_hours == key).to_numpy()] if len(quarantined) else quarantined
        reasons = Counter(r for joined in rows[REASON_COLUMN] for r in str(joined).split(";"))
        share = len(rows) / per_hour_landed[key] if per_hour_landed[key] else 0.0
        hours[key] = HourValidation(
            suite=SUITE_NAME,
            hour=h,
            run_id=hour.run_id,
            landed=per_hour_landed[key],
            duplicates=dup_hours[key],
            failing_rows=len(rows),
            failing_share=round(share, 6),
            max_quarantine_share=max_quarantine_share,
            threshold_exceeded=share > max_quarantine_share,
            failing_rows_by_reason={r: reasons[r] for r in (*READER_REASONS, *ROW_REASONS) if reasons[r]},
            quarantined_files=tuple(c for c in corrupt if c.hour == h),
            empty_files=tuple(f for f in read.empty if (folder_hour(f) or hour.start) == h),
            lookback_skipped_files=skipped if h == hour.start else (),
        )
    return ValidationReport(
        suite=SUITE_NAME,
        run_id=hour.run_id,
        interval=Interval(start=hour.start, end=hour.end),
        evaluated_rows=int(len(landed) - checked.duplicates),
        seconds=round(checked.seconds, 3),
        physical_bounds=bounds,
        expectations=tuple(checked.expectations),
        hours=hours,
    )


def hour_summary(
    hour: Scope,
    landed: pd.DataFrame,
    checked: Checked,
    read: LandedFiles,
    report: ValidationReport,
    max_quarantine_share: float,
    subset: Subset | None,
) -> HourSummary:
    """The XCom of load_and_validate: the run's counts, its files and where its report is staged."""
    quarantined = checked.quarantined
    return HourSummary(
        run_id=hour.run_id,
        run_key=hour.run_key,
        start=hour.start,
        end=hour.end,
        files_read=len(read.files),
        folders=tuple(read.folders),
        landed=len(landed),
        landed_by_hour={h: v.landed for h, v in report.hours.items() if v.landed},
        valid=len(checked.valid),
        duplicates=checked.duplicates,
        quarantined=len(quarantined),
        quarantine_reasons={str(k): int(v) for k, v in Counter(quarantined[REASON_COLUMN]).items()},
        sensors=int(checked.valid[["device_id", "tag"]].drop_duplicates().shape[0]),
        quarantined_files=_corrupt_files(read, hour),
        empty_files=tuple(read.empty),
        max_quarantine_share=max_quarantine_share,
        validation_report=st.make_uri(hour.containers.staging, layout.Run(hour.run_key).validation_report),
        subset=subset,
        duplicates_by_sensor=duplicates_by_sensor(landed, checked.valid, quarantined),
        source_files=source_files(read, hour),
    )


def _log_loaded(summary: HourSummary, report: ValidationReport, checked: Checked) -> None:
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
        "Validation (great-expectations suite %s, %d expectations, %.2f s): %s",
        report.suite,
        len(report.expectations),
        checked.seconds,
        "; ".join(
            f"{h}: {r.failing_rows}/{r.landed} failing {r.failing_rows_by_reason or ''}"
            for h, r in report.hours.items()
        ),
    )
    for c in summary.quarantined_files:
        log.warning("Quarantined file %s (%d bytes, %s): %s", c.file, c.bytes, c.reason, c.error)
    for skipped in report.hours[summary.start.isoformat()].lookback_skipped_files:
        log.warning(
            "Lookback of %s left out %s (%s): its windows are not looked back at; it is its own hour's to fix (%s)",
            summary.start.isoformat(),
            skipped.file,
            skipped.reason,
            skipped.error,
        )
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
