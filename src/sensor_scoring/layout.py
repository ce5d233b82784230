"""Where every blob of the hour lives: window folders, committed partitions, a run's staging and its shards.

One module names them all, so a path is changed in one place and every reader and writer follows. Paths are
relative to their container (the containers are settings); ``storage.make_uri`` turns a pair into an URI.

Layout::

    windows/     YYYY/MM/DD/HH/<schemahash>_<guid>_<n>.json      what Stream Analytics lands (any serialisation)
    predictions/ date=YYYY-MM-DD/hour=HH/part-00000.parquet       the hour's scored windows
                 date=YYYY-MM-DD/hour=HH/_manifest.json           what the partition holds (contracts.Manifest)
    quarantine/  date=YYYY-MM-DD/hour=HH/part-00000.parquet       the hour's rejected rows, each with a reason
                 date=YYYY-MM-DD/hour=HH/_manifest.json           the same manifest
                 date=YYYY-MM-DD/hour=HH/_validation.json         the hour's validation report
                 date=YYYY-MM-DD/hour=HH/files/<window blob>      corrupt window files, byte for byte
    health/      date=YYYY-MM-DD/hour=HH/part-00000.parquet       model health per sensor (steps.health)
                 date=YYYY-MM-DD/hour=HH/_manifest.json           its totals and the sensors alerted as drifting
    staging/     runs/<run key>/plan.json                         plan_shards: version, folders, fence, read groups
                 runs/<run key>/routing.parquet                   plan_shards: the shard of each modelled sensor
                 runs/<run key>/read-NNNNN/spec.json              plan_shards: one group of files (ReadSpec)
                 runs/<run key>/read-NNNNN/result.json            read_windows, written last (ReadResult)
                 runs/<run key>/shard-NNNNN/spec.json             plan_shards: what the shard does (ShardSpec)
                 runs/<run key>/shard-NNNNN/in/GGGGG-<kind>.parquet  read_windows: the shard's rows from group G
                 runs/<run key>/shard-NNNNN/predictions.parquet   score_shard
                 runs/<run key>/shard-NNNNN/quarantine.parquet    score_shard: failing, no_model, refused rows
                 runs/<run key>/shard-NNNNN/result.json           score_shard, written last (ShardResult)
                 runs/<run key>/validation.json                   commit: the run's validation report
                 runs/<run key>/quarantine-validate.parquet       commit, refusing the run: the failing rows
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

#: The span of one window folder and of one committed partition.
HOUR = timedelta(hours=1)

# --- windows: the Stream Analytics path pattern {date}/{time}, date format YYYY/MM/DD, time format HH ---

#: ``strftime`` format of a window folder (also for pandas' ``Series.dt.strftime``).
WINDOW_FOLDER_FORMAT = "%Y/%m/%d/%H"
_WINDOW_FOLDER = re.compile(r"^(\d{4})/(\d{2})/(\d{2})/(\d{2})/")


def window_folder(moment: datetime) -> str:
    """Stream Analytics ``{date}/{time}`` folder (``YYYY/MM/DD/HH``) of a UTC moment."""
    return moment.astimezone(timezone.utc).strftime(WINDOW_FOLDER_FORMAT)


def window_folder_hour(blob_name: str) -> datetime | None:
    """The hour of the window folder a blob landed in; None for a name outside the layout."""
    match = _WINDOW_FOLDER.match(blob_name)
    if match is None:
        return None
    year, month, day, hour = (int(part) for part in match.groups())
    return datetime(year, month, day, hour, tzinfo=timezone.utc)


# --- committed hours: one hive-style partition per hour in the predictions and quarantine containers ---

PARTITION_FILE = "part-00000.parquet"
MANIFEST_FILE = "_manifest.json"
VALIDATION_FILE = "_validation.json"
QUARANTINED_FILES = "files/"


def partition_prefix(hour: datetime) -> str:
    """Hive-style hour partition of the predictions and quarantine containers: ``date=.../hour=HH/``."""
    hour = hour.astimezone(timezone.utc)
    return f"date={hour:%Y-%m-%d}/hour={hour:%H}/"


@dataclass(frozen=True)
class Partition:
    """The blobs of one committed hour (the same paths in predictions and quarantine)."""

    hour: datetime

    @property
    def prefix(self) -> str:
        return partition_prefix(self.hour)

    @property
    def data(self) -> str:
        """The hour's one Parquet file: replaced by one blob commit, so readers see old or new, never a mix."""
        return self.prefix + PARTITION_FILE

    @property
    def manifest(self) -> str:
        return self.prefix + MANIFEST_FILE

    @property
    def validation(self) -> str:
        """The hour's validation report (quarantine container)."""
        return self.prefix + VALIDATION_FILE

    @property
    def quarantined_files(self) -> str:
        """Folder of the hour's corrupt window files (quarantine container)."""
        return self.prefix + QUARANTINED_FILES

    def quarantined_copy(self, window_blob: str) -> str:
        """Where a corrupt window file is kept: its own name under the partition's ``files/``."""
        return self.quarantined_files + window_blob


