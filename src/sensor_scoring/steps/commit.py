"""commit: check the accounting, then replace each hour's predictions and quarantine partitions.

Each partition is one Parquet file uploaded in one blob commit (old or new, never a mix), followed by its
``_manifest.json``. Shard outputs are streamed into per-hour files on local disk, so memory holds one shard at a
time however large the hour is.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sensor_scoring import layout, storage as st
from sensor_scoring.contracts import (
    PREDICTION_SCHEMA,
    QUARANTINE_SCHEMA,
    READER_REASONS,
    REASON_COLUMN,
    ROW_REASONS,
    AccountingError,
    CorruptFile,
    Counts,
    FailedShard,
    HourSummary,
    HourValidation,
    Interval,
    Manifest,
    PartitionFile,
    PlannedShard,
    QuarantinedFile,
    ReadResult,
    ShardPlan,
    ShardResult,
    Subset,
    ValidationReport,
    ValidationSummary,
)
from sensor_scoring.runs import partial
from sensor_scoring.runs.common import names_storage_outages, quarantine_frame
from sensor_scoring.runs.fence import (
    check_fence,
    claim_commit,
    hours_to_commit,
    release_claims,
    write_fenced_manifest,
)
from sensor_scoring.runs.rescoring import (
    DEFAULT_PURGED_POLICY,
    Kept,
    PurgedPolicy,
    check_purged_policy,
    check_subset_matches,
    keep_committed,
    model_versions,
    rescoring_history,
)
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps.load import DEFAULT_MAX_QUARANTINE_SHARE, refuse_above_threshold, summarize
from sensor_scoring.storage import Storage
from sensor_scoring.windows import partition_hours

log = logging.getLogger(__name__)

_KEY = ["device_id", "tag", "window_end"]
#: The reasons of rows that failed validation (what max_quarantine_share counts).
VALIDATION_REASONS = frozenset((*READER_REASONS, *ROW_REASONS))


@dataclass
class _Written:
    """One hour's predictions file on local disk, before its upload, and what it holds."""

    path: Path
    scored: int = 0
    anomalies: int = 0


@dataclass(frozen=True)
class _Commit:
    """What every hour's commit needs of the run."""

    hour: Scope
    summary: HourSummary
    report: ValidationReport
    model_version: str
    committed_at: datetime
    failed_shards: tuple[FailedShard, ...] = ()


