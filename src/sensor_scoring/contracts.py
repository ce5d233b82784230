"""What passes between the hour's tasks and processes, stated once: table schemas, reasons, errors and records.

Tasks run in separate processes (Airflow workers, Batch nodes) and meet only through XCom and staged blobs, so
each crossing is a frozen dataclass here with a ``SCHEMA_VERSION``: ``to_dict()`` is what XCom carries,
``to_json()`` the blob's bytes, and ``from_dict``/``from_json`` check every field. A missing, unknown or
mistyped field, or another schema version, raises ``ContractError`` naming the field and where the data came
from: a reader never fills in a default for data it does not understand.

Records: ``PlannedShard`` (XCom of plan_shards and plan_reads, one per mapped score_shard or read_windows),
``ShardPlan`` (staged by plan_shards for plan_reads and commit), ``ReadSpec``/``ReadResult`` (a read task's spec
and what it found), ``ShardSpec`` (blob written by plan_shards, read by the shard process), ``HourSummary`` and
``ValidationReport`` (summed by commit from the read results and shards; the report is kept beside each
quarantine partition), ``ShardResult`` (blob written last by the shard, read back by the backends) and
``Manifest`` (``_manifest.json`` of each committed hour). Nested records carry no version of their own: they
are checked as part of the record holding them. The conversion itself is ``sensor_scoring.records``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa

from sensor_scoring.records import ContractError as ContractError, Record

# --- the tables ---------------------------------------------------------------------------------------------

#: Columns that identify one landed window.
WINDOW_KEY: tuple[str, ...] = ("device_id", "tag", "window_end")
#: The window's own aggregates, in this order: the input of feature set ``window-v1`` (``sensor_scoring.features``
#: names the sets a model version can be trained on). reading_count makes dropouts visible.
FEATURES: tuple[str, ...] = ("value_avg", "value_min", "value_max", "value_std", "reading_count")
#: Where a parsed row came from; kept through quarantine so a bad row can be traced to its file.
SOURCE_COLUMN = "source_file"
#: The quarantine column saying why a row was not scored (``;``-joined when it failed several rules).
REASON_COLUMN = "reason"

_UTC_TIME = pa.timestamp("us", tz="UTC")
#: A landed window, the Stream Analytics contract of docs/architecture.md.
WINDOW_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("tag", pa.string()),
        ("window_end", _UTC_TIME),
        ("value_avg", pa.float64()),
        ("value_min", pa.float64()),
        ("value_max", pa.float64()),
        ("value_std", pa.float64()),
        ("reading_count", pa.int64()),
    ]
)
WINDOW_COLUMNS: list[str] = WINDOW_SCHEMA.names
#: One scored window in a predictions partition.
PREDICTION_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("tag", pa.string()),
        ("window_start", _UTC_TIME),
        ("window_end", _UTC_TIME),
        ("value_avg", pa.float64()),
        ("value_min", pa.float64()),
        ("value_max", pa.float64()),
        ("value_std", pa.float64()),
        ("reading_count", pa.int64()),
        ("score", pa.float64()),
        ("is_anomaly", pa.bool_()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", _UTC_TIME),
    ]
)
#: One rejected row in a quarantine partition.
QUARANTINE_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("tag", pa.string()),
        ("window_end", _UTC_TIME),
        ("value_avg", pa.float64()),
        ("value_min", pa.float64()),
        ("value_max", pa.float64()),
        ("value_std", pa.float64()),
        ("reading_count", pa.float64()),  # float: a quarantined count may be fractional or missing
        (SOURCE_COLUMN, pa.string()),
        (REASON_COLUMN, pa.string()),
        ("run_id", pa.string()),
    ]
)

# --- quarantine reasons: a contract (quarantine rows, manifests, alerts, docs/faults.md); add, never rename ---

#: Row-level reasons of the validation suite, in the order they are reported for a row failing several.
ROW_REASONS: dict[str, str] = {
    "null_key": "device_id, tag or window_end is missing (or device_id / tag is blank)",
    "window_outside_interval": "window_end is outside the run's interval [start, end) and no other hour's run reads "
    "the folder it landed in (or it is missing)",
    "reading_count_invalid": "reading_count is missing, fractional or below 1",
    "non_finite_value": "value_avg, value_min, value_max or value_std is missing, NaN or infinite",
    "avg_outside_min_max": "value_avg is not between value_min and value_max (relative slack 1e-9)",
    "negative_std": "value_std is below 0",
    "value_out_of_bounds": "value_min, value_avg or value_max is outside the tag's physical bounds",
    "conflicting_duplicate": "another window with the same (device_id, tag, window_end) has different values",
    "window_landed_early": "window_end is in an hour after the folder it landed in (written before its hour had "
    "begun: a producer's clock or path ahead); the folder's hour owns it, as no run of its own hour reads there",
    "single_reading_spread": "reading_count is 1 but value_min < value_max or value_std > 0: one reading has no spread",
    "std_exceeds_range": "value_std is larger than any n readings within [value_min, value_max] allow: the sample "
    "standard deviation is at most (value_max - value_min) / 2 * sqrt(n / (n - 1))",
    "reading_count_implausible": "reading_count is above what one minute of one sensor can hold at the deployment's "
    "maximum reading rate (max_readings_per_minute of the physical bounds)",
}
#: Reasons of plan_shards and score_shard: the window is fine, its model is not there or not usable.
MODEL_REASONS: dict[str, str] = {
    "no_model": "the model version has no model for the sensor",
    "model_missing": "the sensor's model pack (or its row in the pack) is missing",
    "model_unreadable": "the model pack is not a plain-array pack",
    "model_hash_mismatch": "the model's arrays do not match the hash in the version's index",
}
#: Row-level reasons of the window reader (``windows.formats``): the value cannot be taken as its contract type.
#: A row rejected by the reader is quarantined with these reasons only (it never reaches the suite).
READER_REASONS: dict[str, str] = {
    "wrong_type": "a value is not of its contract type: a key that is neither a string nor an integer (an "
    "integer is taken as its decimal text), a value or count that is "
    "a string or a boolean, a count beyond 2**53, a window_end that is neither text nor a timestamp",
    "bad_timestamp": "window_end is not ISO 8601 with Z or an offset, not a real date, or outside 1677-2262",
    "window_not_on_minute": "window_end has seconds or a fraction: a 1-minute window ends on the minute",
}
#: The reason of a window file quarantined whole (listed in the manifest, not a quarantine row).
CORRUPT_FILE = "corrupt_file"
NOT_UTF8 = "not_utf8"
UNSUPPORTED_FORMAT = "unsupported_format"
#: Every reason a landed file is quarantined whole for (``QuarantinedFile.reason``).
FILE_REASONS: dict[str, str] = {
    CORRUPT_FILE: "the file is not valid in its serialisation (truncated, garbage)",
    NOT_UTF8: "a text file (no Parquet or Avro magic bytes) that is not UTF-8",
    UNSUPPORTED_FORMAT: "UTF-8 text that is neither JSON (lines or an array) nor CSV with the contract's header",
}
#: Why a file of the hour before, read only as the lookback of an hour's first windows, was left out of it: its
#: windows are not looked back at (listed in the hour's manifest, ``validation.lookback_skipped_files``), and the
#: hour is scored. Its own hour's run fails on it or quarantines it as ever.
MISSING_COLUMN = "missing_column"
LOOKBACK_FILE_REASONS: dict[str, str] = {
    MISSING_COLUMN: "the file parses but lacks a contract column (it fails its own hour, naming the column)",
    **FILE_REASONS,
}
#: The reason of a window whose shard failed after its last retry, in an hour committed as ``partial``
#: (DAG param ``max_failed_shard_share``); clearing the shard or re-running the hour scores it.
SHARD_FAILED = "shard_failed"


# --- errors shared by the steps -----------------------------------------------------------------------------


class DataError(ValueError):
    """The input is wrong, not the infrastructure: retrying cannot help, so the task fails without retries."""


class InvalidName(DataError):
    """A parameter value that is not a name (a path, a control character, ...): refused before any I/O
    (``sensor_scoring.names``)."""


class RegistryError(DataError, LookupError):
    """The model registry does not hold what the run names (an alias to a missing version, a version without
    its manifest or index, an index that does not match its manifest): configuration, so no retries."""


class SupersededError(DataError):
    """Another run committed the hour after this run read it: this run's view is older, so it commits nothing
    for the hour (the other run's partition stays; the landed windows are all still there to re-run)."""


class ValidationThresholdError(DataError):
    """Too large a share of an hour's windows failed validation; the report and rows are kept in staging."""


class AccountingError(RuntimeError):
    """Landed windows that are neither scored, quarantined nor counted duplicates: refuse to commit."""


class StorageUnavailable(RuntimeError):
    """Blob storage stayed unreachable through the whole retry budget of a call."""


# --- nested records ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Interval(Record):
    """A run's hours, [start, end)."""

    KIND = "interval"
    start: datetime
    end: datetime


@dataclasses.dataclass(frozen=True)
class Subset(Record):
    """The sensors a rescoring replaces: the chosen devices and tags (an empty list means all of them)."""

    KIND = "subset"
    devices: tuple[str, ...]
    tags: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SensorDuplicates(Record):
    """Exact copies collapsed for one sensor of an hour: no row shows them, so they are counted per sensor."""

    KIND = "sensor duplicates"
    device_id: str | None
    tag: str | None
    duplicates: int


@dataclasses.dataclass(frozen=True)
class CorruptFile(Record):
    """A landed file that could not be parsed, set aside whole: what a read task found (``ReadResult``) and what
    the hour's validation lists (``HourValidation``, ``HourSummary``). ``hour`` is the hour that lists, copies and
    quarantines it; None only in a read task's result, for a file of a folder after the run's interval that a later
    hour owns (``windows.ownership``): commit lists only files with an hour of the run."""

    KIND = "corrupt file"
    file: str
    bytes: int
    sha256: str
    error: str
    hour: datetime | None
    #: Why it was set aside: a key of ``FILE_REASONS``.
    reason: str = CORRUPT_FILE


@dataclasses.dataclass(frozen=True)
class SourceFiles(Record):
    """Every blob of the folders a run read: ``seen = read + empty + quarantined + other_hours`` (nothing is skipped
    by name)."""

    KIND = "source files"
    seen: int
    read: int
    empty: int
    quarantined: int
    #: Corrupt files of a folder after the run's interval (read for its late windows): owned, listed and copied by
    #: that folder's hour (``windows.ownership``), so counted here but quarantined there.
    other_hours: int = 0


@dataclasses.dataclass(frozen=True)
class SkippedContextFile(Record):
    """A file of the hour before that the lookback could not read: its windows are left out of the context."""

    KIND = "skipped context file"
    file: str
    #: A key of ``LOOKBACK_FILE_REASONS``.
    reason: str
    error: str


@dataclasses.dataclass(frozen=True)
class Counts(Record):
    """What became of an hour's landed windows: ``landed = scored + quarantined + duplicates``."""

    KIND = "counts"
    landed: int
    scored: int
    quarantined: int
    duplicates: int
    anomalies: int


# --- the run's validation: summed by commit ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HourValidation(Record):
    """The validation of one hour of a run: what was checked, what failed, and whether the threshold held."""

    KIND = "hour validation"
    suite: str
    hour: datetime
    run_id: str
    landed: int
    duplicates: int
    failing_rows: int
    failing_share: float
    max_quarantine_share: float
    threshold_exceeded: bool
    failing_rows_by_reason: dict[str, int]
    quarantined_files: tuple[CorruptFile, ...]
    empty_files: tuple[str, ...]
    #: Files of the hour before that the lookback of this hour's first windows left out (the interval's first hour).
    lookback_skipped_files: tuple[SkippedContextFile, ...] = ()


@dataclasses.dataclass(frozen=True)
class ValidationReport(Record):
    """The run's great-expectations report, keyed by ISO hour; each hour's part is kept beside its quarantine."""

    KIND = "validation report"
    SCHEMA_VERSION = 1
    suite: str
    run_id: str
    interval: Interval
    evaluated_rows: int
    seconds: float
    physical_bounds: dict[str, Any]
    expectations: tuple[dict[str, Any], ...]
    hours: dict[str, HourValidation]

    def hour(self, hour: datetime) -> HourValidation:
        """The report of one hour of the interval (every hour has one, empty hours too)."""
        try:
            return self.hours[hour.isoformat()]
        except KeyError:
            raise ContractError(
                f"{self.KIND} of run {self.run_id} has no hour {hour.isoformat()} (hours: {', '.join(self.hours)})"
            ) from None

    def only(self, hour: datetime) -> ValidationReport:
        """The report cut down to one hour: the body of that hour's ``_validation.json``."""
        return dataclasses.replace(self, hours={hour.isoformat(): self.hour(hour)})


@dataclasses.dataclass(frozen=True)
class HourSummary(Record):
    """The run's reading and validation, summed by commit from its read tasks and shards: counts, files and where
    the report is."""

    KIND = "hour summary"
    SCHEMA_VERSION = 1
    run_id: str
    run_key: str
    start: datetime
    end: datetime
    files_read: int
    folders: tuple[str, ...]
    landed: int
    landed_by_hour: dict[str, int]
    valid: int
    duplicates: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    sensors: int
    quarantined_files: tuple[CorruptFile, ...]
    empty_files: tuple[str, ...]
    max_quarantine_share: float
    validation_report: str
    #: The sensors of a subset rescoring; None for a full run.
    subset: Subset | None
    #: Per ISO hour, the duplicates collapsed for each sensor (hours without any are left out).
    duplicates_by_sensor: dict[str, tuple[SensorDuplicates, ...]]
    #: What became of every blob in the folders read.
    source_files: SourceFiles | None = None
    #: Per ISO hour, the generation of the hour's committed manifest when the run began reading ("" when none):
    #: commit is conditional on it (``runs.fence``), so a run that read an older state never overwrites a newer one.
    generations: dict[str, str] = dataclasses.field(default_factory=dict)
    #: The subset's devices and tags that matched no sensor landed in the interval (the run warns, and the manifest's
    #: ``rescored`` entry names them); None when every name matched or for a full run.
    subset_not_found: Subset | None = None


# --- plan_shards and score_shard ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlannedShard(Record):
    """One shard as the DAG maps over it (XCom of plan_shards): its spec and a label for the UI."""

    KIND = "planned shard"
    SCHEMA_VERSION = 1
    spec_uri: str
    shard: int
    sensors: int
    windows: int
    label: str


@dataclasses.dataclass(frozen=True)
class ShardPlan(Record):
    """What plan_shards decided for the whole run, staged for commit (which runs even when no shard does): the model
    version, the folders read, the generations the commit is fenced on, and how many read groups and shards."""

    KIND = "shard plan"
    SCHEMA_VERSION = 2
    model_version: str
    #: The run's own folders (the lookback's folder of the hour before is read for context only).
    folders: tuple[str, ...] = ()
    #: Per ISO hour, the generation of the hour's committed manifest before any window was read (``runs.fence``).
    generations: dict[str, str] = dataclasses.field(default_factory=dict)
    subset: Subset | None = None
    #: The read tasks (what read_windows maps over: the DAG's plan_reads task hands them on from here).
    reads: tuple[PlannedShard, ...] = ()
    shards: int = 0


@dataclasses.dataclass(frozen=True)
class RunPlan(Record):
    """The XCom of plan_shards: the read groups and the shards the DAG maps over, in that order."""

    KIND = "run plan"
    SCHEMA_VERSION = 1
    reads: tuple[PlannedShard, ...]
    shards: tuple[PlannedShard, ...]


@dataclasses.dataclass(frozen=True)
class ReadContainers(Record):
    """The containers a read task touches: read ``windows``, read and write ``staging``."""

    KIND = "read containers"
    windows: str
    staging: str


@dataclasses.dataclass(frozen=True)
class ReadSpec(Record):
    """Everything a read task needs (``spec.json``): a group of landed files, and where each of its rows goes.

    Rows are routed by sensor, so every copy of a window meets its duplicates in one shard: a sensor of the
    ``routing`` table (the model version's, staged by plan_shards) goes to its shard, any other to
    ``sensor_slot(device_id, tag) % shards``."""

    KIND = "read spec"
    SCHEMA_VERSION = 1
    run_id: str
    run_key: str
    group: int
    start: datetime
    end: datetime
    containers: ReadContainers
    files: tuple[str, ...]
    #: The run's own folders; files of the other folders (the hour before's) are read as lookback context only.
    folders: tuple[str, ...]
    shards: int
    #: URI of the routing table (device_id, tag, shard); None: every sensor by its slot.
    routing: str | None
    subset: Subset | None
    output_prefix: str


@dataclasses.dataclass(frozen=True)
class ReadResult(Record):
    """What a read task found in its files (``result.json``, written last): the files, and the windows it routed."""

    KIND = "read result"
    SCHEMA_VERSION = 1
    group: int
    output_prefix: str
    #: The run's own files of this group, each read, empty or corrupt (the hour before's files are context only).
    files: int
    read: int
    empty_files: tuple[str, ...]
    #: Corrupt own files: ``hour`` is the hour that lists them, or None when a later folder's hour owns them.
    corrupt_files: tuple[CorruptFile, ...]
    #: Landed windows the run owns (rows the reader rejected included), per ISO hour.
    landed_by_hour: dict[str, int]
    #: Files of the hour before that the lookback leaves out.
    lookback_skipped: tuple[SkippedContextFile, ...]
    #: With a subset: where the sensors this group's files hold (before the subset is applied) are staged, for
    #: commit to tell a subset matching nothing from a typo.
    names: str | None = None


@dataclasses.dataclass(frozen=True)
class ShardValidation(Record):
    """The suite's split of one shard's windows: what failed, why, and what collapsed, per ISO hour."""

    KIND = "shard validation"
    landed_by_hour: dict[str, int]
    duplicates_by_hour: dict[str, int]
    #: Rows that failed (the suite, the reader, strays) per ISO hour, and their reasons (a row may have several).
    failing_rows_by_hour: dict[str, int]
    failing_by_hour: dict[str, dict[str, int]]
    duplicates_by_sensor: dict[str, tuple[SensorDuplicates, ...]]
    valid: int
    sensors: int
    expectations: tuple[dict[str, Any], ...]
    seconds: float


@dataclasses.dataclass(frozen=True)
class ModelRef(Record):
    """Where one sensor's model is: a row of a pack of the version, and the hash its arrays must have."""

    KIND = "model reference"
    device_id: str
    tag: str
    pack: str
    row: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class ShardContainers(Record):
    """The containers a shard process touches: read ``models``, read and write ``staging``."""

    KIND = "shard containers"
    models: str
    staging: str


@dataclasses.dataclass(frozen=True)
class ShardSpec(Record):
    """Everything a shard process needs, wherever it runs (``spec.json``): its input, models and output folder."""

    KIND = "shard spec"
    SCHEMA_VERSION = 2
    run_id: str
    run_key: str
    shard: int
    model_version: str
    containers: ShardContainers
    #: URI of the folder the read tasks route the shard's windows into (one part per read group and kind)
    input: str
    output_prefix: str
    models: tuple[ModelRef, ...]
    #: the run's interval, which the suite checks window_end against
    start: datetime
    end: datetime


@dataclasses.dataclass(frozen=True)
class ShardResult(Record):
    """What a shard wrote (``result.json``, written last), read back by every backend and handed to commit."""

    KIND = "shard result"
    SCHEMA_VERSION = 1
    shard: int
    output_prefix: str
    scored: int
    anomalies: int
    quarantined: int
    sensors: int
    #: ``device_id/tag`` -> reason, for the models the shard would not use.
    refused_models: dict[str, str]
    #: The suite's split of the shard's windows (``quarantined`` counts its failing rows too).
    validation: ShardValidation | None = None


# --- training ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingShardSpec(Record):
    """Everything a training shard needs (``spec.json``): its windows, model parameters and output folder."""

    KIND = "training shard spec"
    SCHEMA_VERSION = 1
    run_id: str
    shard: int
    #: the containers a Batch task gets SAS access to (it writes only to staging)
    containers: ShardContainers
    input: str
    output_prefix: str
    nu: float
    min_rows: int
    #: calibrate each model's threshold this many robust deviations below its training decision values' median
    #: (``models.fitting.calibrated_threshold``; None: threshold 0)
    threshold_mads: float | None = None
    #: the feature set of the models (``sensor_scoring.features``); the input holds its derived columns. Specs
    #: written before feature sets had names trained on the window's own columns
    features: str = "window-v1"
    #: each sensor's nu from its own windows, at least ``nu`` (``models.fitting.adaptive_nu``)
    adaptive_nu: bool = False
    #: the share of normal windows each model may flag: its threshold calibrated on the latest windows, held back
    #: from its fit (``models.fitting.conformal_threshold``). Specs written before it: None (``threshold_mads``)
    false_alarm_rate: float | None = None
    #: refit: the input holds the shard's sensors' whole range, this (ISO) the first held-back window end. The models
    #: the gate judges are fit on the windows before it, the models the version registers on every window with
    #: the same parameters. None (specs written before refitting, or refit off): the input is the training part and
    #: the judged models are the registered ones
    held_back_from: str | None = None


@dataclasses.dataclass(frozen=True)
class SkippedSensor(Record):
    """A sensor of a training shard without a model, and why (``models.fitting.SKIP_REASONS``)."""

    KIND = "skipped sensor"
    device_id: str
    tag: str
    reason: str


@dataclasses.dataclass(frozen=True)
class TrainingShardResult(Record):
    """What a training shard wrote (``result.json``, written last): how many sensors got a model."""

    KIND = "training shard result"
    SCHEMA_VERSION = 1
    shard: int
    output_prefix: str
    models: int
    sensors: int
    windows: int
    #: sensors without a model, as ``device_id/tag``
    skipped: tuple[str, ...]
    #: the same sensors with their reason; results written before reasons: empty (their reason: too few windows)
    skipped_sensors: tuple[SkippedSensor, ...] = ()
    #: with a refit (the spec's ``held_back_from``): how many models the gate judges, fit before the held-back hours
    #: (``TrainingShard.judged_pack``); None: the registered models are the judged ones
    judged_models: int | None = None


# --- commit ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PartitionFile(Record):
    """One Parquet file of a committed hour, with its hash so a reader can check it has the matching pair."""

    KIND = "partition file"
    container: str
    path: str
    rows: int
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class QuarantinedFile(Record):
    """A corrupt window file of the hour; ``copy`` is its byte-for-byte copy (None if it vanished before commit)."""

    KIND = "quarantined file"
    file: str
    bytes: int
    sha256: str
    error: str
    reason: str
    copy: str | None


@dataclasses.dataclass(frozen=True)
class ValidationSummary(Record):
    """The hour's validation in its manifest; ``report`` is the URI of the hour's ``_validation.json``."""

    KIND = "validation summary"
    suite: str
    report: str
    failing_rows: int
    failing_share: float
    failing_rows_by_reason: dict[str, int]
    max_quarantine_share: float
    #: Files of the hour before whose windows the lookback left out (``HourValidation.lookback_skipped_files``).
    lookback_skipped_files: tuple[SkippedContextFile, ...] = ()


@dataclasses.dataclass(frozen=True)
class RescoringRecord(Record):
    """One subset rescoring of an hour since its last full run; ``counts`` are of the rows it replaced."""

    KIND = "rescoring record"
    run_id: str
    model_version: str
    devices: tuple[str, ...]
    tags: tuple[str, ...]
    committed_at: datetime
    counts: Counts
    #: The run's devices and tags that matched no sensor landed in its interval (a warning, not an error: the
    #: rest of the subset was rescored); None when every name matched, and in records written before.
    not_found: Subset | None = None


@dataclasses.dataclass(frozen=True)
class PurgedRows(Record):
    """Committed rows of an hour whose windows the run that wrote the manifest did not find any more (a blob
    lifecycle rule purged them, or they were deleted), and what it did with them (DAG param ``purged_windows``):
    ``kept`` (carried over as committed, included in ``counts``) or ``dropped`` (not in the partition any more)."""

    KIND = "purged rows"
    action: Literal["kept", "dropped"]
    scored: int
    quarantined: int
    sensors: int
    #: The runs that wrote those rows, as committed (at most ``PURGED_RUNS_LISTED``).
    runs: tuple[str, ...]
    reason: str


#: How many runs a ``PurgedRows`` record names at most.
PURGED_RUNS_LISTED = 20


@dataclasses.dataclass(frozen=True)
class FailedShard(Record):
    """A shard that failed after its last retry, named in a ``partial`` hour's manifest."""

    KIND = "failed shard"
    shard: int
    label: str
    sensors: int
    windows: int
    spec: str


@dataclasses.dataclass(frozen=True)
class Manifest(Record):
    """``_manifest.json`` of a committed hour (the same in predictions and quarantine): what the partition holds.

    ``counts`` describe the whole partition, whichever runs wrote its rows; ``run_id`` and ``model_version`` are
    the run that wrote it last. docs/operating.md and docs/faults.md describe each field.
    """

    KIND = "manifest"
    SCHEMA_VERSION = 1
    run_id: str
    model_version: str
    hour: datetime
    interval: Interval
    committed_at: datetime
    counts: Counts
    quarantine_reasons: dict[str, int]
    files: tuple[PartitionFile, ...]
    source_folders: tuple[str, ...]
    status: Literal["scored", "empty", "partial"]
    quarantined_files: tuple[QuarantinedFile, ...]
    empty_files: tuple[str, ...]
    validation: ValidationSummary
    subset: Subset | None
    rescored: tuple[RescoringRecord, ...]
    model_versions: dict[str, int]
    duplicates_by_sensor: tuple[SensorDuplicates, ...]
    #: The shards that failed after their last retry (status ``partial``); their windows are ``shard_failed``.
    failed_shards: tuple[FailedShard, ...] = ()
    #: What became of every blob in the folders the run that wrote it read (None in manifests written before).
    source_files: SourceFiles | None = None
    #: Committed rows whose windows this run no longer found, kept or dropped (None when it found them all).
    purged: PurgedRows | None = None