# --- staging: a run's scratch space, deleted once the run has committed ---


def staging_prefix(run_key: str) -> str:
    """Scratch space of one DAG run in the staging container: shard inputs, specs and outputs."""
    return f"runs/{run_key}/"


def commit_claim(hour: datetime, generation: str) -> str:
    """Where a run claims the commit of an hour from the manifest generation it read (staging container): one
    blob per (hour, generation), created once, so two runs that read the same state cannot both write the hour."""
    token = hashlib.sha256(generation.encode()).hexdigest()[:32]
    return f"claims/{hour:%Y/%m/%d/%H}/{token}.json"


def shard_prefix(run_key: str, shard: int) -> str:
    return f"{staging_prefix(run_key)}shard-{shard:05d}/"


@dataclass(frozen=True)
class Shard:
    """The blobs of one shard, under its folder (a path in staging, or the folder part of an URI)."""

    folder: str

    @property
    def input(self) -> str:
        """The folder of the shard's input parts: the read tasks route its windows there."""
        return self.folder + "in/"

    def part(self, group: int, kind: str) -> str:
        """One read group's rows of one kind (``landed``, ``rejected`` or ``context``) for this shard."""
        return f"{self.input}{group:05d}-{kind}.parquet"

    @property
    def spec(self) -> str:
        return self.folder + "spec.json"

    @property
    def predictions(self) -> str:
        return self.folder + "predictions.parquet"

    @property
    def quarantine(self) -> str:
        return self.folder + "quarantine.parquet"

    @property
    def result(self) -> str:
        """Written last by the shard: its presence means the shard's outputs are complete."""
        return self.folder + "result.json"

    @classmethod
    def of_spec(cls, spec_path: str) -> Shard:
        """The shard whose spec is at ``spec_path`` (a path or an URI): outputs sit beside the spec."""
        return cls(spec_path.rsplit("/", 1)[0] + "/")


@dataclass(frozen=True)
class Run:
    """The staged blobs of one DAG run."""

    run_key: str

    @property
    def prefix(self) -> str:
        return staging_prefix(self.run_key)

    @property
    def validation_report(self) -> str:
        return self.prefix + "validation.json"

    @property
    def validation_quarantine(self) -> str:
        """The rows that failed validation, gathered from the shards when commit refuses the run for them."""
        return self.prefix + "quarantine-validate.parquet"

    @property
    def plan(self) -> str:
        return self.prefix + "plan.json"

    @property
    def routing(self) -> str:
        """Which shard each modelled sensor's windows go to (device_id, tag, shard): what the read tasks route by."""
        return self.prefix + "routing.parquet"

    def shard(self, number: int) -> Shard:
        return Shard(shard_prefix(self.run_key, number))

    def read(self, group: int) -> Shard:
        """A read task's folder (spec, result, and with a subset the names it found): laid out as a shard's."""
        return Shard(f"{self.prefix}read-{group:05d}/")


# --- training: a training run's scratch space in staging ---


@dataclass(frozen=True)
class TrainingRun:
    """The staged blobs of one run of the training DAG: held-back windows, shard folders, the evaluation."""

    run_key: str

    @property
    def prefix(self) -> str:
        return f"training/{self.run_key}/"

    @property
    def holdout(self) -> str:
        """Valid windows of the held-back hours: the gate evaluates on them models never fit on them."""
        return self.prefix + "holdout.parquet"

    @property
    def evaluation(self) -> str:
        return self.prefix + "evaluation.json"

    @property
    def evaluation_table(self) -> str:
        """Per-sensor metrics of the candidate and of production, one row per (device_id, tag, model)."""
        return self.prefix + "evaluation.parquet"

    def shard(self, number: int) -> TrainingShard:
        return TrainingShard(f"{self.prefix}shard-{number:05d}/")


@dataclass(frozen=True)
class TrainingShard(Shard):
    """A training shard's folder: its input windows (one file, gathered for it), its spec, and the fitted models it
    wrote."""

    @property
    def input(self) -> str:
        """The shard's training windows, one file written by gather (no read tasks route into a training shard)."""
        return self.folder + "input.parquet"

    @property
    def pack(self) -> str:
        """The shard's fitted models, in the registry's pack format."""
        return self.folder + "models.npz"

    @property
    def index(self) -> str:
        """One row per fitted model (key, training range, rows, flagged share), in the pack's order."""
        return self.folder + "models.parquet"

    @property
    def stats(self) -> str:
        """The training statistics of the shard's models (``models.stats``), gathered into the version's."""
        return self.folder + "training_stats.parquet"

    @property
    def judged_pack(self) -> str:
        """With a refit: the models the gate judges, fit before the held-back hours (``pack`` holds the refit)."""
        return self.folder + "judged_models.npz"

    @property
    def judged_index(self) -> str:
        """With a refit: one row per judged model, in ``judged_pack``'s order."""
        return self.folder + "judged_models.parquet"