@names_storage_outages
def commit(
    hour: Scope,
    reads: Sequence[ReadResult],
    shard_results: Sequence[ShardResult],
    *,
    failed_shards: Sequence[PlannedShard] = (),
    purged_windows: PurgedPolicy = DEFAULT_PURGED_POLICY,
    max_quarantine_share: float = DEFAULT_MAX_QUARANTINE_SHARE,
) -> list[Manifest]:
    """Sum the run's read tasks and shards into its summary and validation report, refuse the run if an hour's
    failing share is above ``max_quarantine_share`` (nothing committed), check landed = scored + quarantined +
    duplicates, then commit each of its hours in turn.

    ``failed_shards`` (a partial hour, see :mod:`sensor_scoring.runs.partial`): their windows are quarantined as
    ``shard_failed``, the hours they touch are ``partial``, and the run's staging is kept for the retry.
    ``purged_windows``: what becomes of committed rows whose windows the run did not find (``runs.rescoring``).
    """
    from sensor_scoring.validation.expectations import load_bounds

    policy = check_purged_policy(purged_windows)
    storage, staging, run = hour.storage, hour.containers.staging, layout.Run(hour.run_key)
    plan = ShardPlan.from_json(storage.read_bytes(staging, run.plan), source=st.make_uri(staging, run.plan))
    if len(reads) != len(plan.reads):
        raise AccountingError(
            f"{len(plan.reads)} read task(s) were planned but {len(reads)} result(s) arrived: a read task failed; "
            "refusing to commit (clear the run to redo the hour)"
        )
    not_found = _check_subset(hour, plan, reads)
    summary, report = summarize(
        hour,
        plan,
        reads,
        shard_results,
        max_quarantine_share=float(max_quarantine_share),
        bounds=load_bounds().as_dict(),
        subset_not_found=not_found,
    )
    storage.write_bytes(staging, run.validation_report, report.to_json(indent=2))
    quarantine = _run_quarantine(hour, shard_results)
    if any(h.threshold_exceeded for h in report.hours.values()):  # the failing rows in one file, for the operator
        failing = quarantine.loc[quarantine[REASON_COLUMN].map(_failed_validation).to_numpy(dtype=bool)]
        storage.write_bytes(staging, run.validation_quarantine, st.parquet_bytes(failing, QUARANTINE_SCHEMA))
    refuse_above_threshold(
        report,
        float(max_quarantine_share),
        report_uri=summary.validation_report,
        failing_uri=st.make_uri(staging, run.validation_quarantine),
    )
    if failed_shards:
        quarantine = pd.concat([quarantine, partial.failed_shard_quarantine(hour, failed_shards)], ignore_index=True)
    check_run_accounting(summary, shard_results, len(quarantine))
    superseded = partial.superseded_staging(hour)
    hours = hours_to_commit(hour, summary)
    context = _Commit(
        hour,
        summary,
        report,
        plan.model_version,
        datetime.now(timezone.utc),
        failed_shards=partial.failed_shard_records(failed_shards),
    )
    q_hour = partition_hours(quarantine, hour.start, hour.end)
    q_by_hour = {h: quarantine.loc[(q_hour == pd.Timestamp(h)).to_numpy(dtype=bool)] for h in hours}

    def keep(found: dict[datetime, pd.DataFrame]) -> dict[datetime, Kept]:
        # the rows outside a subset, and the committed rows whose windows this run did not find (purged_windows)
        return keep_committed(hour, hours, summary.subset, found, policy)

    with tempfile.TemporaryDirectory(prefix="commit-") as tmp:
        written, kept = _write_predictions(hour, hours, Path(tmp), shard_results, q_by_hour, keep)
        manifests = [_commit_hour(context, h, written[h], q_by_hour[h], kept[h]) for h in hours]
    if failed_shards:
        partial.log_partial(hour, failed_shards)  # staging kept: the failed shards' specs and inputs are retried
    # a staging folder goes once no hour names its specs: not this run's while a failed shard is named anywhere
    partial.release_staging(hour, [run.prefix, *superseded])
    return manifests


def _shard_outputs(result: ShardResult) -> tuple[str, layout.Shard]:
    """The container and folder of a shard's outputs, as its result names them."""
    container, prefix = st.parse_uri(result.output_prefix)
    return container, layout.Shard(prefix)


def _shard_quarantine(storage: Storage, result: ShardResult) -> pd.DataFrame:
    container, outputs = _shard_outputs(result)
    return st.read_parquet(storage, container, outputs.quarantine)


def _shard_predictions(storage: Storage, result: ShardResult) -> pd.DataFrame:
    container, outputs = _shard_outputs(result)
    return st.read_parquet(storage, container, outputs.predictions)


def _run_quarantine(hour: Scope, shard_results: Sequence[ShardResult]) -> pd.DataFrame:
    """Every row the run's shards set aside: in validation, for want of a model, or of a usable one."""
    frames = [_shard_quarantine(hour.storage, r) for r in shard_results]
    if not frames:
        return quarantine_frame(pd.DataFrame(), hour.run_id)
    return pd.concat(frames, ignore_index=True)


def _failed_validation(reasons: object) -> bool:
    """Whether a quarantine row failed validation (the reader, the suite, a stray) rather than a model."""
    return any(r in VALIDATION_REASONS for r in str(reasons).split(";"))


def _check_subset(hour: Scope, plan: ShardPlan, reads: Sequence[ReadResult]) -> Subset | None:
    """A subset rescoring must match something landed (``runs.rescoring.check_subset_matches``, on the sensors the
    read tasks found); the names that matched nothing while others did."""
    if plan.subset is None:
        return None
    names = [st.read_parquet(hour.storage, *st.parse_uri(r.names)) for r in reads if r.names]
    interval = f"[{hour.start.isoformat()}, {hour.end.isoformat()})"
    return check_subset_matches(names, list(plan.subset.devices), list(plan.subset.tags), interval=interval)


def check_run_accounting(summary: HourSummary, shard_results: Sequence[ShardResult], quarantined: int) -> None:
    """Refuse the run unless every landed window was scored, quarantined or collapsed as a duplicate."""
    scored = sum(r.scored for r in shard_results)
    accounted = scored + quarantined + summary.duplicates
    if accounted != summary.landed:
        raise AccountingError(
            f"landed {summary.landed} windows but scored {scored} + quarantined {quarantined} "
            f"+ duplicates {summary.duplicates} = {accounted}; refusing to commit"
        )


def _write_predictions(
    hour: Scope,
    hours: Sequence[datetime],
    folder: Path,
    shard_results: Sequence[ShardResult],
    quarantined: dict[datetime, pd.DataFrame],
    keep: Callable[[dict[datetime, pd.DataFrame]], dict[datetime, Kept]],
) -> tuple[dict[datetime, _Written], dict[datetime, Kept]]:
    """Stream every shard's predictions into one local Parquet file per hour, noting each window's key; then the
    committed rows ``keep`` leaves as they were, given the keys the run scored or quarantined per hour.

    Shards are ranges of sensors in (device_id, tag) order (``steps.plan.shard_numbers``) taken in shard order, and
    each shard's rows are sorted by key: an hour's rows are in key order, in row groups of ``ROW_GROUP_ROWS`` whose
    min/max statistics name a narrow range of sensors, which is what lets the sensor page read one sensor's row
    groups only (``storage.read_parquet_rows``). The kept rows keep the committed file's order (runs in key order).
    """
    written = {h: _Written(folder / f"{h:%Y%m%d%H}.parquet") for h in hours}
    writers = {h: RowGroups(pq.ParquetWriter(w.path, PREDICTION_SCHEMA)) for h, w in written.items()}
    keys: dict[datetime, list[pd.DataFrame]] = {h: [quarantined[h][_KEY]] for h in hours}
    # the keys found matter only where committed rows may be kept (a re-run, a rescoring): a first commit of an
    # hour holds none of them, so its memory stays one shard's whatever the hour's size
    committed = {h: hour.storage.exists(hour.containers.predictions, layout.Partition(h).manifest) for h in hours}
    try:
        for result in sorted(shard_results, key=lambda r: r.shard):
            frame = _shard_predictions(hour.storage, result)
            for moment, rows in frame.groupby(frame["window_end"].dt.floor("h"), sort=True):
                h = pd.Timestamp(moment).to_pydatetime()
                if h not in writers:
                    continue  # an hour this commit leaves as another run committed it (fence.hours_to_commit)
                writers[h].add(in_key_order(rows))
                written[h].scored += len(rows)
                written[h].anomalies += int(rows["is_anomaly"].sum())
                if committed[h]:
                    keys[h].append(rows[_KEY])
        kept = keep({h: pd.concat(frames, ignore_index=True) for h, frames in keys.items()})
        for h, rest in kept.items():
            writers[h].add(rest.predictions)
            written[h].scored += rest.scored
            written[h].anomalies += rest.anomalies
        for writer in writers.values():
            writer.flush()
    finally:
        for writer in writers.values():
            writer.close()
    return written, kept


def in_key_order(rows: pd.DataFrame) -> pa.Table:
    """A shard's predictions of one hour as the partition holds them: sorted by (device_id, tag, window_end)."""
    table = pa.Table.from_pandas(rows, schema=PREDICTION_SCHEMA, preserve_index=False)
    return table.sort_by([(k, "ascending") for k in _KEY])


class RowGroups:
    """Tables written to one Parquet file in row groups of ``ROW_GROUP_ROWS`` rows (the last one shorter), however
    small the tables (a shard of one sensor is 60 rows): rows wait here until a whole row group has come, so an
    hour of 100k one-sensor shards is ~90 row groups, not 100k, and its footer stays small."""

    def __init__(self, writer: pq.ParquetWriter) -> None:
        self.writer = writer
        self.waiting: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.waiting.append(table)
        self.rows += table.num_rows
        if self.rows >= st.ROW_GROUP_ROWS:
            rows = pa.concat_tables(self.waiting)
            whole = rows.num_rows - rows.num_rows % st.ROW_GROUP_ROWS
            self.writer.write_table(rows.slice(0, whole), row_group_size=st.ROW_GROUP_ROWS)
            rest = rows.slice(whole)
            self.waiting, self.rows = [rest], rest.num_rows

    def flush(self) -> None:
        """Write the rows that wait (the file's last, shorter row group)."""
        if self.rows:
            self.writer.write_table(pa.concat_tables(self.waiting), row_group_size=st.ROW_GROUP_ROWS)
        self.waiting, self.rows = [], 0

    def close(self) -> None:
        """Close the file (a file of no rows still gets its schema); rows not flushed are not written."""
        self.writer.close()


def _commit_hour(run: _Commit, h: datetime, written: _Written, q_rows: pd.DataFrame, kept: Kept | None) -> Manifest:
    """Upload one hour's two partitions, its corrupt files and validation report, then its manifest."""
    hour = run.hour
    read = run.summary.generations.get(h.isoformat())
    # before anything of the hour is written: of two runs that read this generation, only one goes on
    claims = [] if read is None else [claim_commit(hour, h, read)]
    try:
        generation = check_fence(hour, run.summary, h)
        if read is None or (generation or "") != read:  # a summary without generations, or this run's own retry
            claims.append(claim_commit(hour, h, generation))
        return _write_hour(run, h, generation, written, q_rows, kept)
    finally:
        release_claims(hour, claims)


def _write_hour(
    run: _Commit, h: datetime, generation: str | None, written: _Written, q_rows: pd.DataFrame, kept: Kept | None
) -> Manifest:
    """The hour's writes, once its commit is claimed and fenced; the manifest last, conditional on ``generation``."""
    hour, storage, containers, part = run.hour, run.hour.storage, run.hour.containers, layout.Partition(h)
    if kept is not None and len(kept.quarantine):  # an empty frame would turn the columns' dtypes to object
        q_rows = pd.concat([kept.quarantine, q_rows], ignore_index=True)
    validation = run.report.hour(h)
    counts = hour_counts(h, validation, written, len(q_rows), kept)
    storage.upload_file(containers.predictions, part.data, written.path)
    q_bytes = st.parquet_bytes(q_rows, QUARANTINE_SCHEMA)
    storage.write_bytes(containers.quarantine, part.data, q_bytes)
    files = (
        PartitionFile(
            container=containers.predictions,
            path=part.data,
            rows=counts.scored,
            bytes=written.path.stat().st_size,
            sha256=_file_sha256(written.path),
        ),
        PartitionFile(
            container=containers.quarantine,
            path=part.data,
            rows=len(q_rows),
            bytes=len(q_bytes),
            sha256=hashlib.sha256(q_bytes).hexdigest(),
        ),
    )
    bad_files = _quarantine_files(hour, part, validation.quarantined_files)
    storage.write_bytes(containers.quarantine, part.validation, run.report.only(h).to_json(indent=2))
    manifest = Manifest(
        run_id=hour.run_id,
        model_version=run.model_version,
        hour=h,
        interval=Interval(start=hour.start, end=hour.end),
        committed_at=run.committed_at,
        counts=counts,
        quarantine_reasons={str(k): int(v) for k, v in Counter(q_rows[REASON_COLUMN]).items()},
        files=files,
        source_folders=run.summary.folders,
        source_files=run.summary.source_files,
        status=(status := partial.hour_status(counts, q_rows)),
        quarantined_files=bad_files,
        empty_files=validation.empty_files,
        validation=ValidationSummary(
            suite=validation.suite,
            report=st.make_uri(containers.quarantine, part.validation),
            failing_rows=validation.failing_rows,
            failing_share=validation.failing_share,
            failing_rows_by_reason=validation.failing_rows_by_reason,
            max_quarantine_share=validation.max_quarantine_share,
            lookback_skipped_files=validation.lookback_skipped_files,
        ),
        subset=run.summary.subset,
        rescored=rescoring_history(
            run.summary.subset,
            kept,
            counts,
            run_id=hour.run_id,
            model_version=run.model_version,
            committed_at=run.committed_at,
            not_found=run.summary.subset_not_found,
        ),
        model_versions=model_versions(written.path),
        duplicates_by_sensor=(
            *(kept.duplicates_by_sensor if kept else ()),
            *run.summary.duplicates_by_sensor.get(h.isoformat(), ()),
        ),
        failed_shards=(
            partial.named_failed_shards(hour, run.failed_shards, kept.previous if kept else None, q_rows)
            if status == "partial"
            else ()
        ),
        purged=kept.purged if kept else None,
    )
    body = manifest.to_json(indent=2)
    write_fenced_manifest(hour, h, body, generation)
    storage.write_bytes(containers.quarantine, part.manifest, body)
    _log_committed(part, manifest)
    return manifest


def hour_counts(
    h: datetime, validation: HourValidation, written: _Written, quarantined: int, kept: Kept | None
) -> Counts:
    """The partition's counts, checked: its duplicates must be the ones validation collapsed (plus those a
    subset rescoring keeps), or a window went missing between the steps."""
    landed = validation.landed + (kept.landed if kept else 0)
    duplicates = landed - written.scored - quarantined
    expected = validation.duplicates + (kept.duplicates if kept else 0)
    if duplicates != expected:
        raise AccountingError(
            f"hour {h.isoformat()}: landed {landed} but scored {written.scored} + quarantined {quarantined} "
            f"+ duplicates {expected} = {written.scored + quarantined + expected}; refusing to commit"
        )
    return Counts(
        landed=landed,
        scored=written.scored,
        quarantined=quarantined,
        duplicates=duplicates,
        anomalies=written.anomalies,
    )


def _quarantine_files(
    hour: Scope, part: layout.Partition, corrupt: Sequence[CorruptFile]
) -> tuple[QuarantinedFile, ...]:
    """Copy each corrupt file of the hour beside its quarantine partition (under ``files/``), kept byte for byte."""
    storage, containers = hour.storage, hour.containers
    storage.delete_prefix(containers.quarantine, part.quarantined_files)
    listed = []
    for entry in corrupt:
        try:
            data = storage.read_bytes(containers.windows, entry.file)
            storage.write_bytes(containers.quarantine, part.quarantined_copy(entry.file), data)
            where: str | None = st.make_uri(containers.quarantine, part.quarantined_copy(entry.file))
        except FileNotFoundError:
            where = None  # deleted from windows since it was read; the manifest still names it
        listed.append(
            QuarantinedFile(
                file=entry.file,
                bytes=entry.bytes,
                sha256=entry.sha256,
                error=entry.error,
                reason=entry.reason,
                copy=where,
            )
        )
    return tuple(listed)


def _file_sha256(path: Path) -> str:
    """Hash a file in chunks: an hour's file can be far larger than one shard."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _log_committed(part: layout.Partition, manifest: Manifest) -> None:
    log.info("Committed %s: %s", part.prefix, manifest.counts.to_dict())
    if manifest.status == "empty":
        bad = len(manifest.quarantined_files)
        log.warning(
            "Committed %s as an EMPTY hour: no windows landed for it%s",
            part.prefix,
            f"; {bad} corrupt file(s) quarantined" if bad else "",
        )
